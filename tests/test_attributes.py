"""Per-attribute agreement of the top K and the hub diagnostic."""

from __future__ import annotations

import math

import pytest
import torch

from medtrim_ext.evaluation import attribute_agreement, evaluate_attributes, hub_diagnostic
from medtrim_ext.evaluation.attributes import top_k

EFF_L_SMALL = {"pleural effusion": {"side": "left", "size": "small", "zone": None}}
EFF_R_SMALL = {"pleural effusion": {"side": "right", "size": "small", "zone": None}}
EFF_L_LARGE = {"pleural effusion": {"side": "left", "size": "large"}}
CONS_L_LOW = {"consolidation": {"side": "left", "size": None, "zone": "lower"}}
NORMAL = {}


def test_agreement_counts_same_values_and_misses():
    gallery = [EFF_L_SMALL, EFF_R_SMALL, EFF_L_LARGE, CONS_L_LOW, NORMAL]
    queries = [EFF_L_SMALL, CONS_L_LOW, NORMAL]
    top = torch.tensor([[0, 1, 2, 4], [3, 0, 4, 1], [4, 3, 2, 1]])
    out = attribute_agreement(top, queries, gallery)
    # side: query 0 (left): items 0 and 2 left, 1 right, 4 no effusion -> 2/4 of the list,
    # 2/3 of the effusions; query 1 (left consolidation): item 3 -> 1/4 and 1/1
    assert out["side"]["queries"] == 2
    assert out["side"]["same@4"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert out["side"]["same_given_disease@4"] == pytest.approx((2 / 3 + 1) / 2)
    # size: only query 0 has one (small): items 0 and 1
    assert out["size"]["queries"] == 1 and out["size"]["same@4"] == pytest.approx(0.5)
    assert out["size"]["same_given_disease@4"] == pytest.approx(2 / 3)
    # zone: query 1 (lower): item 3
    assert out["zone"]["queries"] == 1 and out["zone"]["same@4"] == pytest.approx(0.25)


def test_agreement_without_any_attribute_is_nan():
    out = attribute_agreement(torch.tensor([[0]]), [NORMAL], [NORMAL])
    assert out["side"]["queries"] == 0 and math.isnan(out["side"]["same@1"])


def test_hub_diagnostic():
    gallery = [NORMAL, EFF_L_SMALL, NORMAL, CONS_L_LOW]
    top = torch.tensor([[0, 2], [0, 1], [0, 3]])
    hub = hub_diagnostic(top, gallery)
    assert hub["no_finding@2"] == pytest.approx(4 / 6)
    assert hub["no_finding_share"] == pytest.approx(0.5)
    assert hub["distinct@2"] == 4
    # item 0 is in the top 2 of all three queries: the hub share is 1
    assert hub["hub_share@2"] == 1.0 and hub["gallery_size"] == 4
    assert hub_diagnostic(torch.tensor([[0, 1], [2, 3]]), gallery)["hub_share@2"] == 0.5


def test_collapse_rule():
    from medtrim_ext.evaluation.attributes import collapse_reasons

    # every query's top 5 from the same 5 items of 100: both parts of the rule fire
    assert len(collapse_reasons(distinct=5, hub_share=1.0, k=5, gallery_size=100)) == 2
    assert collapse_reasons(distinct=10, hub_share=0.2, k=5, gallery_size=100)[0].startswith(
        "the top 5 of all queries hold only 10 distinct items")
    assert "51% of the queries" in collapse_reasons(distinct=80, hub_share=0.51, k=5, gallery_size=100)[0]
    assert collapse_reasons(distinct=11, hub_share=0.5, k=5, gallery_size=100) == []
    # a gallery under 4K items fills every top K with the same few items anyway: no verdict
    assert collapse_reasons(distinct=5, hub_share=1.0, k=5, gallery_size=19) == []
    # missing parts (older results) are not evidence either way
    assert collapse_reasons(distinct=float("nan"), hub_share=float("nan"), k=5, gallery_size=100) == []


def test_evaluate_attributes_ranks_by_cosine():
    attrs = [EFF_L_SMALL, EFF_R_SMALL, EFF_L_LARGE, NORMAL]
    # each image is closest to its own text, then to the text of the next sample
    img = torch.eye(4) + 0.5 * torch.roll(torch.eye(4), 1, dims=1)
    txt = torch.eye(4)
    top = top_k(img, txt, 2)
    assert top.tolist() == [[0, 1], [1, 2], [2, 3], [3, 0]]
    out = evaluate_attributes(img, txt, attrs, k=2)
    # i2t side: q0 left -> [left, right] 1/2; q1 right -> [right, left] 1/2; q2 left -> [left, -] 1/2
    assert out["i2t"]["side"]["same@2"] == pytest.approx(0.5)
    assert out["i2t"]["hub"]["distinct@2"] == 4
    with pytest.raises(ValueError, match="must describe the same samples"):
        evaluate_attributes(img, txt, attrs[:3])
    with pytest.raises(ValueError, match="k must be a positive int"):
        evaluate_attributes(img, txt, attrs, k=0)
    with pytest.raises(ValueError, match="NaN"):
        evaluate_attributes(img * float("nan"), txt, attrs)
