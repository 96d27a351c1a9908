"""One id rule for every reader (issue 24 item 6): generated ids never equal given ones, repeats
raise naming both places (or are one study where a format repeats legitimately), `1` is not
quietly `"1"` and `true` is refused, and `study_id` / `id` are accepted everywhere."""

import csv
import json

import pandas as pd
import pytest

from medtrim_ext.apps.cli import main
from medtrim_ext.extraction import read_reports
from medtrim_ext.utils.ids import id_text, resolve_ids
from medtrim_ext.utils.io import load_records
from test_extraction_io import iu_xml, write_iu_tgz

EDEMA = {"edema": {"adjs": ["mild"]}}
NODULE = {"lung lesion": {"dirs": ["left"]}}


# -- the rule itself -------------------------------------------------------------------------------
def test_generated_ids_never_equal_given_ones():
    ids, given = resolve_ids(["1", None, "#2", ""], ["a", "b", "c", "d"], "src")
    assert ids == ["1", "#1", "#2", "#3"] and given == [True, False, True, False]
    # a generated id that equals a given one moves aside, and so does the next in turn
    ids, _ = resolve_ids([None, "#0", "##0"], ["a", "b", "c"], "src")
    assert ids == ["###0", "#0", "##0"]


@pytest.mark.parametrize("value", [True, False, 1.5, [1], {"a": 1}, b"x"])
def test_ids_that_are_not_a_string_or_an_integer_are_refused(value):
    with pytest.raises(ValueError, match="an id must be a string or an integer"):
        id_text(value, "f.jsonl: line 1")


def test_id_values():
    assert id_text(7, "w") == "7" and id_text(7.0, "w") == "7" and id_text(" s1", "w") == " s1"
    assert id_text(float("nan"), "w") is None and id_text("  ", "w") is None and id_text(None, "w") is None


def test_repeats_name_both_places_and_tell_a_number_from_a_string():
    with pytest.raises(ValueError, match=r"'1' is given twice, at line 1 \(the number 1\) and at line 2 \('1'\)"):
        resolve_ids([1, "1"], ["line 1", "line 2"], "src")
    # where repeats are allowed (one study, several items) they must be written alike
    assert resolve_ids(["s1", "s1"], ["a", "b"], "src", allow_repeats=True)[0] == ["s1", "s1"]
    with pytest.raises(ValueError, match="written as the number 1 at a and as '1' at b"):
        resolve_ids([1, "1"], ["a", "b"], "src", allow_repeats=True)


# -- records files (`medtrim mine`) -----------------------------------------------------------------
def _jsonl(path, items):
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


def test_an_empty_id_no_longer_collides_with_a_given_one(tmp_path):
    # before: the empty id became the position 1, equal to the given "1": the two identical
    # studies never paired, and the output named two different studies "1"
    path = _jsonl(tmp_path / "r.jsonl", [{"id": "1", "entities": EDEMA}, {"id": "", "entities": EDEMA},
                                         {"id": "x", "entities": NODULE}])
    assert load_records(path).ids == ["1", "#1", "x"]
    out = tmp_path / "t.csv"
    assert main(["mine", str(path), "-o", str(out), "--device", "cpu", "--no-progress"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [(r["anchor_id"], r["positive_id"]) for r in rows[:2]] == [("1", "#1"), ("#1", "1")]
    assert all(float(r["positive_score"]) == 1.0 for r in rows[:2])


def test_jsonl_takes_study_id_as_well_as_id(tmp_path):
    # before: {"study_id": ...} was ignored and the record's id became its row number
    path = _jsonl(tmp_path / "r.jsonl", [{"study_id": "s7", "entities": EDEMA}, {"id": "s8", "entities": {}},
                                         {"study_id": "s9", "id": "s9", "entities": {}}])
    assert load_records(path).ids == ["s7", "s8", "s9"]
    _jsonl(tmp_path / "both.jsonl", [{"study_id": "s1", "id": "s2", "entities": {}}])
    with pytest.raises(ValueError, match=r"both.jsonl: line 1: 'study_id' 's1' and 'id' 's2' differ"):
        load_records(tmp_path / "both.jsonl")
    # an id beside a bare record would have been read as a disease called "study_id"
    _jsonl(tmp_path / "bare.jsonl", [{"study_id": "s1", **EDEMA}])
    with pytest.raises(ValueError, match="line 1 has an id \\(study_id\\) but no 'entities'"):
        load_records(tmp_path / "bare.jsonl")


def test_records_refuse_boolean_ids_and_mixed_spellings(tmp_path):
    # before: true became "True", and 1 and "1" silently one study
    _jsonl(tmp_path / "b.jsonl", [{"id": True, "entities": {}}, {"id": "True", "entities": {}}])
    with pytest.raises(ValueError, match="line 1: an id must be a string or an integer, got the boolean true"):
        load_records(tmp_path / "b.jsonl")
    _jsonl(tmp_path / "n.jsonl", [{"id": 1, "entities": {}}, {"id": "1", "entities": EDEMA}])
    with pytest.raises(ValueError, match="written as the number 1 at line 1 and as '1' at line 2"):
        load_records(tmp_path / "n.jsonl")
    # several records of one study, written alike, stay one study (documented: they never pair)
    _jsonl(tmp_path / "s.jsonl", [{"id": 1, "entities": {}}, {"id": 1, "entities": EDEMA}])
    assert load_records(tmp_path / "s.jsonl").ids == ["1", "1"]


def test_parquet_records_ids_follow_the_rule(tmp_path):
    p = tmp_path / "e.parquet"
    pd.DataFrame({"id": ["1", None, "x"], "entities": [json.dumps(EDEMA)] * 3}).to_parquet(p)
    assert load_records(p).ids == ["1", "#1", "x"]


# -- report readers (`medtrim extract`) -------------------------------------------------------------
def test_report_table_repeats_raise_naming_both_rows(tmp_path):
    p = tmp_path / "r.csv"
    pd.DataFrame({"study_id": ["s1", "s2", "s1"], "report": ["a", "b", "c"]}).to_csv(p, index=False)
    with pytest.raises(ValueError, match="study id 's1' is given twice, at row 0 .* and at row 2"):
        read_reports(p)
    # a manifest-style table may repeat a study (one row per image) when asked
    assert read_reports(p, allow_repeated_ids=True).ids == ["s1", "s2", "s1"]
    q = tmp_path / "gap.csv"
    pd.DataFrame({"study_id": ["1", ""], "report": ["a", "b"]}).to_csv(q, index=False)
    assert read_reports(q).ids == ["1", "#1"]   # before: "1", "1"


def test_report_parquet_boolean_ids_are_refused(tmp_path):
    p = tmp_path / "r.parquet"
    pd.DataFrame({"id": [True, False], "report": ["a", "b"]}).to_parquet(p)
    with pytest.raises(ValueError, match="row 0: an id must be a string or an integer, got the boolean true"):
        read_reports(p)
    q = tmp_path / "ints.parquet"
    pd.DataFrame({"id": [10, 11], "report": ["a", "b"]}).to_parquet(q)
    assert read_reports(q).ids == ["10", "11"]


def test_mimic_tree_repeats_raise_naming_both_files(tmp_path):
    for patient in ("p10/p10000001", "p11/p11000002"):
        (tmp_path / "files" / patient).mkdir(parents=True)
        (tmp_path / "files" / patient / "s1.txt").write_text("FINDINGS: edema.")
    with pytest.raises(ValueError, match=r"study id 's1' is given twice, at 'files/p10/p10000001/s1.txt'"
                                         r" .* and at 'files/p11/p11000002/s1.txt'"):
        read_reports(tmp_path)


def test_iu_archive_and_folder_repeats_raise_naming_both_members(tmp_path):
    write_iu_tgz(tmp_path / "iu.tgz", [("1.xml", iu_xml(1, findings="Edema.")),
                                       ("1-copy.xml", iu_xml(1, findings="Normal."))])
    with pytest.raises(ValueError, match=r"study id 'CXR1' is given twice, at '.*iu.tgz:ecgen-radiology/1-copy.xml'"
                                         r" .* and at '.*iu.tgz:ecgen-radiology/1.xml'"):
        read_reports(tmp_path / "iu.tgz")
    folder = tmp_path / "xml"
    folder.mkdir()
    (folder / "a.xml").write_bytes(iu_xml(3))
    (folder / "b.xml").write_bytes(iu_xml(3))
    with pytest.raises(ValueError, match="study id 'CXR3' is given twice"):
        read_reports(folder)


def test_extract_refuses_a_table_with_repeated_ids_before_extracting(tmp_path, capsys):
    p = tmp_path / "r.csv"
    pd.DataFrame({"id": ["a", "a"], "report": ["FINDINGS: edema.", "FINDINGS: normal."]}).to_csv(p, index=False)
    assert main(["extract", str(p), "-o", str(tmp_path / "e.jsonl"), "--no-progress"]) == 2
    assert "study id 'a' is given twice, at row 0" in capsys.readouterr().err
    assert not (tmp_path / "e.jsonl").exists()


# -- manifests and their ground truth ---------------------------------------------------------------
def test_manifest_ids_follow_the_rule(tmp_path):
    from medtrim_ext.datasets.manifest import index_manifest, read_ground_truth

    rows = [["a.png", "FINDINGS: edema.", "s1"], ["b.png", "FINDINGS: edema.", "s1"],   # two images
            ["c.png", "normal", ""], ["d.png", "normal", "#2"]]
    with open(tmp_path / "m.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image_path", "report", "study_id"], *rows])
    for name in "abcd":
        (tmp_path / f"{name}.png").write_bytes(b"")
    index = index_manifest(tmp_path / "m.csv", None)
    # before: the empty id was "", so every study without an id shared one id (and one split)
    assert index.study_ids == ["s1", "s1", "##2", "#2"]
    truth = tmp_path / "attributes.jsonl"
    _jsonl(truth, [{"id": "s1", "attributes": {}, "records": {}},
                   {"study_id": "x", "attributes": {}, "records": {}}])
    assert read_ground_truth(truth, tmp_path / "m.csv", ["s1", "x"]) == ([{}, {}], [{}, {}])
    _jsonl(truth, [{"study_id": "s1", "attributes": {"a": 1}, "records": {}},
                   {"study_id": "s1", "attributes": {"a": 2}, "records": {}}])
    with pytest.raises(ValueError, match="study id 's1' is given twice, at line 1 and at line 2"):
        read_ground_truth(truth, tmp_path / "m.csv", ["s1"])
