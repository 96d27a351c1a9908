"""The iu_phantoms dataset: the descriptor table, the split, the rendering of each study's own
findings, the coverage report and the montage. The reports are torchxrayvision's IU copy, read at
run time (the tests skip where the package is missing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medtrim_ext.datasets.base import SPLITS, hash_split
from medtrim_ext.datasets.iu_phantoms import (ADJECTIVES, APPLIES, NO_PICTURE, IUPhantomDataset,
                                              caption, map_finding, rendered_attributes, truth_of)
from medtrim_ext.datasets.iu_phantoms.descriptors import SIZE_SCALES
from medtrim_ext.entities.vocabulary import Vocabulary

txv = pytest.importorskip("torchxrayvision")


@pytest.fixture(scope="module")
def test_split():
    return IUPhantomDataset("test", image_size=32)


# -- the descriptor table ---------------------------------------------------------------------------
@pytest.mark.parametrize("disease,adjs,dirs,expected", [
    # the examples, in the extractor's canonical words ("tiny", "minimal" -> small)
    ("pleural effusion", ["small"], ["left"], {"side": "left", "size": "small"}),
    ("cardiomegaly", ["mild"], [], {"size": "mild"}),
    ("lung opacity", ["basilar"], ["right"], {"side": "right", "zone": ("lower",)}),
    ("lung opacity", ["lower"], [], {"zone": ("lower",)}),
    # bibasilar: the extractor gives the direction bilateral and the adjective basilar
    ("atelectasis", ["basilar"], ["bilateral"], {"side": "bilateral", "zone": ("lower",)}),
    # both sides named -> bilateral; apex and biapical -> upper
    ("pleural other", ["biapical"], ["left", "right"], {"side": "bilateral", "zone": ("upper",)}),
    ("pneumothorax", ["apex", "small"], ["right"], {"side": "right", "size": "small"}),
    # a disease's own scale: a mild effusion is drawn small, a large heart severe
    ("pleural effusion", ["mild"], [], {"size": "small"}),
    ("cardiomegaly", ["large"], [], {"size": "severe"}),
    ("cardiomegaly", ["mild to moderate"], [], {"size": "moderate"}),
    # several sizes: the largest; a span of zones: each
    ("lung lesion", ["small", "large", "calcified"], ["left"],
     {"side": "left", "size": "large", "form": "calcified"}),
    ("lung opacity", ["mid to lower", "upper"], [], {"zone": ("lower", "mid", "upper")}),
    ("enlarged cardiomediastinum", [], [], {}),
])
def test_descriptor_table(disease, adjs, dirs, expected):
    truth, _ = map_finding(disease, adjs, dirs)
    assert truth == {"side": None, "size": None, "zone": None, "form": None, **expected}


def test_descriptors_without_a_picture_are_reported_with_their_reason():
    truth, unused = map_finding("pleural effusion", ["basal", "loculated", "persistent", "zzz"],
                                ["right"])
    assert truth["side"] == "right" and truth["zone"] is None
    assert dict(unused) == {"basal": "pleural effusion is drawn without a zone",
                            "loculated": "appearance", "persistent": "time course", "zzz": "unknown"}
    _, unused = map_finding("edema", ["mild"], ["right"])
    assert unused == [("right", "always drawn on both sides")]
    _, unused = map_finding("lung opacity", ["calcified"], [])
    assert unused == [("calcified", "lung opacity is drawn without a form")]
    with pytest.raises(ValueError, match="no picture is defined for disease 'rib'"):
        map_finding("rib", [], [])


def test_the_table_covers_the_packaged_vocabulary():
    vocab = Vocabulary.default()
    assert set(vocab.adjectives) == set(ADJECTIVES) | set(NO_PICTURE)
    assert not set(ADJECTIVES) & set(NO_PICTURE)
    assert set(vocab.diseases) == set(APPLIES)
    for disease, scale in SIZE_SCALES.items():
        assert "size" in APPLIES[disease] and set(scale) == {"small", "mild", "moderate", "large", "severe"}


def test_extractor_words_reach_the_table():
    """Report text -> extractor -> table: 'tiny', 'minimal' and 'bibasilar' as the issue maps them."""
    from medtrim_ext.extraction import EntityExtractor

    records = EntityExtractor().extract(["Tiny left pleural effusion.", "Minimal bibasilar atelectasis.",
                                         "Mild cardiomegaly."], progress=False)
    truths = [truth_of(r)[0] for r in records]
    assert truths[0]["pleural effusion"]["size"] == "small"
    assert truths[0]["pleural effusion"]["side"] == "left"
    assert truths[1]["atelectasis"]["side"] == "bilateral"
    assert truths[1]["atelectasis"]["zone"] == ("lower",)
    assert truths[2]["cardiomegaly"]["size"] == "mild"


def test_values_the_report_leaves_open_are_drawn_and_kept_out_of_the_truth():
    truth, _ = truth_of({"lung opacity": {"adjs": [], "dirs": []},
                         "pleural effusion": {"adjs": ["large"], "dirs": ["left"]},
                         "edema": {"adjs": [], "dirs": []}})
    sides = set()
    for k in range(60):
        a = rendered_attributes(truth, np.random.default_rng(k))
        sides.add(a["lung opacity"]["side"])
        assert a["lung opacity"]["size"] is None               # the medium look
        assert a["lung opacity"]["zone"][0] in ("upper", "mid", "lower")
        assert a["pleural effusion"] == {"side": "left", "size": "large", "zone": None, "form": None}
        assert a["edema"]["side"] == "bilateral" and a["edema"]["size"] in ("mild", "moderate", "severe")
    assert sides == {"left", "right", "bilateral"}
    assert truth["lung opacity"] == {"side": None, "size": None, "zone": None, "form": None}


# -- the dataset ------------------------------------------------------------------------------------
def test_split_is_the_report_id_hash_and_deterministic(test_split):
    ds = test_split
    assert all(hash_split(s, (0.8, 0.1, 0.1)) == "test" for s in ds.study_ids)
    assert 300 < len(ds) < 500                                        # 10% of 3,955
    again = IUPhantomDataset("test", image_size=32)
    assert again.study_ids == ds.study_ids and torch.equal(again.images, ds.images)
    assert again.attributes == ds.attributes


def test_splits_are_disjoint_and_cover_the_collection():
    sizes, ids = {}, set()
    for split in SPLITS:
        ds = IUPhantomDataset(split, image_size=16, n=None if split != "train" else 40)
        assert not ids & set(ds.study_ids)
        ids |= set(ds.study_ids)
        sizes[split] = len(ds)
        skipped = ds.coverage["skipped_without_findings_or_impression"]
        assert ds.coverage["studies"] == len(ds) and skipped >= 0
    assert sizes["train"] == 40
    assert 300 < sizes["validate"] < 500


def test_images_follow_the_report_and_the_seed_moves_only_the_patient(test_split):
    ds = test_split
    other = IUPhantomDataset("test", seed=1, image_size=32, n=40)
    assert other.study_ids == ds.study_ids[:40] and other.texts == ds.texts[:40]
    assert other.attributes == ds.attributes[:40]                      # the report decides the truth
    assert not torch.equal(other.images, ds.images[:40])               # the patient and noise differ
    prefix = IUPhantomDataset("test", image_size=32, n=40)             # a study's image: its id alone
    assert torch.equal(prefix.images, ds.images[:40])
    for truth, drawn in zip(ds.attributes, ds.rendered):
        assert list(truth) == list(drawn)
        for disease, t in truth.items():
            for key in ("side", "form"):
                assert t[key] is None or t[key] == drawn[disease][key]
            if t["zone"] is not None:
                assert list(drawn[disease]["zone"]) == t["zone"]


def test_texts_are_findings_and_impression_and_records_are_extracted(test_split):
    ds = test_split
    assert not any("INDICATION" in t or "COMPARISON" in t for t in ds.texts)
    assert all(t.strip() for t in ds.texts)
    normal = sum(1 for a in ds.attributes if not a)
    assert 0.5 < normal / len(ds) < 0.8                                # two thirds of IU is normal
    assert [list(r) for r in ds.records] == [list(a) for a in ds.attributes]
    item = ds[0]
    assert item["image"].shape == (1, 32, 32) and item["study_id"] == ds.study_ids[0]


def test_coverage_counts_what_is_not_drawn(test_split):
    cov = test_split.coverage
    assert cov["studies"] == len(test_split)
    assert cov["normal"] == sum(1 for a in test_split.attributes if not a)
    assert sum(cov["findings"].values()) == sum(len(a) for a in test_split.attributes)
    assert cov["studies_with_an_undrawn_descriptor"] > 0
    some = next(iter(cov["undrawn_descriptors"].values()))
    assert some["studies"] >= 1 and some["reason"]


def test_missing_torchxrayvision_is_named(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torchxrayvision" else real(name, *a))
    with pytest.raises(ValueError, match="torchxrayvision"):
        IUPhantomDataset("test")
    with pytest.raises(ValueError, match="does not exist"):
        IUPhantomDataset("test", reports="/nonexistent/NLMCXR_reports.tgz")


def test_load_dataset_kind_and_montage(tmp_path):
    from medtrim_ext.datasets import load_dataset
    from medtrim_ext.datasets.iu_phantoms import coverage_markdown, save_report_montage

    ds = load_dataset("iu_phantoms", "validate", image_size=32, n=30, progress=False)
    assert isinstance(ds, IUPhantomDataset) and len(ds) == 30
    with pytest.raises(ValueError, match="root must be None"):
        load_dataset("iu_phantoms", "test", root=str(tmp_path))
    out = save_report_montage(ds, tmp_path / "m.png", n=4)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = coverage_markdown(ds.coverage, "validate")
    assert "| finding | studies |" in md and "reason" in md
    assert caption({}) == "normal"
    assert caption({"pleural effusion": {"side": "left", "size": "small", "zone": None, "form": None},
                    "lung opacity": {"side": None, "size": None, "zone": ["lower", "mid"], "form": None}}) \
        == "L pleural effusion small; lung opacity lower+mid"


# -- in-batch false negatives -------------------------------------------------------------------------
def test_in_batch_false_negatives_by_hand():
    from medtrim_ext.evaluation.false_negatives import in_batch_false_negatives

    a = {"edema": {"adjs": ["mild"], "dirs": []}}
    records = [{}, {}, {}, dict(a), dict(a), {"edema": {"adjs": [], "dirs": []}}]
    # a batch of the whole set: 3 normal (3 pairs) + 2 identical edema (1 pair); 5 of 6 have a twin
    out = in_batch_false_negatives(records, batch_size=6, steps=2, seed=0)
    assert out["identical_pairs"] == 4 and out["identical_normal_pairs"] == 3
    assert out["items_with_a_twin"] == pytest.approx(5 / 6)
    assert out["distinct_records"] == 3 and out["pairs"] == 15
    assert out["distinct_records_in_split"] == 3 and out["normal_share"] == pytest.approx(0.5)


# -- the demo on it -----------------------------------------------------------------------------------
def test_demo_on_iu_phantoms_writes_the_phantom_demo_outputs_and_its_diagnostics(tmp_path, capsys):
    import json

    from medtrim_ext.apps.cli import main
    from test_train_cli import TINY_DEMO

    assert main(["demo", "--dataset", "iu-phantoms", "--out", str(tmp_path), "--seeds", "0", "--steps",
                 "3", "--no-progress", "--device", "cpu", *TINY_DEMO]) == 0
    out = capsys.readouterr().out
    assert "medtrim demo on iu-phantoms" in out and "In-batch false negatives" in out
    for name in ("results.md", "results.json", "retrieval.png", "verdict.json", "comparison.md",
                 "attributes.png", "iu_phantoms.png", "iu_coverage.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert not (tmp_path / "phantoms.png").exists()
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    assert verdict["dataset"] == "iu-phantoms"
    fn = verdict["in_batch_false_negatives"]["0"]
    assert fn["batch_size"] == 12 and 0 < fn["identical_pairs"] <= fn["pairs"]
    assert verdict["coverage"]["train"]["studies"] == 72
    results = json.loads((tmp_path / "results.json").read_text())
    run = results["runs"]["infonce"][0]
    assert run["num_samples"] == 36 and "ndcg@10" in json.dumps(run["i2t"])
    assert "undrawn" in (tmp_path / "iu_coverage.md").read_text() or "not drawn" in \
        (tmp_path / "iu_coverage.md").read_text()
