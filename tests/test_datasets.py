"""Datasets: the shared item format, phantoms, manifests, MIMIC-CXR-JPG and IU trees built in
tmp_path, the image transform and the collator."""

from __future__ import annotations

import gzip
import math
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from medtrim_ext import MetaEntities
from medtrim_ext.datasets import (Collator, ImageTransform, ManifestDataset, MimicCxrDataset,
                                  OpenIDataset, PhantomDataset, load_dataset, load_image,
                                  write_phantom_dataset)
from medtrim_ext.datasets.base import hash_split

ITEM_KEYS = {"image", "text", "entities", "index", "study_id"}


@pytest.fixture(scope="module")
def extractor():
    from medtrim_ext.extraction import EntityExtractor

    return EntityExtractor()


@pytest.fixture(scope="module")
def tokenizer():
    from medtrim_ext.datasets.phantoms import generate_phantoms
    from medtrim_ext.models.tokenization import train_wordpiece_tokenizer

    return train_wordpiece_tokenizer(generate_phantoms(200, seed=0, image_size=16).reports, vocab_size=500)


def check_dataset(ds, image_shape):
    """The contract every dataset keeps."""
    n = len(ds)
    assert n > 0
    assert len(ds.texts) == len(ds.study_ids) == len(ds.records) == len(ds.reports) == n
    assert all(isinstance(t, str) for t in ds.texts)
    assert ds.attributes is None or len(ds.attributes) == n
    if ds.labels is not None:
        assert ds.labels.shape == (n, len(ds.label_names)) and ds.labels.dtype == torch.float32
    MetaEntities.from_records(ds.records)
    for i in (0, n - 1):
        item = ds[i]
        assert set(item) == ITEM_KEYS
        assert item["image"].dtype == torch.float32 and tuple(item["image"].shape) == image_shape
        assert -1.0 - 1e-6 <= item["image"].min() and item["image"].max() <= 1.0 + 1e-6
        assert item["index"] == i and item["study_id"] == ds.study_ids[i]
        assert item["text"] == ds.texts[i] and item["entities"] == ds.records[i]
    assert ds[-1]["index"] == n - 1
    with pytest.raises(IndexError):
        ds[n]
    with pytest.raises(TypeError):
        ds[0.5]


# -- phantoms --------------------------------------------------------------------------------------
def test_phantom_dataset(extractor, tmp_path):
    ds = PhantomDataset("train", n=24, seed=1, image_size=32)
    check_dataset(ds, (1, 32, 32))
    assert ds.attributes is not None and ds.labels is None
    assert "FINDINGS" not in ds.texts[0] and "FINDINGS" in ds.reports[0]  # image sections only
    val = PhantomDataset("val", n=24, seed=1, image_size=32)
    assert val.split == "validate"
    assert not set(ds.study_ids) & set(val.study_ids)
    assert not torch.equal(ds.images, val.images)
    # extracted entities agree with the ground truth, and land in the cache
    ext = PhantomDataset("train", n=24, seed=1, image_size=32, entities="extracted",
                         cache_dir=tmp_path, extractor=extractor)
    assert ext.records == ds.records
    assert (tmp_path / "entities.parquet").is_file()
    three = PhantomDataset("test", n=4, image_size=48, in_chans=3, phantom_size=64)
    assert three[0]["image"].shape == (3, 48, 48) and three.images.shape == (4, 64, 64)
    assert torch.equal(three[0]["image"][0], three[0]["image"][2])


def test_phantom_dataset_arguments():
    with pytest.raises(ValueError):
        PhantomDataset("training-set", n=4)
    with pytest.raises(ValueError):
        PhantomDataset("train", n=0)
    with pytest.raises(ValueError):
        PhantomDataset("train", n=4, entities="gold")


def test_augmentation_seeded_per_item():
    ds = PhantomDataset("train", n=4, image_size=32, train=True, aug_seed=5)
    a, b = ds[1]["image"], ds[1]["image"]
    assert torch.equal(a, b)
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["image"], a)
    plain = PhantomDataset("train", n=4, image_size=32)
    assert not torch.equal(plain[1]["image"], a)


def test_load_dataset_factory():
    ds = load_dataset("phantoms", "test", image_size=32, n=6, entities="ground_truth", progress=False)
    assert isinstance(ds, PhantomDataset) and len(ds) == 6
    with pytest.raises(ValueError, match="root"):
        load_dataset("phantoms", "train", root="/tmp")
    with pytest.raises(ValueError, match="root"):
        load_dataset("mimic", "train")
    with pytest.raises(ValueError, match="kind"):
        load_dataset("chexpert", "train", root="/tmp")


def test_load_dataset_names_an_option_the_kind_does_not_take(tmp_path):
    # before: TypeError "ManifestDataset.__init__() got an unexpected keyword argument 'n'"
    with pytest.raises(ValueError, match=r"kind 'manifest' takes no option\(s\) \['n'\].*split_fractions"):
        load_dataset("manifest", "train", root=tmp_path / "m.csv", n=10)
    with pytest.raises(ValueError, match=r"\['reports_root'\]"):
        load_dataset("phantoms", "train", reports_root="/tmp")


def test_dataloader_to_batch(tokenizer):
    ds = load_dataset("phantoms", "train", image_size=32, n=10, entities="ground_truth", progress=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False, collate_fn=Collator(tokenizer))
    batch = next(iter(loader))
    assert batch["images"].shape == (4, 1, 32, 32) and batch["images"].dtype == torch.float32
    assert batch["input_ids"].dtype == torch.int64 and batch["attention_mask"].dtype == torch.int64
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert (batch["input_ids"][:, 0] == tokenizer.cls_token_id).all()
    assert isinstance(batch["entities"], MetaEntities) and len(batch["entities"]) == 4
    assert batch["entities"].to_records() == ds.records[:4]
    assert batch["index"].tolist() == [0, 1, 2, 3] and batch["study_ids"] == ds.study_ids[:4]


def test_collator(tokenizer):
    ds = PhantomDataset("train", n=3, image_size=16)
    items = [ds[i] for i in range(3)]
    fixed = Collator(tokenizer, max_length=12, padding="max_length")(items)
    assert fixed["input_ids"].shape == (3, 12)
    assert (fixed["input_ids"][:, -1] == tokenizer.sep_token_id).all()  # truncated, still closed
    assert fixed["attention_mask"].all()
    with pytest.raises(ValueError):
        Collator(tokenizer)([])
    with pytest.raises(ValueError):
        Collator(tokenizer)([{"image": torch.zeros(1, 4, 4)}])
    with pytest.raises(ValueError):
        Collator(tokenizer, max_length=1)
    odd = dict(items[1], image=torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="shapes"):
        Collator(tokenizer)([items[0], odd])


# -- transform -------------------------------------------------------------------------------------
def test_transform_basics():
    t = ImageTransform(16, in_chans=3)
    img = torch.arange(64 * 48, dtype=torch.int64).reshape(64, 48) % 256
    out = t(img.to(torch.uint8))
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    # pad keeps the whole image: the padded columns are black (-1)
    assert torch.allclose(out[0, :, 0], torch.full((16,), -1.0))
    crop = ImageTransform(16, fit="crop")(img.to(torch.uint8))
    assert crop.shape == (1, 16, 16) and crop[0, :, 0].max() > -1
    white = ImageTransform(8)(torch.ones(20, 20))
    assert torch.allclose(white, torch.ones(1, 8, 8))
    pil = ImageTransform(8)(Image.fromarray(np.full((10, 10), 255, np.uint8)))
    assert torch.allclose(pil, torch.ones(1, 8, 8))


@pytest.mark.parametrize("bad,err", [
    (torch.full((4, 4), 2.0), ValueError), (torch.full((4, 4), float("nan")), ValueError),
    (torch.zeros(3, 4, 4), ValueError), (torch.zeros(4), ValueError), ("image", TypeError),
])
def test_transform_rejects(bad, err):
    with pytest.raises(err):
        ImageTransform(8)(bad)


def test_transform_arguments():
    for kwargs in ({"image_size": 4}, {"image_size": 32, "in_chans": 0}, {"image_size": 32, "fit": "zoom"},
                   {"image_size": 32, "rotate": 90}, {"image_size": 32, "scale": (1.1, 1.0)}):
        with pytest.raises(ValueError):
            ImageTransform(**kwargs)


def test_augmentation_is_mild_and_never_flips():
    img = torch.zeros(32, 32)
    img[8:24, 22:30] = 1.0  # a bright patch on the image's right
    t = ImageTransform(32, train=True)
    g = torch.Generator().manual_seed(0)
    outs = torch.stack([t(img, generator=g) for _ in range(40)])
    right, left = outs[..., 16:].mean((1, 2, 3)), outs[..., :16].mean((1, 2, 3))
    assert (right > left + 0.3).all()
    assert not torch.equal(outs[0], outs[1])
    again = t(img, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, outs[0])
    assert torch.equal(ImageTransform(32)(img), ImageTransform(32)(img))


# -- manifest --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phantom_manifest(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("ph"), n=20, seed=3, image_size=32)


def test_write_phantom_dataset(phantom_manifest):
    import pandas as pd

    df = pd.read_csv(phantom_manifest)
    assert list(df.columns) == ["image_path", "report", "study_id", "split"]
    assert df["split"].value_counts().to_dict() == {"train": 16, "validate": 2, "test": 2}
    assert (phantom_manifest.parent / "attributes.jsonl").is_file()
    assert not list(phantom_manifest.parent.glob(".*.tmp"))
    with pytest.raises(ValueError):
        write_phantom_dataset(phantom_manifest.parent, n=4, fractions=(0.5, 0.6, 0.1))


def test_manifest_dataset(phantom_manifest, extractor):
    from medtrim_ext.datasets.phantoms import generate_phantoms

    ds = ManifestDataset(phantom_manifest, "train", image_size=32, entities="ground_truth")
    check_dataset(ds, (1, 32, 32))
    assert len(ds) == 16 and ds.attributes is not None
    ph = generate_phantoms(20, seed=3, image_size=32)
    assert ds.study_ids == ph.study_ids[:16] and ds.records == ph.records[:16]
    assert torch.equal(load_image(ds.image_paths[0]), ph.images[0])  # PNG round trip is exact
    every = ManifestDataset(phantom_manifest, None, image_size=32, extractor=extractor, progress=False)
    assert len(every) == 20 and every.records == ph.records


def test_manifest_without_split_column_splits_by_patient(tmp_path, extractor):
    # before: "manifest ... has no column 'split'" for any split
    import pandas as pd

    _png(tmp_path / "a.png")
    # 60 patients with 3 studies each (the last 30 rows have no patient id: their study decides)
    patients = [f"p{k // 3}" for k in range(180)] + [""] * 30
    rows = [["a.png", "No acute process.", f"s{k}", patients[k]] for k in range(210)]
    m = _write_csv(tmp_path / "m.csv", ["image_path", "report", "study_id", "Subject_ID"], rows)
    ok = dict(extractor=extractor, progress=False)
    parts = {s: ManifestDataset(m, s, image_size=8, **ok) for s in ("train", "validate", "test")}
    assert sum(len(d) for d in parts.values()) == 210
    ids = {s: set(d.study_ids) for s, d in parts.items()}
    assert not (ids["train"] & ids["validate"] or ids["train"] & ids["test"] or ids["validate"] & ids["test"])
    owner = dict(zip((f"s{k}" for k in range(210)), patients))
    for s, d in parts.items():  # every study of a patient in one split; its split is the patient's
        assert d.split_source == "hash" and d.split_fractions == (0.8, 0.1, 0.1)
        for sid in d.study_ids:
            assert hash_split(owner[sid] or sid) == s
    # deterministic: the same rows in another order give the same splits
    shuffled = _write_csv(tmp_path / "shuffled.csv", ["image_path", "report", "study_id", "Subject_ID"],
                          rows[::-1])
    assert set(ManifestDataset(shuffled, "test", image_size=8, **ok).study_ids) == ids["test"]
    # configurable fractions; a Parquet manifest with missing patient ids (NaN) works the same
    half = ManifestDataset(m, "test", image_size=8, split_fractions=[0.5, 0.0, 0.5], **ok)
    assert 0.3 < len(half) / 210 < 0.7 and ids["test"] <= set(half.study_ids)
    with pytest.raises(ValueError, match="no rows with split 'validate'"):
        ManifestDataset(m, "validate", image_size=8, split_fractions=[0.5, 0.0, 0.5], **ok)
    pd.DataFrame({"image_path": [r[0] for r in rows], "report": [r[1] for r in rows],
                  "study_id": [r[2] for r in rows],
                  "patient_id": [p or None for p in patients]}).to_parquet(tmp_path / "m.parquet")
    assert set(ManifestDataset(tmp_path / "m.parquet", "validate", image_size=8, **ok).study_ids) == ids["validate"]


def test_hash_split_fractions_and_the_iu_split():
    import hashlib

    def old_iu(report_id):  # the IU split of the earlier versions: a bucket out of 100
        bucket = int.from_bytes(hashlib.sha256(str(report_id).encode()).digest()[:8], "little") % 100
        return "train" if bucket < 80 else "validate" if bucket < 90 else "test"

    assert all(hash_split(f"CXR{k}") == old_iu(f"CXR{k}") for k in range(3000))
    shares = np.mean([[hash_split(f"x{k}", (0.333, 0.333, 0.334)) == s for s in ("train", "validate", "test")]
                      for k in range(6000)], axis=0)
    assert np.allclose(shares, [0.333, 0.333, 0.334], atol=0.025)
    assert {hash_split(f"x{k}", (0.0, 0.0, 1.0)) for k in range(100)} == {"test"}


def test_write_phantom_dataset_without_split_column(tmp_path):
    import pandas as pd

    m = write_phantom_dataset(tmp_path, n=12, image_size=16, fractions=None)
    assert list(pd.read_csv(m).columns) == ["image_path", "report", "study_id"]
    ds = ManifestDataset(m, "train", image_size=16, entities="ground_truth", progress=False)
    want = [sid for sid in pd.read_csv(m, dtype=str)["study_id"] if hash_split(sid) == "train"]
    assert ds.split_source == "hash" and ds.study_ids == want and len(want) > 0


def _write_csv(path, header, rows):
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _png(path, value=128, size=(40, 30), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full(size[::-1], value, np.uint16 if mode == "I;16" else np.uint8)
    Image.fromarray(arr).save(path)
    return path


def test_manifest_parquet_labels_and_absolute_paths(tmp_path, extractor):
    import pandas as pd

    a = _png(tmp_path / "imgs" / "a.png", 10)
    b = _png(tmp_path / "imgs" / "b.png", 200)
    df = pd.DataFrame({"image": [str(a), "imgs/b.png"], "findings": ["Small left effusion.", ""],
                       "impression": ["", "No acute process."], "Cardiomegaly": ["1", "-1"],
                       "Edema": ["0", ""]})
    df.to_parquet(tmp_path / "m.parquet")
    ds = ManifestDataset(tmp_path / "m.parquet", image_size=16, extractor=extractor, progress=False,
                         label_columns=["Cardiomegaly", "Edema"])
    check_dataset(ds, (1, 16, 16))
    assert ds.study_ids == ["#0", "#1"] and ds.attributes is None
    assert ds.records[0] == {"pleural effusion": {"adjs": ["small"], "dirs": ["left"]}} and ds.records[1] == {}
    assert ds.label_names == ["Cardiomegaly", "Edema"]
    assert ds.labels[0].tolist() == [1.0, 0.0] and all(math.isnan(v) for v in ds.labels[1].tolist())
    assert ds[1]["image"].mean() > ds[0]["image"].mean()


def test_manifest_errors(tmp_path, extractor):
    _png(tmp_path / "a.png")
    ok = dict(entities="extracted", extractor=extractor, progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        ManifestDataset(tmp_path / "nope.csv")
    m = _write_csv(tmp_path / "m1.csv", ["report"], [["x"]])
    with pytest.raises(ValueError, match="image column"):
        ManifestDataset(m, **ok)
    m = _write_csv(tmp_path / "m2.csv", ["image_path", "notes"], [["a.png", "x"]])
    with pytest.raises(ValueError, match="m2.csv"):
        ManifestDataset(m, **ok)
    m = _write_csv(tmp_path / "m3.csv", ["image_path", "report"], [["a.png", "x"], ["missing.png", "y"]])
    with pytest.raises(ValueError, match="missing.png"):
        ManifestDataset(m, **ok)
    m = _write_csv(tmp_path / "m4.csv", ["image_path", "report"], [["a.png", "x"]])
    # no split column: study "0" hashes into one split; the others are empty, with the reason
    home = hash_split("0")
    assert len(ManifestDataset(m, home, **ok)) == 1
    with pytest.raises(ValueError, match="no split column: rows are split by a hash"):
        ManifestDataset(m, next(s for s in ("train", "validate", "test") if s != home), **ok)
    with pytest.raises(ValueError, match="split_fractions must be three shares"):
        ManifestDataset(m, "train", split_fractions=[0.5, 0.6], **ok)
    with pytest.raises(ValueError, match="ground-truth"):
        ManifestDataset(m, entities="ground_truth")
    m = _write_csv(tmp_path / "m5.csv", ["image_path", "report", "split"], [["a.png", "x", "holdout"]])
    with pytest.raises(ValueError, match="split"):
        ManifestDataset(m, "train", **ok)
    with pytest.raises(ValueError, match="has a split column"):
        ManifestDataset(m, "train", split_fractions=[0.8, 0.1, 0.1], **ok)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    m = _write_csv(tmp_path / "m6.csv", ["image_path", "report"], [["bad.png", "x"]])
    ds = ManifestDataset(m, **ok)
    with pytest.raises(ValueError, match="bad.png"):
        ds[0]
    m = _write_csv(tmp_path / "m7.csv", ["image_path", "report", "lbl"], [["a.png", "x", "maybe"]])
    with pytest.raises(ValueError, match="maybe"):
        ManifestDataset(m, label_columns=["lbl"], **ok)


def test_load_image_modes(tmp_path):
    p16 = tmp_path / "x16.png"
    Image.fromarray(np.full((6, 5), 65535, np.uint16)).save(p16)
    img = load_image(p16)
    assert img.dtype == torch.float32 and torch.allclose(img, torch.ones(6, 5))
    rgb = tmp_path / "rgb.jpg"
    Image.fromarray(np.full((64, 80, 3), 200, np.uint8)).save(rgb)
    small = load_image(rgb, size_hint=16)
    assert small.dtype == torch.uint8 and small.shape[0] < 64  # JPEG drafted at reduced scale
    with pytest.raises(ValueError, match="nothing.png"):
        load_image(tmp_path / "nothing.png")


# -- MIMIC-CXR-JPG ---------------------------------------------------------------------------------
def _gz_csv(path, header, rows):
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    with gzip.open(path, "wt") as f:
        f.write(buf.getvalue())


@pytest.fixture()
def mimic_tree(tmp_path):
    root, reports = tmp_path / "mimic-cxr-jpg", tmp_path / "mimic-cxr-reports"
    studies = [  # subject, study, [(dicom, view)], split, report
        ("10000032", "50414267", [("d-lat", "LATERAL"), ("d-pa", "PA")], "train",
         "FINAL REPORT\n INDICATION: cough.\n FINDINGS: Small right pleural effusion.\n IMPRESSION: Effusion."),
        ("10000032", "53189527", [("d-ap", "AP")], "train",
         "FINDINGS: The lungs are clear. No pneumothorax.\nIMPRESSION: No acute process."),
        ("10000764", "57375967", [("d-lat2", "LL")], "train", "FINDINGS: Lateral only."),
        ("10000898", "50771383", [("d-v", "PA")], "validate", "IMPRESSION: Moderate cardiomegaly."),
        ("10001176", "54684191", [("d-norep", "PA")], "train", None),
    ]
    split_rows, meta_rows = [], []
    for subject, study, images, split, report in studies:
        for dicom, view in images:
            _png(root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg")
            split_rows.append([dicom, study, subject, split])
            meta_rows.append([dicom, subject, study, view])
        if report is not None:
            p = reports / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(report)
    # JPEG files must be JPEG: re-save them as such
    for f in (root / "files").rglob("*.jpg"):
        Image.open(f).convert("L").save(f, format="JPEG")
    _gz_csv(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], split_rows)
    _gz_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", ["dicom_id", "subject_id", "study_id", "ViewPosition"], meta_rows)
    _gz_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz",
            ["subject_id", "study_id", "Cardiomegaly", "Pleural Effusion"],
            [["10000032", "50414267", "", "1.0"], ["10000032", "53189527", "0.0", "-1.0"]])
    return root, reports


def test_mimic_dataset(mimic_tree, extractor):
    root, reports = mimic_tree
    with pytest.warns(UserWarning, match="without a report"):
        ds = MimicCxrDataset(root, "train", reports_root=reports, image_size=16, extractor=extractor,
                             progress=False)
    check_dataset(ds, (1, 16, 16))
    assert ds.study_ids == ["s50414267", "s53189527"]  # the lateral-only study is dropped
    assert ds.image_paths[0].name == "d-pa.jpg"  # first frontal image
    assert ds.records[0] == {"pleural effusion": {"adjs": ["small"], "dirs": ["right"]}}
    assert ds.records[1] == {}
    assert "cough" not in ds.texts[0] and "Small right pleural effusion" in ds.texts[0]
    assert ds.label_names == ["Cardiomegaly", "Pleural Effusion"]
    lab = ds.labels.tolist()
    assert math.isnan(lab[0][0]) and lab[0][1] == 1.0 and lab[1][0] == 0.0 and math.isnan(lab[1][1])
    val = load_dataset("mimic", "val", root=root, reports_root=reports, image_size=16,
                       extractor=extractor, progress=False)
    assert val.study_ids == ["s50771383"] and val.records[0]["cardiomegaly"]["adjs"] == ["moderate"]


def test_mimic_errors(mimic_tree, tmp_path, extractor):
    root, reports = mimic_tree
    with pytest.raises(ValueError, match="not a folder"):
        MimicCxrDataset(tmp_path / "absent")
    with pytest.raises(ValueError, match="'files'"):
        MimicCxrDataset(reports.parent)
    (root / "mimic-cxr-2.0.0-split.csv.gz").rename(root / "moved.csv.gz")
    with pytest.raises(ValueError, match="split.csv"):
        MimicCxrDataset(root, reports_root=reports)
    _gz_csv(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "split"], [["a", "1", "train"]])
    with pytest.raises(ValueError, match="subject_id"):
        MimicCxrDataset(root, reports_root=reports)


def test_mimic_report_links_that_leave_the_reports_folder_are_skipped(mimic_tree, tmp_path):
    import os
    import warnings

    from medtrim_ext.datasets.mimic import index_mimic

    root, reports = mimic_tree
    (tmp_path / "passwd").write_text("root:x:0:0:root:/root:/bin/bash")
    report = reports / "files" / "p10" / "p10000032" / "s53189527.txt"
    report.unlink()
    os.symlink(tmp_path / "passwd", report)  # before: read as the study's report
    with pytest.warns(UserWarning, match=r"skipped 1 studies whose report file is a link .*s53189527.txt"):
        index = index_mimic(root, reports_root=reports, progress=False)
    assert index.study_ids == ["s50414267"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index = index_mimic(root, reports_root=reports, progress=False, follow_links=True)
    assert index.study_ids == ["s50414267", "s53189527"] and index.reports[1].startswith("root:")


def test_mimic_unreadable_image(mimic_tree, extractor):
    root, reports = mimic_tree
    with pytest.warns(UserWarning):
        ds = MimicCxrDataset(root, "train", reports_root=reports, image_size=16, extractor=extractor,
                             progress=False)
    ds.image_paths[1].write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ValueError, match="d-ap.jpg"):
        ds[1]


# -- IU / OpenI ------------------------------------------------------------------------------------
def _iu_xml(uid, findings, impression):
    return (f'<?xml version="1.0"?><eCitation><uId id="{uid}"/><MedlineCitation><Article><Abstract>'
            f'<AbstractText Label="COMPARISON">None.</AbstractText>'
            f'<AbstractText Label="FINDINGS">{findings}</AbstractText>'
            f'<AbstractText Label="IMPRESSION">{impression}</AbstractText>'
            f'</Abstract></Article></MedlineCitation><MeSH><major>normal</major></MeSH></eCitation>')


@pytest.fixture()
def iu_tree(tmp_path):
    root = tmp_path / "iu"
    xml = root / "ecgen-radiology"
    xml.mkdir(parents=True)
    texts = {}
    for n in range(1, 41):
        uid = f"CXR{n}"
        findings = "Small left pleural effusion." if n % 3 == 0 else "The lungs are clear."
        impression = "" if n == 7 else "No acute disease."
        texts[uid] = findings
        (xml / f"{n}.xml").write_text(_iu_xml(uid, findings, impression if n != 7 else ""))
        if n % 10 == 5:
            continue  # no image
        _png(root / "NLMCXR_png" / f"{uid}_IM-0001-4001.png", 50)
        _png(root / "NLMCXR_png" / f"{uid}_IM-0001-1001.png", 150)
    return root, texts


@pytest.mark.filterwarnings("ignore:IU .*skipped")
def test_openi_dataset(iu_tree, extractor):
    root, texts = iu_tree
    with pytest.warns(UserWarning, match="without an image"):
        ds = OpenIDataset(root, "train", image_size=16, extractor=extractor, progress=False)
    check_dataset(ds, (1, 16, 16))
    want = [f"CXR{n}" for n in range(1, 41) if n % 10 != 5 and hash_split(f"CXR{n}") == "train"]
    assert ds.study_ids == want
    assert all(p.name.endswith("1001.png") for p in ds.image_paths)  # first in natural order
    for sid, rec in zip(ds.study_ids, ds.records):
        assert (rec == {"pleural effusion": {"adjs": ["small"], "dirs": ["left"]}}) == ("effusion" in texts[sid])
    splits = {s: len(OpenIDataset(root, s, image_size=16, extractor=extractor, progress=False))
              for s in ("validate", "test") if any(hash_split(f"CXR{n}") == s and n % 10 != 5 for n in range(1, 41))}
    assert sum(splits.values()) + len(ds) == 36


def test_openi_from_archive(iu_tree, tmp_path, extractor):
    root, _ = iu_tree
    tgz = tmp_path / "NLMCXR_reports.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(root / "ecgen-radiology", arcname="ecgen-radiology")
    with pytest.warns(UserWarning):
        a = OpenIDataset(root, "train", image_size=16, extractor=extractor, progress=False)
        b = OpenIDataset(root, "train", reports=tgz, images=root / "NLMCXR_png", image_size=16,
                         extractor=extractor, progress=False)
    assert a.study_ids == b.study_ids and a.texts == b.texts


def test_openi_errors(iu_tree, tmp_path):
    root, _ = iu_tree
    with pytest.raises(ValueError, match="not a folder"):
        OpenIDataset(tmp_path / "nothing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="pass reports"):
        OpenIDataset(empty)
    with pytest.raises(ValueError, match="no .png"):
        OpenIDataset(root, images=empty)
    assert {hash_split(f"id{k}") for k in range(200)} == {"train", "validate", "test"}
    share = np.mean([hash_split(f"id{k}") == "train" for k in range(2000)])
    assert 0.76 < share < 0.84


# -- normalisation: [-1, 1] gray or ImageNet RGB --------------------------------------------------
def test_imagenet_normalisation_repeats_gray_to_rgb():
    from medtrim_ext.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD

    gray = torch.full((16, 16), 0.7)
    out = ImageTransform(16, 3, normalize="imagenet")(gray)
    assert out.shape == (3, 16, 16)
    for c in range(3):
        assert torch.allclose(out[c], torch.tensor((0.7 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]))
    assert torch.allclose(ImageTransform(16, 3)(gray), torch.tensor(0.4))  # the default: (x - 0.5) / 0.5
    with pytest.raises(ValueError, match="in_chans must be 3"):
        ImageTransform(16, 1, normalize="imagenet")
    with pytest.raises(ValueError, match="normalize must be one of"):
        ImageTransform(16, 3, normalize="zscore")


def test_load_dataset_passes_the_normalisation_on():
    a = load_dataset("phantoms", "test", n=4, image_size=16, in_chans=3, normalize="imagenet",
                     entities="ground_truth")
    b = load_dataset("phantoms", "test", n=4, image_size=16, in_chans=3, entities="ground_truth")
    assert a.transform.normalize == "imagenet" and b.transform.normalize == "half"
    x, y = a[0]["image"], b[0]["image"]
    assert torch.allclose(x[0] * 0.229 + 0.485, y[0] * 0.5 + 0.5, atol=1e-5)  # the same pixels
    with pytest.raises(ValueError, match="custom transform"):
        load_dataset("phantoms", "test", n=4, in_chans=3, normalize="imagenet",
                     entities="ground_truth", transform=lambda im: im)
