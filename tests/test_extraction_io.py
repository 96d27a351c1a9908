"""Report readers (CSV, Parquet, MIMIC-CXR tree, IU/OpenI XML) and `medtrim extract` end to end,
on small files the tests write themselves."""

import io
import json
import tarfile

import pandas as pd
import pytest

from medtrim_ext import MetaEntities
from medtrim_ext.cli import main
from medtrim_ext.extraction import read_reports
from medtrim_ext.io import read_records

IU_XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation>
  <uId id="CXR{n}"/>
  <MedlineCitation><Article><Abstract>
    <AbstractText Label="COMPARISON">{comparison}</AbstractText>
    <AbstractText Label="INDICATION">{indication}</AbstractText>
    <AbstractText Label="FINDINGS">{findings}</AbstractText>
    <AbstractText Label="IMPRESSION">{impression}</AbstractText>
  </Abstract></Article></MedlineCitation>
  <MeSH>{mesh}</MeSH>
</eCitation>
"""


def iu_xml(n, findings="", impression="", indication="", comparison="", mesh=("normal",)):
    tags = "".join(f"<major>{m}</major>" for m in mesh)
    return IU_XML.format(n=n, findings=findings, impression=impression, indication=indication,
                         comparison=comparison, mesh=tags).encode()


def write_iu_tgz(path, docs):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in docs:
            info = tarfile.TarInfo(f"ecgen-radiology/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


# -- readers -----------------------------------------------------------------------------------
def test_csv_with_findings_and_impression(tmp_path):
    p = tmp_path / "r.csv"
    pd.DataFrame({"study_id": ["s1", "s2", "s3"],
                  "Findings": ["Small left pleural effusion.", "", None],
                  "impression": ["No pneumothorax.", "Mild cardiomegaly.", None]}).to_csv(p, index=False)
    r = read_reports(p)
    assert r.ids == ["s1", "s2", "s3"] and r.kind == "table"
    assert r.texts[0] == "FINDINGS: Small left pleural effusion.\nIMPRESSION: No pneumothorax."
    assert r.texts[1] == "IMPRESSION: Mild cardiomegaly."
    assert r.texts[2] == ""


def test_parquet_with_report_column_and_no_ids(tmp_path):
    p = tmp_path / "r.parquet"
    pd.DataFrame({"report": ["FINDINGS: edema.", "normal"]}).to_parquet(p)
    r = read_reports(p)
    assert r.ids == ["0", "1"] and r.texts == ["FINDINGS: edema.", "normal"]


def test_table_errors(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="needs a 'findings' and/or 'impression' column"):
        read_reports(p)
    (tmp_path / "empty.csv").write_text("findings,impression\n")
    with pytest.raises(ValueError, match="contains no reports"):
        read_reports(tmp_path / "empty.csv")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="cannot read table"):
        read_reports(tmp_path / "junk.parquet")
    with pytest.raises(ValueError, match="does not exist"):
        read_reports(tmp_path / "missing.csv")
    (tmp_path / "x.docx").write_text("?")
    with pytest.raises(ValueError, match="unknown kind"):
        read_reports(tmp_path / "x.docx")


def test_mimic_tree(tmp_path):
    root = tmp_path / "files"
    for sub, subj, study, text in [("p10", "p10000032", "s50414267",
                                    "FINAL REPORT\n EXAMINATION: CHEST\n\n INDICATION: ___ with cough, r/o pneumonia\n\n"
                                    " FINDINGS: There is a small left\n pleural effusion.\n\n IMPRESSION: Small left effusion."),
                                   ("p10", "p10000032", "s53189527", "IMPRESSION: No acute process."),
                                   ("p11", "p11000011", "s51000000", "")]:
        d = root / sub / subj
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{study}.txt").write_text(text)
    r = read_reports(root)
    assert r.kind == "text-tree"
    assert r.ids == ["s50414267", "s53189527", "s51000000"]
    assert [m["subject_id"] for m in r.meta] == ["p10000032", "p10000032", "p11000011"]
    # the indication's "r/o pneumonia" and the wrapped finding line are handled
    from medtrim_ext.extraction import EntityExtractor

    assert EntityExtractor().extract(r.texts) == [
        {"pleural effusion": {"adjs": ["small"], "dirs": ["left"]}}, {}, {}]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="contains no reports"):
        read_reports(tmp_path / "empty")


def test_iu_tgz_and_folder(tmp_path):
    docs = [("10.xml", iu_xml(10, findings="Mild cardiomegaly.", indication="Pneumonia?",
                              mesh=("Cardiomegaly/mild",))),
            ("2.xml", iu_xml(2, impression="No acute disease.")),
            ("notes.txt", b"ignored")]
    write_iu_tgz(tmp_path / "reports.tgz", docs)
    r = read_reports(tmp_path / "reports.tgz")
    assert r.ids == ["CXR2", "CXR10"]  # natural order of the member names
    assert r.meta[1]["mesh_major"] == ["Cardiomegaly/mild"]
    assert "INDICATION: Pneumonia?" in r.texts[1] and "FINDINGS: Mild cardiomegaly." in r.texts[1]
    folder = tmp_path / "xml"
    folder.mkdir()
    for name, data in docs[:2]:
        (folder / name).write_bytes(data)
    assert sorted(read_reports(folder).ids) == ["CXR10", "CXR2"]
    (folder / "broken.xml").write_text("<eCitation><uId")
    with pytest.raises(ValueError, match="broken.xml: not valid XML"):
        read_reports(folder)
    (tmp_path / "bad.tgz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ValueError, match="cannot read archive"):
        read_reports(tmp_path / "bad.tgz")


# -- CLI ---------------------------------------------------------------------------------------
def test_cli_extract_csv_to_parquet(tmp_path, capsys):
    p = tmp_path / "reports.csv"
    pd.DataFrame({"study_id": ["a", "b", "c"],
                  "findings": ["Small left pleural effusion. No pneumothorax.", "", "Lungs are clear."],
                  "impression": ["Mild cardiomegaly.", "", "No acute disease."]}).to_csv(p, index=False)
    out = tmp_path / "entities.parquet"
    assert main(["extract", str(p), "-o", str(out), "--no-progress"]) == 0
    df = pd.read_parquet(out)
    assert list(df["study_id"]) == ["a", "b", "c"]
    assert list(df["no_finding"]) == [False, True, True]
    assert list(df["pleural effusion"]) == [True, False, False]
    records = [json.loads(e) for e in df["entities"]]
    assert records[0] == {"cardiomegaly": {"adjs": ["mild"], "dirs": []},
                          "pleural effusion": {"adjs": ["small"], "dirs": ["left"]}}
    MetaEntities.from_records(records)
    text = capsys.readouterr().out
    assert "3 reports (1 empty), 2 with no finding" in text
    assert "pleural effusion" in text and "wrote" in text


def test_cli_extract_iu_to_jsonl_then_mine(tmp_path, capsys):
    findings = ["Small right pleural effusion.", "Mild cardiomegaly.", "No acute disease.",
                "Left lower lobe atelectasis.", "Small bilateral pleural effusions.", "Normal chest."]
    write_iu_tgz(tmp_path / "iu.tgz", [(f"{i}.xml", iu_xml(i, findings=f)) for i, f in enumerate(findings)])
    out = tmp_path / "entities.jsonl"
    assert main(["extract", str(tmp_path / "iu.tgz"), "-o", str(out), "--no-progress",
                 "--n-process", "2"]) == 0
    records, ids = read_records(out)
    assert ids == [f"CXR{i}" for i in range(6)]
    assert records[1] == {"cardiomegaly": {"adjs": ["mild"], "dirs": []}}
    assert main(["mine", str(out), "-o", str(tmp_path / "t.csv"), "--device", "cpu"]) == 0


def test_cli_extract_mimic_tree_has_subject_ids(tmp_path):
    d = tmp_path / "files" / "p10" / "p10000032"
    d.mkdir(parents=True)
    (d / "s1.txt").write_text("FINDINGS: Moderate right pneumothorax.")
    out = tmp_path / "e.parquet"
    assert main(["extract", str(tmp_path / "files"), "-o", str(out), "--no-progress"]) == 0
    df = pd.read_parquet(out)
    assert list(df["subject_id"]) == ["p10000032"] and bool(df["pneumothorax"][0])


def test_cli_extract_errors(tmp_path, capsys):
    assert main(["extract", str(tmp_path / "nope.csv"), "-o", str(tmp_path / "o.parquet")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "r.csv").write_text("report\nNo effusion.\n")
    assert main(["extract", str(tmp_path / "r.csv"), "-o", str(tmp_path / "o.txt"), "--no-progress"]) == 2
    assert "use a .parquet, .jsonl or .json" in capsys.readouterr().err
    assert not (tmp_path / "o.txt").exists()
    (tmp_path / "o.yaml").write_text("diseases: {}\n")
    assert main(["extract", str(tmp_path / "r.csv"), "-o", str(tmp_path / "o.parquet"),
                 "--ontology", str(tmp_path / "o.yaml")]) == 2
    assert "missing required keys" in capsys.readouterr().err


def test_iu_collection_from_torchxrayvision_if_installed():
    """The real collection, when the benchmark's package is installed: read, not copied."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None:
        pytest.skip("torchxrayvision not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "NLMCXR_reports.tgz"
    if not path.exists():
        pytest.skip("NLMCXR_reports.tgz not shipped")
    r = read_reports(path)
    assert len(r) == 3955 and len(set(r.ids)) == 3955
