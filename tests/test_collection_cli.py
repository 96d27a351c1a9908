"""`medtrim mine` (folded, --per-anchor K) and `medtrim neighbors` on whole collections, and their
CSV / Parquet outputs written in columns (issue 23, section 4)."""

from __future__ import annotations

import csv
import io
import json
import os
import random

import numpy as np
import pytest
import torch

from medtrim_ext import MetaEntities, TripletMiner
from medtrim_ext.apps.cli import main
from medtrim_ext.entities.synthetic import synthetic_records
from medtrim_ext.utils.io import escape_csv_cell, unescape_csv_cell

EVIL = '=HYPERLINK("http://x","y")'


def _collection(path, n=240, seed=3, evil=True):
    """A records file with heavy duplication (mostly resampled from 40 records) and two records per
    study for the first 40 studies (equal ids never pair); one id a spreadsheet would run."""
    base = synthetic_records(40, seed=seed)
    rng = random.Random(seed)
    # the last 10: records of their own (likely without an identical copy)
    records = [rng.choice(base) for _ in range(n - 10)] + synthetic_records(10, seed=seed + 100)
    ids = [f"s{i // 2}" if i < 80 else f"s{i}" for i in range(n)]
    if evil:
        ids[5] = EVIL
    path.write_text("".join(json.dumps({"id": i, "entities": r}) + "\n" for i, r in zip(ids, records)))
    return records, ids


def _keys(ids):
    """The integer ids `medtrim mine` gives the miner: equal given ids share one."""
    first = {}
    return torch.tensor([first.setdefault(i, len(first)) for i in ids])


def _direct_draw(miner, n, seed=0):
    return miner.draw(n, torch.Generator().manual_seed(seed))


def test_mine_k1_writes_what_the_direct_call_gives_byte_for_byte(tmp_path, capsys):
    records, ids = _collection(tmp_path / "r.jsonl")
    out = tmp_path / "t.csv"
    # --min-positive-score: some anchors get no triplet, and keep their row (ids empty)
    assert main(["mine", str(tmp_path / "r.jsonl"), "-o", str(out), "--device", "cpu", "--no-progress",
                 "--min-positive-score", "0.99"]) == 0
    text = capsys.readouterr().out
    # the CSV that the per-row loop wrote before, from a direct (unfolded) TripletMiner call
    ents, keys, miner = MetaEntities.from_records(records), _keys(ids), TripletMiner(min_positive_score=0.99)
    t = miner(ents, ents, anchor_ids=keys, candidate_ids=keys, draw=_direct_draw(miner, len(ents)))
    pos_s, neg_s = miner.triplet_scores(ents, t, ents)
    expected = io.StringIO(newline="")
    w = csv.writer(expected)
    w.writerow(["anchor_id", "positive_id", "negative_id", "positive_score", "negative_score"])
    for a, p, n, sp, sn in zip(t.anchor.tolist(), t.positive.tolist(), t.negative.tolist(),
                               pos_s.tolist(), neg_s.tolist()):
        w.writerow([escape_csv_cell(ids[a]), escape_csv_cell(ids[p]) if p >= 0 else "",
                    escape_csv_cell(ids[n]) if n >= 0 else "",
                    "" if p < 0 else f"{sp:.6f}", "" if n < 0 else f"{sn:.6f}"])
    assert out.read_bytes() == expected.getvalue().encode()
    assert (t.positive < 0).any()   # some anchors without a triplet: their rows are in it too
    # the summary: anchors without a triplet, the distinct share, the time of each stage
    assert f"{int(t.valid.sum())} of 240 anchors have a full triplet; {int((~t.valid).sum())} have none" in text
    distinct = len(MetaEntities.from_records(records).unique()[2])
    assert f"anchors: {distinct} distinct of 240 ({distinct / 240:.1%})" in text
    assert all(f"{stage} " in text for stage in ("read", "unique+mine", "write")), text


def test_mine_per_anchor_rows_are_mine_collection(tmp_path, capsys):
    records, ids = _collection(tmp_path / "r.jsonl")
    out = tmp_path / "t3.csv"
    assert main(["mine", str(tmp_path / "r.jsonl"), "-o", str(out), "--device", "cpu", "--no-progress",
                 "--per-anchor", "3", "--seed", "5"]) == 0
    text = capsys.readouterr().out
    ents, keys, miner = MetaEntities.from_records(records), _keys(ids), TripletMiner()
    got = miner.mine_collection(ents, anchor_ids=keys, per_anchor=3, draw=_direct_draw(miner, len(ents), 5))
    expected = []
    for a in range(len(ents)):
        slots = [i for i in range(3) if got.positive[a, i] >= 0] or [0]   # none: one empty row
        for i in slots:
            p, n = int(got.positive[a, i]), int(got.negative[a, i])
            expected.append([escape_csv_cell(ids[a]), str(i), escape_csv_cell(ids[p]) if p >= 0 else "",
                             escape_csv_cell(ids[n]) if n >= 0 else "",
                             f"{float(got.positive_score[a, i]):.6f}" if p >= 0 else "",
                             f"{float(got.negative_score[a, i]):.6f}" if n >= 0 else ""])
    rows = list(csv.reader(out.open(newline="")))
    assert rows[0] == ["anchor_id", "rank", "positive_id", "negative_id", "positive_score", "negative_score"]
    assert rows[1:] == expected
    assert len(expected) > 2 * len(ents)   # most anchors have 3 triplets
    # rank 0 holds the miner's positive (its negative may differ: with K=3 the negatives skip
    # all three positives)
    k1 = tmp_path / "t1.csv"
    assert main(["mine", str(tmp_path / "r.jsonl"), "-o", str(k1), "--device", "cpu", "--no-progress",
                 "--seed", "5"]) == 0
    one = list(csv.reader(k1.open(newline="")))[1:]
    assert [(r[0], r[2], r[4]) for r in rows[1:] if r[1] == "0"] == [(r[0], r[1], r[3]) for r in one]
    full_all = int(((got.positive >= 0) & (got.negative >= 0)).all(1).sum())
    assert f"{full_all} have 3 full triplets" in text


def test_neighbors_rows_are_miner_neighbors(tmp_path, capsys):
    records, ids = _collection(tmp_path / "r.jsonl")
    out = tmp_path / "n.csv"
    assert main(["neighbors", str(tmp_path / "r.jsonl"), "--k", "4", "-o", str(out), "--device", "cpu",
                 "--no-progress", "--seed", "2", "--w-dis", "0.7", "--w-adj", "0.2", "--w-dir", "0.1"]) == 0
    text = capsys.readouterr().out
    ents, keys = MetaEntities.from_records(records), _keys(ids)
    miner = TripletMiner(w_dis=0.7, w_adj=0.2, w_dir=0.1)
    got = miner.neighbors(ents, k=4, anchor_ids=keys, draw=_direct_draw(miner, len(ents), 2))
    rows = list(csv.DictReader(out.open(newline="")))
    expected = [(escape_csv_cell(ids[a]), str(r), escape_csv_cell(ids[int(got.index[a, r])]),
                 f"{float(got.score[a, r]):.6f}")
                for a in range(len(ents)) for r in range(4) if got.index[a, r] >= 0]
    assert [(x["anchor_id"], x["rank"], x["neighbor_id"], x["score"]) for x in rows] == expected
    assert len(rows) == 4 * len(ents)
    # self excluded by id: the two records of one study never list each other
    assert all(x["neighbor_id"] != x["anchor_id"] for x in rows)
    assert f"{len(ents)} of {len(ents)} studies have 4 neighbours; 0 have fewer" in text
    assert "studies: " in text and "unique+rank" in text
    # tie-break first: the lowest index among equal scores
    first = miner.__class__(w_dis=0.7, w_adj=0.2, w_dir=0.1, tie_break="first")
    assert main(["neighbors", str(tmp_path / "r.jsonl"), "--k", "2", "-o", str(out), "--device", "cpu",
                 "--no-progress", "--tie-break", "first", "--w-dis", "0.7", "--w-adj", "0.2",
                 "--w-dir", "0.1"]) == 0
    got = first.neighbors(ents, k=2, anchor_ids=keys, draw=_direct_draw(first, len(ents)))
    assert [x["neighbor_id"] for x in csv.DictReader(out.open(newline=""))] == [
        escape_csv_cell(ids[int(i)]) for i in got.index.reshape(-1)]


def test_neighbors_with_candidates_and_fewer_than_k(tmp_path, capsys):
    anchors = [{"edema": {}}, {"pneumothorax": {"dirs": ["left"]}}]
    cands = [{"edema": {"adjs": ["mild"]}}, {}, {"edema": {}}]
    (tmp_path / "a.json").write_text(json.dumps(anchors))
    (tmp_path / "c.json").write_text(json.dumps(cands))
    out = tmp_path / "n.csv"
    assert main(["neighbors", str(tmp_path / "a.json"), "--candidates", str(tmp_path / "c.json"),
                 "--k", "5", "-o", str(out), "--device", "cpu", "--no-progress"]) == 0
    rows = list(csv.DictReader(out.open(newline="")))
    # three candidates: every study gets 3 rows (no empty ones), the identical record first
    assert [(r["anchor_id"], r["rank"]) for r in rows] == [("#0", "0"), ("#0", "1"), ("#0", "2"),
                                                            ("#1", "0"), ("#1", "1"), ("#1", "2")]
    assert rows[0]["neighbor_id"] == "#2" and float(rows[0]["score"]) == 1.0
    assert "0 of 2 studies have 5 neighbours; 2 have fewer" in capsys.readouterr().out


def _read_back(path):
    """A mine/neighbors output read back with pyarrow as {column: python values}; CSV ids
    unescaped, so that both formats give the same table."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        return pq.read_table(path).to_pydict()
    header = path.read_text().splitlines()[0].split(",")
    types = {c: (pa.float32() if c.endswith("score") else pa.int64() if c == "rank" else pa.string())
             for c in header}
    table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
        column_types=types, strings_can_be_null=True)).to_pydict()
    return {c: [unescape_csv_cell(v) for v in vals] if types[c] == pa.string() else vals
            for c, vals in table.items()}


@pytest.mark.parametrize("command", [["mine", "--per-anchor", "1", "--min-positive-score", "0.99"],
                                     ["mine", "--per-anchor", "3"],
                                     ["neighbors", "--k", "3"]])
def test_parquet_and_csv_read_back_equal(tmp_path, capsys, command):
    pytest.importorskip("pyarrow")
    _, ids = _collection(tmp_path / "r.jsonl")
    tables = {}
    for name in ("o.csv", "o.parquet"):
        assert main([command[0], str(tmp_path / "r.jsonl"), *command[1:], "-o", str(tmp_path / name),
                     "--device", "cpu", "--no-progress"]) == 0
        tables[name] = _read_back(tmp_path / name)
    got, want = tables["o.csv"], tables["o.parquet"]
    assert list(got) == list(want)
    for column, values in want.items():
        if column.endswith("score"):   # CSV holds 6 decimals, Parquet the float32
            assert [v is None for v in got[column]] == [v is None for v in values], column
            assert np.allclose([v for v in got[column] if v is not None],
                               [v for v in values if v is not None], atol=5e-7, rtol=0), column
        else:
            assert got[column] == values, column
    assert EVIL in want["anchor_id"]   # Parquet is no spreadsheet: ids as given
    if "--min-positive-score" in command:
        assert None in want["negative_id"]   # an anchor without a triplet: null, empty in CSV
    import pyarrow.parquet as pq

    schema = pq.read_schema(tmp_path / "o.parquet")
    assert {str(schema.field(c).type) for c in schema.names if c.endswith("score")} == {"float"}


def test_csv_escapes_a_hyperlink_id_once_per_distinct_id(tmp_path, capsys):
    _collection(tmp_path / "r.jsonl")
    for command in (["mine", "--per-anchor", "2"], ["neighbors", "--k", "20"]):
        out = tmp_path / f"{command[0]}.csv"
        assert main([command[0], str(tmp_path / "r.jsonl"), *command[1:], "-o", str(out), "--device",
                     "cpu", "--no-progress"]) == 0
        text = out.read_text()
        cells = [c for row in csv.reader(io.StringIO(text, newline="")) for c in row]
        assert "'" + EVIL in cells and EVIL not in cells   # written with its leading quote
        assert not any(c.startswith(("=", "+", "@", "\t", "\r")) for c in cells)
        assert '"\'=HYPERLINK(""http://x"",""y"")"' in text   # quoted as csv.writer quotes it


def test_pyarrow_and_the_standard_library_write_the_same_csv(tmp_path):
    pytest.importorskip("pyarrow")
    from medtrim_ext.utils.tables import IdColumn, write_table

    texts = [EVIL, "a,b", 'q"q', "line\nbreak", "cr\rx", "+1", "-2", "@x", "\tx", "'q", " sp", "é", "plain"]
    rng = np.random.default_rng(0)
    n = 400
    scores = rng.random(n).astype(np.float32)
    index = rng.integers(-1, len(texts), n)
    scores[index < 0] = np.nan
    columns = {"anchor_id": IdColumn(texts, rng.integers(0, len(texts), n)), "rank": rng.integers(0, 4, n),
               "neighbor_id": IdColumn(texts, index), "score": scores}
    write_table(tmp_path / "arrow.csv", columns)
    write_table(tmp_path / "python.csv", columns, use_pyarrow=False)
    assert (tmp_path / "arrow.csv").read_bytes() == (tmp_path / "python.csv").read_bytes()
    rows = list(csv.reader((tmp_path / "arrow.csv").open(newline="")))
    assert [unescape_csv_cell(r[0]) for r in rows[1:]] == [texts[i] for i in columns["anchor_id"].index]
    assert [r[3] for r in rows[1:]] == ["" if np.isnan(s) else f"{float(s):.6f}" for s in scores]
    # pieces: the rows of several pieces join up
    import medtrim_ext.utils.tables as tables

    old, tables.ROWS_PER_PIECE = tables.ROWS_PER_PIECE, 7
    try:
        write_table(tmp_path / "pieces.csv", columns)
        write_table(tmp_path / "pieces.parquet", columns)
    finally:
        tables.ROWS_PER_PIECE = old
    assert (tmp_path / "pieces.csv").read_bytes() == (tmp_path / "arrow.csv").read_bytes()
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "pieces.parquet")["neighbor_id"].to_pylist() == [
        texts[i] if i >= 0 else None for i in index]


def test_outputs_are_checked_before_any_work(tmp_path, capsys):
    _collection(tmp_path / "r.jsonl")
    before = (tmp_path / "r.jsonl").read_bytes()
    for command in ("mine", "neighbors"):
        assert main([command, str(tmp_path / "r.jsonl"), "-o", str(tmp_path / "r.jsonl"), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert "is the same file as records" in err and "r.jsonl" in err, err
        assert (tmp_path / "r.jsonl").read_bytes() == before
        assert main([command, str(tmp_path / "r.jsonl"), "--candidates", str(tmp_path / "r.jsonl"),
                     "-o", str(tmp_path), "--device", "cpu"]) == 2
        assert "it is a folder" in capsys.readouterr().err
    # options: K >= 1, named by argparse; --chunk-size still accepted, with a warning
    for argv in (["mine", "x", "-o", "y", "--per-anchor", "0"], ["neighbors", "x", "-o", "y", "--k", "-1"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert ("--per-anchor" in err or "--k" in err) and "must be >= 1" in err
    assert main(["mine", str(tmp_path / "r.jsonl"), "-o", str(tmp_path / "t.csv"), "--device", "cpu",
                 "--chunk-size", "64", "--no-progress"]) == 0
    assert "--chunk-size is deprecated and ignored" in capsys.readouterr().err


def test_standard_output_holds_the_csv_alone(tmp_path, capfd):
    _collection(tmp_path / "r.jsonl")
    assert main(["neighbors", str(tmp_path / "r.jsonl"), "--k", "2", "-o", str(tmp_path / "n.csv"),
                 "--device", "cpu", "--no-progress"]) == 0
    capfd.readouterr()
    assert main(["neighbors", str(tmp_path / "r.jsonl"), "--k", "2", "-o", "-", "--device", "cpu",
                 "--no-progress"]) == 0
    out, err = capfd.readouterr()
    assert out.replace("\r\n", "\n") == (tmp_path / "n.csv").read_bytes().decode().replace("\r\n", "\n")
    assert "wrote standard output" in err and "studies have 2 neighbours" in err
    # a stream has no name to go by: CSV even where a Parquet name would be expected
    assert main(["mine", str(tmp_path / "r.jsonl"), "-o", "/dev/fd/1", "--device", "cpu",
                 "--no-progress"]) == 0
    assert capfd.readouterr().out.startswith("anchor_id,positive_id,")


def test_core_install_writes_csv_and_names_the_extra_for_parquet(tmp_path):
    import subprocess
    import sys

    from test_cli import _CORE_ONLY

    _collection(tmp_path / "r.jsonl", n=30)
    script = _CORE_ONLY + r'''
import json
print(json.dumps({"csv": run("neighbors", "r.jsonl", "--k", "3", "-o", "n.csv", "--device", "cpu"),
                  "mine3": run("mine", "r.jsonl", "--per-anchor", "3", "-o", "t.csv", "--device", "cpu"),
                  "parquet": run("neighbors", "r.jsonl", "-o", "n.parquet", "--device", "cpu"),
                  "mine_parquet": run("mine", "r.jsonl", "-o", "t.pq", "--device", "cpu")}))
'''
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout.splitlines()[-1])
    assert r["csv"]["code"] == 0 and r["mine3"]["code"] == 0, r
    # the standard library's CSV equals pyarrow's (this interpreter has pyarrow, the child had not)
    for name, argv in (("n.csv", ["neighbors", "--k", "3"]), ("t.csv", ["mine", "--per-anchor", "3"])):
        again = tmp_path / ("again-" + name)
        assert main([argv[0], str(tmp_path / "r.jsonl"), *argv[1:], "-o", str(again), "--device", "cpu",
                     "--no-progress"]) == 0
        assert again.read_bytes() == (tmp_path / name).read_bytes(), name
    for key, name in (("parquet", "n.parquet"), ("mine_parquet", "t.pq")):
        assert r[key]["code"] == 2 and 'pip install "medtrim_ext[extract]"' in r[key]["err"], r[key]
        assert "Traceback" not in r[key]["err"] and name in r[key]["err"]
        assert not (tmp_path / name).exists()


def _iu_archive():
    import importlib.util
    from pathlib import Path

    for module in ("spacy", "medspacy", "torchxrayvision"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} not installed")
    spec = importlib.util.find_spec("torchxrayvision")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "NLMCXR_reports.tgz"
    if not path.exists():
        pytest.skip("NLMCXR_reports.tgz not shipped")
    return path


def test_iu_reports_extract_mine_and_neighbors(tmp_path, capsys):
    """The README's `medtrim extract` of the IU reports, on 300 of them, then both commands."""
    import tarfile

    archive = _iu_archive()
    folder = tmp_path / "ecgen-radiology"
    folder.mkdir()
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".xml")][:300]
        for m in members:
            (folder / os.path.basename(m.name)).write_bytes(tar.extractfile(m).read())
    records = tmp_path / "entities.jsonl"
    assert main(["extract", str(folder), "-o", str(records), "--no-progress"]) == 0
    lines = [json.loads(x) for x in records.read_text().splitlines()]
    assert len(lines) == 300
    capsys.readouterr()
    assert main(["mine", str(records), "-o", str(tmp_path / "triplets.csv"), "--per-anchor", "2",
                 "--device", "cpu", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "anchors have a full triplet" in text and "distinct of 300" in text
    rows = list(csv.DictReader((tmp_path / "triplets.csv").open(newline="")))
    assert {r["anchor_id"] for r in rows} == {x["id"] for x in lines}   # every study has a row
    assert all(r["positive_id"] != r["anchor_id"] for r in rows)
    assert main(["neighbors", str(records), "--k", "5", "-o", str(tmp_path / "nn.parquet"),
                 "--device", "cpu", "--no-progress"]) == 0
    assert "300 of 300 studies have 5 neighbours" in capsys.readouterr().out
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "nn.parquet").to_pydict()
    assert len(table["anchor_id"]) == 1500 and table["rank"][:5] == [0, 1, 2, 3, 4]
    assert all(a != b for a, b in zip(table["anchor_id"], table["neighbor_id"]))
    # scores of one study's list fall with the rank
    scores = np.array(table["score"]).reshape(300, 5)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_records_are_built_once_per_distinct_record(tmp_path, capsys):
    from medtrim_ext.apps.cli import _entities

    records, _ = _collection(tmp_path / "r.jsonl")
    records = records + [dict(reversed(list(r.items()))) for r in records[:20]]   # other key order
    want = MetaEntities.from_records(records)
    got, share = _entities(records, torch.device("cpu"))
    for name in ("disease_bits", "adjective_bits", "direction_bits"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    u = len(want.unique()[2])   # the distinct share counts distinct rows, not distinct texts
    assert share == f"{u} distinct of {len(records)} ({u / len(records):.1%})"
    # a bad record among repeated ones is named by its own place in the file, not the distinct list's
    bad = [{"edema": {}}] * 5 + [{"not-a-disease": {}}] + [{"edema": {}}] * 3
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert main(["mine", str(tmp_path / "bad.json"), "-o", str(tmp_path / "o.csv"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "records[5]" in err and "unknown disease 'not-a-disease'" in err, err
    assert not (tmp_path / "o.csv").exists()


def test_records_files_parse_each_distinct_record_once_and_read_as_before(tmp_path):
    from medtrim_ext.utils import io as mio

    lines = [
        '{"id": "a", "entities": {"edema": {"adjs": ["mild"]}}}',
        '{"id": 7, "entities": {"edema": {"adjs": ["mild"]}}}',            # the same record: shared
        '{"study_id": "b", "entities": {}}',
        '{"id": "c", "entities": {"edema": {}}, "id": "d"}',                # a repeated key: the last wins
        '{"id": "e, \\"entities\\": x", "entities": {"edema": {}}}',        # the separator inside the id
        '{"entities": {"pneumothorax": {}}, "id": "f"}',                    # another order
        '{"id":"g","entities":{}}',                                          # no spaces
        '{"edema": {"dirs": ["left"]}}',                                     # a bare record
        '{"id": "h", "entities": {"edema": {}} }',                           # a space before the end
        '{"id": -0, "entities": {}}', '{"id": 1.5e3, "entities": {}}', '{"id": "\u00e9\\n", "entities": {}}',
    ]
    (tmp_path / "r.jsonl").write_text("\n".join(lines) + "\n")
    want = [json.loads(line) for line in lines]
    got = mio.load_records(tmp_path / "r.jsonl")
    assert got.records == [w.get("entities", w) for w in want]
    assert got.ids[:9] == ["a", "7", "b", "d", 'e, "entities": x', "f", "g", "#7", "h"]
    assert got.records[0] is got.records[1]   # parsed once
    parsed = {}
    for line, w in zip(lines, want):
        assert mio._json_line(line, parsed) == w, line
    for line, w in zip(lines, want):   # integers, escapes: json's values, types included
        assert repr(mio._json_line(line, {})) == repr(w), line
    # a damaged line is still named, with json's own message
    for bad, message in (('{"id": "a", "entities": {"edema": {}}', "bad.jsonl:2: not valid JSON"),
                         ('{"id": "a", "entities": {"edema": {}}}}', "bad.jsonl:2: not valid JSON"),
                         ('{"id": "a\x01b", "entities": {}}', "bad.jsonl:2: not valid JSON"),   # a raw control character
                         ('{"id": 01, "entities": {}}', "bad.jsonl:2: not valid JSON"),
                         ('{"id": "a", "entities": ' + "[" * 100000 + "}", "bad.jsonl:2: JSON nested too deeply")):
        (tmp_path / "bad.jsonl").write_text(lines[0] + "\n" + bad + "\n")
        with pytest.raises(ValueError, match=message):
            mio.load_records(tmp_path / "bad.jsonl")
    # Parquet: equal cells parsed once
    pd = pytest.importorskip("pandas")
    pd.DataFrame({"study_id": ["x", "y", "z"], "entities": ['{"edema": {}}', "{}", '{"edema": {}}']}).to_parquet(
        tmp_path / "e.parquet")
    got = mio.load_records(tmp_path / "e.parquet")
    assert got.records == [{"edema": {}}, {}, {"edema": {}}] and got.records[0] is got.records[2]


def test_empty_records_or_candidates_give_no_rows_not_a_traceback(tmp_path, capsys):
    (tmp_path / "none.json").write_text("[]")
    (tmp_path / "one.json").write_text(json.dumps([{"edema": {}}]))
    for records, candidates, mine_rows in (("none.json", None, 0), ("one.json", "none.json", 1),
                                           ("none.json", "one.json", 0)):
        extra = [] if candidates is None else ["--candidates", str(tmp_path / candidates)]
        assert main(["mine", str(tmp_path / records), *extra, "-o", str(tmp_path / "t.csv"),
                     "--device", "cpu", "--no-progress"]) == 0
        rows = list(csv.reader((tmp_path / "t.csv").open(newline="")))
        assert rows[0][0] == "anchor_id" and len(rows) == 1 + mine_rows   # an anchor keeps its row
        assert main(["neighbors", str(tmp_path / records), *extra, "-o", str(tmp_path / "n.csv"),
                     "--device", "cpu", "--no-progress"]) == 0
        assert (tmp_path / "n.csv").read_text() == "anchor_id,rank,neighbor_id,score\n"
    assert "0 distinct of 0 (0.0%)" in capsys.readouterr().out


def test_a_failed_write_is_named_and_leaves_nothing(tmp_path):
    """A write that fails half-way (here the file size limit: EFBIG, as a full disk gives ENOSPC)
    is one error line naming the output, for pyarrow's Parquet writer as for the CSV bytes."""
    import subprocess
    import sys

    pytest.importorskip("pyarrow")
    _collection(tmp_path / "r.jsonl", n=2000, evil=False)
    script = r'''
import json, resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # the write fails with EFBIG instead of a signal
from medtrim_ext.apps.cli import main
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
print(json.dumps([main(["neighbors", "r.jsonl", "--k", "5", "-o", name, "--device", "cpu", "--no-progress"])
                  for name in ("n.parquet", "n.csv")]))
'''
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert json.loads(done.stdout.splitlines()[-1]) == [2, 2], done.stderr
    for name in ("n.parquet", "n.csv"):
        assert f"error: cannot write '{name}': File too large; nothing was written" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl"]   # no temporary left
