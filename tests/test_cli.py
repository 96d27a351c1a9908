"""The medtrim command line, record files, atomic writes and the demo, end to end."""

import csv
import json

import pytest
import torch

from medtrim_ext import MetaEntities, TripletMiner
from medtrim_ext.cli import main
from medtrim_ext.io import atomic_write, read_records
from medtrim_ext.synthetic import synthetic_records


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write("half")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temporary left behind
    with atomic_write(path) as f:
        f.write("new")
    assert path.read_text() == "new"


def test_read_records_formats_and_errors(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{}, {"edema": {"adjs": ["mild"]}}]))
    assert read_records(tmp_path / "a.json") == ([{}, {"edema": {"adjs": ["mild"]}}], [0, 1])
    (tmp_path / "b.jsonl").write_text('{"id": "s1", "entities": {}}\n\n{"id": "s2", "entities": {"edema": {}}}\n')
    assert read_records(tmp_path / "b.jsonl") == ([{}, {"edema": {}}], ["s1", "s2"])
    (tmp_path / "bad.jsonl").write_text('{}\n{oops\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: not valid JSON"):
        read_records(tmp_path / "bad.jsonl")
    (tmp_path / "empty.json").write_text("  ")
    with pytest.raises(ValueError, match="is empty"):
        read_records(tmp_path / "empty.json")
    (tmp_path / "obj.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="expected a JSON list"):
        read_records(tmp_path / "obj.json")
    with pytest.raises(ValueError, match="cannot read records file"):
        read_records(tmp_path / "missing.json")


def test_cli_mine_end_to_end(tmp_path, capsys):
    records = synthetic_records(300, seed=3)
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"s{i // 2}", "entities": r}) for i, r in enumerate(records)))
    out = tmp_path / "triplets.csv"
    assert main(["mine", str(path), "-o", str(out), "--device", "cpu", "--chunk-size", "64"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 300
    # same ids (two records per study here) never pair, and the kernel agrees with a direct call
    ids = torch.tensor([i // 2 for i in range(300)])
    ents = MetaEntities.from_records(records)
    # one call with the command's seed: the chunks (64 rows) mine exactly as one call
    t = TripletMiner()(ents, ents, anchor_ids=ids, candidate_ids=ids,
                       generator=torch.Generator().manual_seed(0))
    for i, row in enumerate(rows):
        assert row["anchor_id"] == f"s{i // 2}"
        assert row["positive_id"] == f"s{t.positive[i].item() // 2}" and row["positive_id"] != row["anchor_id"]
        assert row["negative_id"] == (f"s{t.negative[i].item() // 2}" if t.negative[i] >= 0 else "")
    assert "anchors have a full triplet" in capsys.readouterr().out
    # random ties spread the choices; the lowest-index rule sends tied anchors to one study
    first = tmp_path / "first.csv"
    assert main(["mine", str(path), "-o", str(first), "--device", "cpu", "--tie-break", "first"]) == 0
    from collections import Counter

    busiest = Counter(r["positive_id"] for r in rows).most_common(1)[0][1]
    busiest_first = Counter(r["positive_id"] for r in csv.DictReader(first.open())).most_common(1)[0][1]
    assert busiest_first >= 4 * busiest, (busiest, busiest_first)


def test_cli_reports_bad_input(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps([{"not-a-disease": {}}]))
    assert main(["mine", str(path), "-o", str(tmp_path / "o.csv"), "--device", "cpu"]) == 2
    assert "unknown disease 'not-a-disease'" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()
    assert main(["mine", str(path), "-o", "x.csv", "--threshold", "0.9", "--device", "cpu"]) == 2
    assert "threshold <= upper" in capsys.readouterr().err


def test_cli_info(capsys):
    assert main(["info"]) == 0
    assert "cpu" in json.loads(capsys.readouterr().out)["backends"]


def test_demo_runs_and_writes_outputs(tmp_path, capsys):
    assert main(["mine-demo", "--n", "300", "--device", "cpu", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["checks"]["reference"]["identical"] is True
    assert summary["valid_triplets"] > 0
    assert (tmp_path / "scores.png").read_bytes()[:4] == b"\x89PNG"
    assert len((tmp_path / "triplets.csv").read_text().splitlines()) == 301
    assert "example triplets" in capsys.readouterr().out


def test_synthetic_records_are_seeded_and_valid():
    a, b = synthetic_records(200, seed=1), synthetic_records(200, seed=1)
    assert a == b and a != synthetic_records(200, seed=2)
    ents = MetaEntities.from_records(a)
    share_empty = (ents.disease_bits == 0).float().mean().item()
    assert 0.15 < share_empty < 0.5
    with pytest.raises(ValueError, match="n must be a non-negative int"):
        synthetic_records(-1)
