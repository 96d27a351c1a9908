"""Report readers (CSV, Parquet, MIMIC-CXR tree, IU/OpenI XML) and `medtrim extract` end to end,
on small files the tests write themselves."""

import io
import json
import tarfile

import pandas as pd
import pytest

from helpers import make_extraction_fail_on
from medtrim_ext import MetaEntities
from medtrim_ext.apps.cli import main
from medtrim_ext.extraction import read_reports
from medtrim_ext.utils.io import read_parquet_columns
from medtrim_ext.utils.io import read_records

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
    assert r.ids == ["#0", "#1"] and r.texts == ["FINDINGS: edema.", "normal"]


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
    df = pd.DataFrame(read_parquet_columns(out))  # pd.read_parquet may abort pytest at exit
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
    df = pd.DataFrame(read_parquet_columns(out))
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


# -- awkward inputs ----------------------------------------------------------------------------------
@pytest.fixture
def no_hang():
    """Turn a hang (reading a FIFO blocks forever) into a test failure."""
    import signal

    def timeout(*_):
        raise TimeoutError("read_reports hung")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_fifo_in_a_report_tree_is_skipped(tmp_path, no_hang):
    import os

    d = tmp_path / "files" / "p10" / "p10000032"
    d.mkdir(parents=True)
    (d / "s1.txt").write_text("FINDINGS: Moderate right pneumothorax.")
    os.mkfifo(d / "s2.txt")  # before: read_reports blocked forever on it
    with pytest.warns(UserWarning, match=r"skipped 1 \*.txt entry that are not regular files.*s2.txt"):
        r = read_reports(tmp_path / "files")
    assert r.ids == ["s1"]
    with pytest.raises(ValueError, match="s2.txt' is not a regular file"):
        read_reports(d / "s2.txt")
    xml = tmp_path / "xml"
    xml.mkdir()
    (xml / "1.xml").write_bytes(iu_xml(1, findings="Mild cardiomegaly."))
    os.mkfifo(xml / "2.xml")
    with pytest.warns(UserWarning, match="2.xml"):
        assert read_reports(xml).ids == ["CXR1"]


def test_folder_with_txt_and_xml_reports_is_refused(tmp_path):
    (tmp_path / "1.xml").write_bytes(iu_xml(1, findings="Mild cardiomegaly."))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "s2.txt").write_text("FINDINGS: Small left pleural effusion.")
    # before: the .txt report was silently left out
    with pytest.raises(ValueError, match=r"both IU/OpenI .xml reports \(1, .*1.xml'\) and "
                                         r".txt reports \(1, .*s2.txt'\)"):
        read_reports(tmp_path)
    (tmp_path / "notes.txt").mkdir()  # a folder named like a report is no report
    (tmp_path / "sub" / "s2.txt").unlink()
    assert read_reports(tmp_path).ids == ["CXR1"]


def test_list_valued_parquet_cells(tmp_path):
    p = tmp_path / "r.parquet"
    pd.DataFrame({"study_id": ["a", "b"],
                  "findings": [["Small left pleural effusion.", "No pneumothorax."], None],
                  "impression": [["Mild cardiomegaly."], ["No acute disease.", None]]}).to_parquet(p)
    r = read_reports(p)
    # before: "FINDINGS: ['Small left pleural effusion.' 'No pneumothorax.']"
    assert r.texts == ["FINDINGS: Small left pleural effusion.\nNo pneumothorax.\nIMPRESSION: Mild cardiomegaly.",
                       "IMPRESSION: No acute disease."]
    from medtrim_ext.extraction import EntityExtractor

    assert EntityExtractor().extract(r.texts)[0] == {
        "cardiomegaly": {"adjs": ["mild"], "dirs": []},
        "pleural effusion": {"adjs": ["small"], "dirs": ["left"]}}
    nested = tmp_path / "nested.parquet"
    pd.DataFrame({"report": [{"text": "Effusion."}]}).to_parquet(nested)
    with pytest.raises(ValueError, match=r"nested.parquet' column 'report' row 0: expected a text or a list of texts, got dict"):
        read_reports(nested)
    ids = tmp_path / "ids.parquet"
    pd.DataFrame({"id": [["a", "b"]], "report": ["Effusion."]}).to_parquet(ids)
    with pytest.raises(ValueError, match=r"column 'id' row 0: expected a single value, got list"):
        read_reports(ids)


def test_report_size_limit(tmp_path):
    big = b"<eCitation><uId id='CXR9'/>" + b" " * 5000 + b"</eCitation>"
    write_iu_tgz(tmp_path / "r.tgz", [("1.xml", iu_xml(1, findings="Mild cardiomegaly.")), ("9.xml", big)])
    # before: every member was read whole, whatever its size
    with pytest.raises(ValueError, match=r"r.tgz': member 'ecgen-radiology/9.xml' has 5,039 bytes, "
                                         r"more than max_report_bytes \(4,096\)"):
        read_reports(tmp_path / "r.tgz", max_report_bytes=4096)
    assert len(read_reports(tmp_path / "r.tgz")) == 2  # the default limit is far above a report
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "s1.txt").write_text("x" * 5000)
    with pytest.raises(ValueError, match=r"s1.txt' is larger than max_report_bytes \(4,096 bytes\)"):
        read_reports(tmp_path / "t", max_report_bytes=4096)
    with pytest.raises(ValueError, match="max_report_bytes must be a positive int"):
        read_reports(tmp_path / "t", max_report_bytes=0)


def test_text_tree_keeps_universal_newlines(tmp_path):
    (tmp_path / "s1.txt").write_bytes(b"INDICATION: r/o pneumonia\r\n\r\nThere is mild cardiomegaly.\r\n")
    r = read_reports(tmp_path)
    assert r.texts == ["INDICATION: r/o pneumonia\n\nThere is mild cardiomegaly.\n"]


def test_cli_extract_names_a_report_that_fails(tmp_path, monkeypatch):
    make_extraction_fail_on(monkeypatch, "boom")
    p = tmp_path / "r.csv"
    pd.DataFrame({"study_id": ["a", "b"], "report": ["Small left pleural effusion.", "boom effusion"]}).to_csv(p, index=False)
    with pytest.warns(UserWarning, match=r"report 'b': extraction failed \(RuntimeError: kaboom\)"):
        assert main(["extract", str(p), "-o", str(tmp_path / "e.jsonl"), "--no-progress"]) == 0
    records, ids = read_records(tmp_path / "e.jsonl")
    assert ids == ["a", "b"] and records[1] == {} and "pleural effusion" in records[0]


_READ_BACK = """
import pyarrow as pa
pa.set_cpu_count(16); pa.set_io_thread_count(16)  # many Arrow threads, as on a large machine
from medtrim_ext.utils.io import read_parquet_columns
cols = read_parquet_columns({path!r})
assert len(cols["study_id"]) == 5000 and cols["study_id"][4999] == "s4999", len(cols["study_id"])
print("ok")
"""


def test_extract_parquet_read_back_in_fresh_processes(tmp_path):
    """pandas.read_parquet of such a file aborted at interpreter exit ("terminate called without
    an active exception", status 134) in 3 to 10 of 20 processes that import torch with 16 Arrow
    threads (1 of 20 with the default 2 of this test machine); read_parquet_columns reads by path
    on the calling thread."""
    import subprocess
    import sys

    from medtrim_ext.extraction import EntityExtractor, Reports
    from medtrim_ext.extraction.output import write_entities

    ex = EntityExtractor()
    texts = ["Small left pleural effusion. No pneumothorax.", "Mild cardiomegaly.", "No acute disease.",
             "Right lower lobe opacity may represent pneumonia.", "Moderate pulmonary edema."]
    records = ex.extract(texts) * 1000
    reports = Reports(ids=[f"s{i}" for i in range(5000)], texts=texts * 1000, source="t", kind="table",
                      meta=[{"subject_id": f"p{i // 3}"} for i in range(5000)])
    out = tmp_path / "entities.parquet"
    write_entities(out, reports, records, ex.ontology.classes)
    cols = read_parquet_columns(out)
    assert [json.loads(e) for e in cols["entities"][:5]] == records[:5]
    # one after the other: run side by side on few cores, the old read path hardly ever aborted
    runs = [subprocess.run([sys.executable, "-c", _READ_BACK.format(path=str(out))], capture_output=True,
                           text=True, timeout=300, cwd=tmp_path) for _ in range(10)]
    assert [r.returncode for r in runs] == [0] * 10, [r.stderr[-300:] for r in runs if r.returncode]
    assert all(r.stdout.strip() == "ok" for r in runs)
    with pytest.raises(ValueError, match=r"cannot read Parquet file '.*nope.parquet'"):
        read_parquet_columns(tmp_path / "nope.parquet")


# -- text that readers lost silently ---------------------------------------------------------------
def test_nul_in_a_csv_cell_keeps_the_report(tmp_path):
    p = tmp_path / "r.csv"
    p.write_bytes(b'study_id,report\na,"Small left\x00 pleural effusion."\nb,Mild cardiomegaly.\n')
    r = read_reports(p)  # before: the cell ended at the NUL ("Small left")
    assert r.ids == ["a", "b"]
    assert r.texts == ["Small left  pleural effusion.", "Mild cardiomegaly."]


@pytest.mark.parametrize("row", [b"b,Mild cardiomegaly.,extra", b"b"])
def test_ragged_csv_row_names_the_file_and_line(tmp_path, row):
    p = tmp_path / "r.csv"
    p.write_bytes(b'study_id,report\na,"Small\nleft pleural effusion."\n' + row + b"\nc,Normal.\n")
    # before: the columns shifted (ids became texts) or the missing cell read as ""
    with pytest.raises(ValueError, match=r"r.csv' line 4: 3 cells|r.csv' line 4: 1 cell"):
        read_reports(p)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-8-sig"])
def test_unicode_reports_with_a_byte_order_mark(tmp_path, encoding):
    text = "FINDINGS: Small left pleural effusion. Size 2\u00d73 cm."
    bom = {"utf-16-be": "\ufeff"}.get(encoding, "")
    (tmp_path / "s1.txt").write_bytes((bom + text).encode(encoding))
    assert read_reports(tmp_path / "s1.txt").texts == [text]  # before: UTF-8 mojibake
    (tmp_path / "r.csv").write_bytes((bom + "id,report\ns1," + text + "\n").encode(encoding))
    assert read_reports(tmp_path / "r.csv").texts == [text]


def test_utf16_report_that_does_not_decode_names_the_file(tmp_path):
    (tmp_path / "s1.txt").write_bytes(b"\xff\xfeF\x00\x00\xd8")  # a BOM, then a lone surrogate
    with pytest.raises(ValueError, match=r"s1.txt' starts with a utf-16 byte-order mark but"):
        read_reports(tmp_path / "s1.txt")


def test_mostly_binary_report_is_named_in_a_warning(tmp_path):
    (tmp_path / "s1.txt").write_text("FINDINGS: Small left pleural effusion.")
    (tmp_path / "s2.txt").write_bytes(bytes(range(256)) * 4)
    with pytest.warns(UserWarning, match=r"1 report is mostly not text.*'s2'"):
        r = read_reports(tmp_path)
    assert r.ids == ["s1", "s2"]


def test_report_tree_skips_links_that_leave_it(tmp_path):
    import os
    import warnings

    tree, outside = tmp_path / "files", tmp_path / "secret"
    (tree / "p10").mkdir(parents=True)
    outside.mkdir()
    (outside / "pw.txt").write_text("root:x:0:0:root:/root:/bin/bash")
    (tree / "p10" / "s1.txt").write_text("FINDINGS: Mild cardiomegaly.")
    os.symlink(outside / "pw.txt", tree / "p10" / "pw.txt")
    os.symlink(outside, tree / "p11")  # a linked folder is not walked (rglob does not follow it)
    os.symlink(tree / "p10" / "s1.txt", tree / "s3.txt")  # a link inside the tree is read
    # before: /etc/passwd-like files were read as reports
    with pytest.warns(UserWarning, match=r"skipped 1 .*links that lead outside it.*p10/pw.txt"):
        r = read_reports(tree)
    assert sorted(r.ids) == ["s1", "s3"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sorted(read_reports(tree, follow_links=True).ids) == ["pw", "s1", "s3"]
    (tmp_path / "xml").mkdir()
    (tmp_path / "xml" / "1.xml").write_bytes(iu_xml(1, findings="Mild cardiomegaly."))
    (outside / "2.xml").write_bytes(iu_xml(2, findings="Mild cardiomegaly."))
    os.symlink(outside / "2.xml", tmp_path / "xml" / "2.xml")
    with pytest.warns(UserWarning, match=r"2.xml"):
        assert read_reports(tmp_path / "xml").ids == ["CXR1"]
    with pytest.raises(ValueError, match="follow_links must be a bool"):
        read_reports(tree, follow_links="yes")
    out = tmp_path / "e.jsonl"
    with pytest.warns(UserWarning, match="pw.txt"):
        assert main(["extract", str(tree), "-o", str(out), "--no-progress"]) == 0
    assert sorted(r["id"] for r in map(json.loads, out.read_text().splitlines())) == ["s1", "s3"]
    assert main(["extract", str(tree), "-o", str(out), "--no-progress", "--follow-links"]) == 0
    assert len(out.read_text().splitlines()) == 3
