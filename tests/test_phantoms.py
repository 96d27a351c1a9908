"""Synthetic phantoms: reports that the real extractor reads back exactly, images that show the
findings where the ground truth says, determinism, and argument checks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from medtrim_ext import MetaEntities, Vocabulary
from medtrim_ext.datasets import (ATTRIBUTE_SPACE, PhantomSet, attributes_to_record,
                                  compose_report, generate_phantoms, save_montage)
from medtrim_ext.datasets.phantoms import (_streams, describe, sample_attributes, split_seed,
                                           validate_attributes)


@pytest.fixture(scope="module")
def extractor():
    from medtrim_ext.extraction import EntityExtractor

    return EntityExtractor()


def _all_attribute_combinations():
    for disease, space in ATTRIBUTE_SPACE.items():
        keys = sorted(space)
        for values in itertools.product(*(space[k][0] for k in keys)):
            a = {"side": None, "size": None, "zone": None}
            a.update(zip(keys, values))
            yield {disease: a}


# -- reports ---------------------------------------------------------------------------------------
def test_vocabulary_names():
    vocab = Vocabulary.default()
    for disease, space in ATTRIBUTE_SPACE.items():
        assert disease in vocab.diseases
        for key, (values, probs) in space.items():
            assert abs(sum(probs) - 1) < 1e-9
            for v in values:
                if key == "side":
                    assert v in vocab.directions
                else:
                    assert v in vocab.adjectives, v
    for word in ("patchy", "linear", "dense"):
        assert word in vocab.adjectives


def test_extractor_recovers_every_attribute_combination(extractor):
    """Every disease x attribute value, in 12 phrasings each, is read back exactly."""
    cases = list(_all_attribute_combinations())
    attrs, texts = [], []
    for k, a in enumerate(cases):
        for rep in range(12):
            attrs.append(a)
            texts.append(compose_report(a, np.random.default_rng([k, rep])))
    got = extractor.extract(texts)
    bad = [(t, attributes_to_record(a), g) for a, t, g in zip(attrs, texts, got)
           if attributes_to_record(a) != g]
    assert not bad, f"{len(bad)} of {len(texts)} reports misread, e.g. {bad[:3]}"


def test_extractor_recovers_sampled_reports(extractor):
    """Reports as the generator samples them (0-2 findings, random sections and negations):
    at least 97% exact (the phrasing is designed for 100%)."""
    attrs, texts = [], []
    for i in range(1500):
        r_attr, _, _, _, r_txt = _streams(123, i)
        a = sample_attributes(r_attr)
        attrs.append(a)
        texts.append(compose_report(a, r_txt))
    got = extractor.extract(texts)
    bad = [(t, g) for a, t, g in zip(attrs, texts, got) if attributes_to_record(a) != g]
    assert len(bad) <= 0.03 * len(texts), f"{len(bad)} misread, e.g. {bad[:3]}"
    assert not bad, f"phrasings the extractor misreads: {bad[:3]}"


def test_generated_set_matches_extraction(extractor):
    ph = generate_phantoms(40, seed=9)
    assert extractor.extract(ph.reports) == ph.records
    MetaEntities.from_records(ph.records)  # names are the vocabulary's


def test_report_shape_and_negations():
    rng = np.random.default_rng(0)
    normal = compose_report({}, rng)
    assert "FINDINGS:" in normal and "IMPRESSION:" in normal
    a = {"pleural effusion": {"side": "left", "size": "small", "zone": None}}
    texts = [compose_report(a, np.random.default_rng(s)) for s in range(30)]
    assert len(set(texts)) > 10  # varied phrasing
    assert all("small" in t.lower() or "tiny" in t.lower() for t in texts)
    assert any("No pneumothorax" in t or "no pneumothorax" in t for t in texts)


def test_records_from_attributes():
    a = {"lung lesion": {"side": "right", "size": "large", "zone": "upper"},
         "pleural effusion": {"side": "bilateral", "size": "moderate", "zone": None}}
    rec = attributes_to_record(a)
    assert list(rec) == ["lung lesion", "pleural effusion"]  # vocabulary order
    assert rec["lung lesion"] == {"adjs": ["large", "upper"], "dirs": ["right"]}
    assert rec["pleural effusion"] == {"adjs": ["moderate"], "dirs": ["bilateral"]}
    assert attributes_to_record({"atelectasis": {"side": "left", "size": None, "zone": "lower"}}) == \
        {"atelectasis": {"adjs": ["linear", "lower"], "dirs": ["left"]}}
    assert attributes_to_record({}) == {}


def test_prevalence():
    samples = [sample_attributes(_streams(5, i)[0]) for i in range(3000)]
    normal = np.mean([not a for a in samples])
    assert 0.26 < normal < 0.34
    counts = {d: sum(d in a for a in samples) for d in ATTRIBUTE_SPACE}
    assert all(c > 100 for c in counts.values()), counts
    assert counts["pleural effusion"] > counts["lung lesion"]
    assert max(len(a) for a in samples) == 2


# -- images ----------------------------------------------------------------------------------------
def _paired_difference(attrs, n=12, seed=2):
    """Images of one finding minus the same patients without it (same nuisance and noise)."""
    with_ = generate_phantoms(n, seed=seed, attributes=[attrs] * n).images.float() / 255
    without = generate_phantoms(n, seed=seed, attributes=[{}] * n).images.float() / 255
    return with_ - without


def _centroid(diff):
    """Mean (column, row) in [0, 1] of the changed pixels of each image."""
    w = diff.abs() * (diff.abs() > 0.03)
    grid = (torch.arange(diff.shape[-1]) + 0.5) / diff.shape[-1]
    tot = w.sum((1, 2))
    assert (tot > 0).all(), "the finding changed no pixel"
    return (w.sum(1) * grid).sum(1) / tot, (w.sum(2) * grid).sum(1) / tot


@pytest.mark.parametrize("attrs,col,row", [
    ({"pleural effusion": {"side": "left", "size": "moderate"}}, (0.6, 1.0), (0.5, 0.9)),
    ({"pleural effusion": {"side": "right", "size": "small"}}, (0.0, 0.4), (0.5, 0.9)),
    ({"consolidation": {"side": "right", "zone": "upper"}}, (0.0, 0.4), (0.15, 0.4)),
    ({"consolidation": {"side": "left", "zone": "lower"}}, (0.6, 1.0), (0.5, 0.75)),
    ({"lung opacity": {"side": "left", "zone": "mid"}}, (0.6, 1.0), (0.35, 0.55)),
    ({"lung lesion": {"side": "right", "zone": "upper", "size": "small"}}, (0.0, 0.4), (0.15, 0.4)),
    ({"pneumothorax": {"side": "left", "size": "large"}}, (0.6, 1.0), (0.2, 0.6)),
    ({"atelectasis": {"side": "right", "zone": "lower"}}, (0.0, 0.4), (0.5, 0.75)),
    ({"edema": {"side": "bilateral", "size": "moderate"}}, (0.4, 0.6), (0.3, 0.6)),
])
def test_finding_appears_where_the_ground_truth_says(attrs, col, row):
    """Patient's left = image right: the changed pixels lie on the named side and zone."""
    cx, cy = _centroid(_paired_difference(attrs))
    assert ((cx > col[0]) & (cx < col[1])).all(), cx
    assert ((cy > row[0]) & (cy < row[1])).all(), cy


def test_severity_grows():
    """Larger effusions change more pixels and raise the side's lower zone; the heart widens
    with cardiomegaly severity."""
    def changed(attrs):
        return (_paired_difference(attrs).abs() > 0.03).float().sum((1, 2))

    eff = [changed({"pleural effusion": {"side": "left", "size": s}}) for s in ("small", "moderate", "large")]
    assert (eff[0] < eff[1]).all() and (eff[1] < eff[2]).all()
    heart = [changed({"cardiomegaly": {"size": s}}) for s in ("mild", "moderate", "severe")]
    assert (heart[0] < heart[1]).all() and (heart[1] < heart[2]).all()
    big = generate_phantoms(12, 4, attributes=[{"lung lesion": {"side": "left", "zone": "mid", "size": "large"}}] * 12)
    small = generate_phantoms(12, 4, attributes=[{"lung lesion": {"side": "left", "zone": "mid", "size": "small"}}] * 12)
    assert big.images.float().mean() > small.images.float().mean()


def test_left_effusion_brightens_left_lower_zone_in_sampled_data():
    ph = generate_phantoms(300, seed=1)
    img = ph.images.float() / 255
    zone = img[:, 38:54, 36:54].mean((1, 2))  # patient's left lower zone (image right, low)
    left = torch.tensor([a.get("pleural effusion", {}).get("side") in ("left", "bilateral") for a in ph.attributes])
    assert left.sum() > 10
    assert zone[left].mean() > zone[~left].mean() + 0.03


def test_nuisance_varies():
    ph = generate_phantoms(8, seed=0, attributes=[{}] * 8)
    flat = ph.images.float().flatten(1)
    assert torch.cdist(flat, flat).triu(1)[torch.ones(8, 8).triu(1).bool()].min() > 100


# -- API -------------------------------------------------------------------------------------------
def test_shapes_and_ids():
    ph = generate_phantoms(5, seed=3, image_size=32)
    assert isinstance(ph, PhantomSet) and len(ph) == 5
    assert ph.images.shape == (5, 32, 32) and ph.images.dtype == torch.uint8
    assert ph.study_ids == [f"phantom-s3-{i:06d}" for i in range(5)]
    assert len(ph.reports) == len(ph.attributes) == len(ph.records) == 5
    assert ph.images.float().std() > 20  # not blank
    empty = generate_phantoms(0)
    assert len(empty) == 0 and empty.images.shape == (0, 64, 64)


def test_deterministic_and_prefix_stable():
    a = generate_phantoms(20, seed=7)
    b = generate_phantoms(20, seed=7)
    c = generate_phantoms(6, seed=7)
    assert torch.equal(a.images, b.images) and a.reports == b.reports
    assert torch.equal(a.images[:6], c.images) and a.reports[:6] == c.reports
    assert a.attributes[:6] == c.attributes
    d = generate_phantoms(20, seed=8)
    assert not torch.equal(a.images, d.images)


def test_split_seeds_are_distinct():
    seeds = {split_seed(s, sp) for s in range(3) for sp in ("train", "validate", "test")}
    assert len(seeds) == 9


@pytest.mark.parametrize("kwargs,err", [
    ({"n": -1}, ValueError), ({"n": 2.5}, TypeError), ({"n": True}, TypeError),
    ({"n": 2, "seed": -1}, ValueError), ({"n": 2, "image_size": 8}, ValueError),
    ({"n": 2, "image_size": "64"}, TypeError),
    ({"n": 2, "attributes": [{}]}, ValueError),
    ({"n": 1, "attributes": [{"pneumonia": {}}]}, ValueError),
    ({"n": 1, "attributes": [{"cardiomegaly": {"size": "small"}}]}, ValueError),
    ({"n": 1, "attributes": [{"cardiomegaly": {"size": "mild", "side": "left"}}]}, ValueError),
    ({"n": 1, "attributes": [{"pneumothorax": {"side": "left", "size": "small", "colour": 1}}]}, ValueError),
    ({"n": 1, "attributes": ["edema"]}, TypeError),
])
def test_bad_arguments(kwargs, err):
    with pytest.raises(err):
        generate_phantoms(**kwargs)


def test_validate_attributes_fills_keys():
    assert validate_attributes({"edema": {"side": "bilateral", "size": "mild"}}) == \
        {"edema": {"side": "bilateral", "size": "mild", "zone": None}}
    with pytest.raises(ValueError, match="at most 2"):
        validate_attributes({"edema": {"side": "bilateral", "size": "mild"},
                             "cardiomegaly": {"size": "mild"},
                             "pneumothorax": {"side": "left", "size": "small"}})


def test_montage(tmp_path):
    ph = generate_phantoms(6, seed=0)
    out = save_montage(ph, tmp_path / "m.png", n=6)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert describe({}) == "normal"
    assert describe({"pleural effusion": {"side": "left", "size": "small", "zone": None}}) == "L eff small"
    with pytest.raises(TypeError):
        save_montage([1, 2], tmp_path / "x.png")
