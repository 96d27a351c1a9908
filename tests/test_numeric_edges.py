"""Numeric edges of the losses that used to train silently (issue 24, item 17): a margin of
1e300 gave an inf loss, a negative margin or all objective weights 0 trained at loss 0, and
InfoNCE at a logit scale of 1e20 gave absurd gradients (7e18) where it should refuse."""

from __future__ import annotations

import pytest
import torch

from medtrim_ext import CompositeObjective, MedTrimObjective, MultimodalTripletLoss
from medtrim_ext.losses.infonce import InfoNCELoss, InfoNCEObjective
from medtrim_ext.training import load_config


@pytest.mark.parametrize("margin", [1e300, 1e30, 2.5, -0.1, -1.0])
def test_margin_outside_the_cosine_range_is_refused(margin):
    with pytest.raises(ValueError, match=r"margin must be in \[0, 2\]"):
        MultimodalTripletLoss(margin=margin)
    with pytest.raises(ValueError, match=r"objective.margin must be in \[0, 2\]"):
        load_config("demo", [f"objective.margin={margin!r}"])


@pytest.mark.parametrize("margin", [0, 0.3, 2])
def test_margins_in_range_still_work(margin):
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    a = torch.arange(6)
    li, lt = MultimodalTripletLoss(margin=margin)(img, txt, (a, (a + 1) % 6, (a + 2) % 6))
    assert torch.isfinite(li) and torch.isfinite(lt)
    assert load_config("demo", [f"objective.margin={margin}"]).objective.margin == margin


def test_all_objective_weights_zero_is_refused():
    parts = {"medtrim": MedTrimObjective(), "infonce": InfoNCEObjective()}
    with pytest.raises(ValueError, match=r"weights are all 0 \({'medtrim': 0.0, 'infonce': 0.0}\)"):
        CompositeObjective(parts, {"medtrim": 0, "infonce": 0.0})
    with pytest.raises(ValueError, match=r"weights are all 0"):
        CompositeObjective({"medtrim": MedTrimObjective()}, {"medtrim": 0})
    CompositeObjective(parts, {"medtrim": 0, "infonce": 1})  # one part switched off is fine
    with pytest.raises(ValueError, match=r"objective.weights .*all 0"):
        load_config("demo", ["objective.kind=medtrim+infonce", "objective.weights={medtrim: 0, infonce: 0}"])
    with pytest.raises(ValueError, match=r"objective.weights .*all 0"):
        load_config("demo", ["objective.weights={medtrim: 0}"])
    load_config("demo", ["objective.kind=medtrim+infonce", "objective.weights={medtrim: 0}"])


@pytest.mark.parametrize("scale", [1e20, 1e30, 1e5])
def test_infonce_refuses_a_logit_scale_beyond_its_limit(scale):
    with pytest.raises(ValueError, match=r"max_logit_scale must be <= 10000"):
        InfoNCELoss(logit_temperature=1 / scale, max_logit_scale=scale)
    with pytest.raises(ValueError, match=r"max_logit_scale must be <= 10000"):
        InfoNCELoss(max_logit_scale=scale)


def test_infonce_at_the_largest_scale_gives_finite_gradients():
    loss = InfoNCELoss(logit_temperature=1e-4, max_logit_scale=1e4)
    g = torch.Generator().manual_seed(0)
    img = torch.randn(6, 8, generator=g, requires_grad=True)
    txt = torch.randn(6, 8, generator=g, requires_grad=True)
    value = loss(img, txt)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(img.grad).all()
