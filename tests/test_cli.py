"""The medtrim command line, record files, atomic writes and the demo, end to end."""

import csv
import json
import os

import pytest
import torch

from medtrim_ext import MetaEntities, TripletMiner
from medtrim_ext.apps.cli import main
from medtrim_ext.utils.io import atomic_write, read_records
from medtrim_ext.entities.synthetic import synthetic_records


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
    assert read_records(tmp_path / "a.json") == ([{}, {"edema": {"adjs": ["mild"]}}], ["#0", "#1"])
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


def _write_extract_parquet(path, ids, records):
    """A Parquet file exactly as `medtrim extract` writes it."""
    from medtrim_ext.extraction.output import write_entities
    from medtrim_ext.extraction.readers import Reports
    from medtrim_ext.entities.vocabulary import Vocabulary

    reports = Reports(list(ids), ["report"] * len(ids), "test", "csv", [{} for _ in ids])
    write_entities(path, reports, records, Vocabulary.default().diseases)


def test_mine_reads_what_extract_writes(tmp_path, capsys):
    # `medtrim mine entities.parquet` failed with a UTF-8 decode error that named no file
    records = synthetic_records(40, seed=5)
    ids = [f"s{i}" for i in range(40)]
    _write_extract_parquet(tmp_path / "entities.parquet", ids, records)
    assert read_records(tmp_path / "entities.parquet") == (records, ids)
    out_pq = tmp_path / "from_parquet.csv"
    assert main(["mine", str(tmp_path / "entities.parquet"), "-o", str(out_pq), "--device", "cpu"]) == 0
    # the same records as JSON lines give the same triplets
    (tmp_path / "entities.jsonl").write_text(
        "".join(json.dumps({"id": i, "entities": r}) + "\n" for i, r in zip(ids, records)))
    out_jl = tmp_path / "from_jsonl.csv"
    assert main(["mine", str(tmp_path / "entities.jsonl"), "-o", str(out_jl), "--device", "cpu"]) == 0
    assert out_pq.read_text() == out_jl.read_text()
    # Parquet content under another name is recognised by its magic bytes
    (tmp_path / "entities.bin").write_bytes((tmp_path / "entities.parquet").read_bytes())
    assert read_records(tmp_path / "entities.bin") == (records, ids)


def test_records_files_that_cannot_be_read_name_the_file(tmp_path, capsys):
    pd = pytest.importorskip("pandas")
    cases = {
        "binary.dat": (b"\x00\xff\xfe garbage", "binary.dat' is neither UTF-8 text"),
        "notes.txt": (b"pleural effusion", "notes.txt': unknown format"),
        "broken.parquet": (b"PAR1 not really parquet", "cannot read records file .*broken.parquet'"),
    }
    for name, (data, match) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=match):
            read_records(tmp_path / name)
    pd.DataFrame({"study_id": ["a"], "text": ["x"]}).to_parquet(tmp_path / "reports.parquet")
    with pytest.raises(ValueError, match="reports.parquet' has no 'entities' column"):
        read_records(tmp_path / "reports.parquet")
    pd.DataFrame({"study_id": ["a", "b"], "entities": ["{}", "{oops"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad.parquet: row 1: 'entities' is not valid JSON"):
        read_records(tmp_path / "bad.parquet")
    # through the command: exit code 2 and the file's name, no traceback
    assert main(["mine", str(tmp_path / "binary.dat"), "-o", str(tmp_path / "o.csv"), "--device", "cpu"]) == 2
    assert "binary.dat" in capsys.readouterr().err and not (tmp_path / "o.csv").exists()


def test_mine_candidates_file_is_its_own_id_space(tmp_path, capsys):
    # Bare records got their position as id in both files, so anchor k and candidate k never
    # paired: a candidate identical to the anchor was skipped for a worse one.
    anchors = [{"edema": {"adjs": ["mild"]}}, {"pneumothorax": {"dirs": ["left"]}}, {}]
    cands = [{"edema": {"adjs": ["mild"]}}, {"pneumothorax": {"dirs": ["left"]}}, {},
             {"edema": {}}, {"pneumothorax": {}}, {"cardiomegaly": {}}]
    (tmp_path / "a.json").write_text(json.dumps(anchors))
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in cands))
    out = tmp_path / "t.csv"
    assert main(["mine", str(tmp_path / "a.json"), "--candidates", str(tmp_path / "c.jsonl"),
                 "-o", str(out), "--device", "cpu"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["positive_id"] for r in rows] == ["#0", "#1", "#2"]  # each anchor's identical copy
    assert all(float(r["positive_score"]) == 1.0 for r in rows[:2])
    # given ids are one space across the files: the same study never pairs with itself
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"id": f"s{k}", "entities": r}) + "\n"
                                             for k, r in enumerate(anchors)))
    (tmp_path / "c2.jsonl").write_text("".join(json.dumps({"id": f"s{k}", "entities": r}) + "\n"
                                              for k, r in enumerate(cands)))
    assert main(["mine", str(tmp_path / "a.jsonl"), "--candidates", str(tmp_path / "c2.jsonl"),
                 "-o", str(out), "--device", "cpu"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["positive_id"] for r in rows[:2]] == ["s3", "s4"]
    assert rows[2]["positive_id"] != "s2" and float(rows[2]["positive_score"]) == 0
    # a given id never collides with another file's positions
    (tmp_path / "a3.jsonl").write_text("".join(json.dumps({"id": k, "entities": r}) + "\n"
                                              for k, r in enumerate(anchors)))
    assert main(["mine", str(tmp_path / "a3.jsonl"), "--candidates", str(tmp_path / "c.jsonl"),
                 "-o", str(out), "--device", "cpu"]) == 0
    assert [r["positive_id"] for r in csv.DictReader(out.open())] == ["#0", "#1", "#2"]
    # the same file as --candidates is self-mining: a record never pairs with itself
    assert main(["mine", str(tmp_path / "c.jsonl"), "--candidates", str(tmp_path / "c.jsonl"),
                 "-o", str(out), "--device", "cpu"]) == 0
    assert all(r["positive_id"] != r["anchor_id"] for r in csv.DictReader(out.open()))


def test_mine_counts_positives_that_share_no_disease(tmp_path, capsys):
    records = [{"edema": {}}, {"edema": {"adjs": ["mild"]}}, {"pneumothorax": {}}, {"cardiomegaly": {}}, {}]
    (tmp_path / "r.json").write_text(json.dumps(records))
    out = tmp_path / "t.csv"
    assert main(["mine", str(tmp_path / "r.json"), "-o", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    rows = list(csv.DictReader(out.open()))
    zero = sum(1 for r in rows if r["positive_score"] and float(r["positive_score"]) == 0)
    assert zero == 3  # pneumothorax, cardiomegaly and the no-finding report match no one
    assert f"3 got a positive that shares no disease with them (score 0) - --min-positive-score" in text
    assert main(["mine", str(tmp_path / "r.json"), "-o", str(out), "--device", "cpu",
                 "--min-positive-score", "0.1"]) == 0
    assert "0 got a positive that shares no disease with them (score 0);" in capsys.readouterr().out


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


# -- the command line's conventions: help, --version, train's flags, extract's columns, extras -----
def _subcommands():
    import argparse

    from medtrim_ext.apps.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices


def test_every_option_has_help_and_shows_its_default():
    from medtrim_ext.mining import MINER_DEFAULTS

    parser, commands = _subcommands()
    assert set(commands) == {"info", "demo", "train", "evaluate", "mine-demo", "mine", "neighbors",
                             "extract"}
    for name, p in commands.items():
        text = " ".join(p.format_help().split())   # wrapped lines joined
        assert p.description and p.description.split(".")[0] in text, name
        for action in p._actions:
            if not action.option_strings or action.dest == "help":
                continue
            where = f"{name} {action.option_strings[-1]}"
            assert action.help, f"{where} has no help text"
            if action.required or action.default is False:   # required options and flags
                continue
            if action.default is None:   # unset unless given: the help says what happens then
                assert "default" in action.help, where
                continue
            value = (" ".join(map(str, action.default)) if isinstance(action.default, list)
                     else str(action.default))
            assert f"(default: {value})" in text, (where, value)
    mine = " ".join(commands["mine"].format_help().split())
    for option, value in (("--w-dis", MINER_DEFAULTS.w_dis), ("--threshold", MINER_DEFAULTS.threshold),
                          ("--upper", MINER_DEFAULTS.upper), ("--tie-break", MINER_DEFAULTS.tie_break)):
        after = mine.split(option + " ")[-1]     # the option's own help, not the usage line
        assert f"(default: {value})" in after.split(" --")[0], option
    demo = " ".join(commands["demo"].format_help().split())
    assert "(default: 0 1 2)" in demo and "(default: infonce medtrim+soft_infonce;" in demo
    assert "for the IU phantoms: infonce " in demo and "(default: phantoms)" in demo
    assert "(default: 4096)" in " ".join(commands["mine-demo"].format_help().split())


def test_version_prints_the_package_version(capsys):
    from importlib import metadata

    import medtrim_ext

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"medtrim {metadata.version('medtrim_ext')}\n"
    assert metadata.version("medtrim_ext") == medtrim_ext.__version__


def test_train_flags_set_the_run_folder_device_and_progress(tmp_path, capsys):
    pytest.importorskip("timm")
    from medtrim_ext.apps.cli import build_parser, parse_args
    from medtrim_ext.apps.train import preset_names, train_config
    from medtrim_ext.training.config import preset_names as config_presets
    from training_helpers import tiny_config_file

    assert preset_names() == config_presets()   # the parser's copy lists what the config reads
    config = tiny_config_file(tmp_path)
    # no flags: the config's values stand
    cfg = train_config(parse_args(build_parser(), ["train", "--config", str(config)]))
    assert (cfg.train.out_dir, cfg.train.device, cfg.train.progress) == (None, "cpu", False)
    # the flags win over overrides of the same keys; a path is taken as it is (not parsed as YAML)
    run = tmp_path / "run: 1"
    args = ["train", "--config", str(config), "train.progress=true", "train.device=cuda",
            "--out", str(run), "--device", "cpu", "--no-progress", "--no-eval", "train.steps=3"]
    cfg = train_config(parse_args(build_parser(), args))
    assert (cfg.train.out_dir, cfg.train.device, cfg.train.progress) == (str(run), "cpu", False)
    assert cfg.train.steps == 3
    # and the run honours them: on the CPU (cuda would fail here without a GPU), into --out, no bar
    assert main(args) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.split("wrote:")[0])
    assert summary["out_dir"] == str(run) and summary["device"] == "cpu" and summary["steps"] == 3
    assert (run / "last.pt").exists() and "train medtrim" not in captured.err
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["device"] == "cpu" and saved["train"]["progress"] is False


def test_extract_reads_a_named_text_column(tmp_path, capsys):
    pytest.importorskip("medspacy")
    table = tmp_path / "reports.csv"
    with table.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["accession", "radiology_report", "findings"])
        w.writerow(["a1", "FINDINGS: Small left pleural effusion.", "no finding here"])
        w.writerow(["a2", "IMPRESSION: Mild cardiomegaly. No pneumothorax.", ""])
    out = tmp_path / "entities.jsonl"
    # the default columns would read `findings`; the named one is read instead, ids from --id-column
    assert main(["extract", str(table), "-o", str(out), "--no-progress", "--text-column",
                 "radiology_report", "--id-column", "accession"]) == 0
    records, ids = read_records(out)
    assert ids == ["a1", "a2"]
    assert records[0] == {"pleural effusion": {"adjs": ["small"], "dirs": ["left"]}}
    assert set(records[1]) == {"cardiomegaly"}
    # a missing column: exit 2, the error names the column and lists those present
    capsys.readouterr()
    assert main(["extract", str(table), "-o", str(out), "--text-column", "report_text"]) == 2
    err = capsys.readouterr().err
    assert "no column 'report_text' (text_column)" in err
    assert "['accession', 'radiology_report', 'findings']" in err and "Traceback" not in err
    # not a table: the column cannot apply, said before anything is read
    (tmp_path / "one.txt").write_text("FINDINGS: edema.")
    assert main(["extract", str(tmp_path / "one.txt"), "-o", str(out), "--text-column", "x"]) == 2
    assert "text_column applies to CSV/Parquet tables only" in capsys.readouterr().err


# run in a fresh interpreter in which the optional extras' modules cannot be imported
_CORE_ONLY = r'''
import contextlib, importlib.abc, io, sys
OPTIONAL = {"spacy", "medspacy", "timm", "transformers", "tokenizers", "pandas", "pyarrow",
            "matplotlib", "sklearn", "tensorboard", "yaml", "tqdm", "PIL", "open_clip",
            "pytorch_metric_learning"}

class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in OPTIONAL:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Missing())
from medtrim_ext.apps.cli import main

def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code
    return {"code": code, "out": out.getvalue(), "err": err.getvalue()}
'''


def test_core_only_commands_work_and_the_others_name_their_extra(tmp_path):
    import subprocess
    import sys

    (tmp_path / "r.json").write_text(json.dumps([{"edema": {}}, {"edema": {"adjs": ["mild"]}}, {}]))
    (tmp_path / "r.csv").write_text("report\nedema\n")
    script = _CORE_ONLY + r'''
import json
import os
results = {
    "help": run("--help"), "version": run("--version"), "mine_help": run("mine", "--help"),
    "mine": run("mine", "r.json", "-o", "t.csv", "--device", "cpu"),
    "extract": run("extract", "r.csv", "-o", "e.jsonl", "--no-progress"),
    "train": run("train", "--no-eval"),
    "evaluate": run("evaluate", "--checkpoint", "x"),
}
print(json.dumps(results))
'''
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout.splitlines()[-1])
    assert r["help"]["code"] == 0 and "extract" in r["help"]["out"]
    assert r["version"]["code"] == 0 and r["version"]["out"].startswith("medtrim ")
    assert r["mine_help"]["code"] == 0 and "(default: 0.85)" in " ".join(r["mine_help"]["out"].split())
    assert r["mine"]["code"] == 0, r["mine"]["err"]
    assert len((tmp_path / "t.csv").read_text().splitlines()) == 4
    for command, extra in (("extract", "extract"), ("train", "train"), ("evaluate", "train")):
        assert r[command]["code"] == 2, (command, r[command])
        assert f'pip install "medtrim_ext[{extra}]"' in r[command]["err"], (command, r[command]["err"])
        assert "Traceback" not in r[command]["err"]


def test_only_a_missing_extra_is_turned_into_an_error_line():
    from medtrim_ext.apps.cli import missing_extra_message

    spacy = ModuleNotFoundError("No module named 'spacy'", name="spacy")
    assert missing_extra_message(spacy, "extract", "extract") == (
        "error: `medtrim extract` needs the [extract] extra (No module named 'spacy'): "
        'pip install "medtrim_ext[extract]"')
    # a command of the core, or a module of the package itself: a bug, which keeps its traceback
    assert missing_extra_message(spacy, "mine", None) is None
    own = ModuleNotFoundError("No module named 'medtrim_ext.nope'", name="medtrim_ext.nope")
    assert missing_extra_message(own, "extract", "extract") is None
    assert missing_extra_message(ImportError("cannot import name 'x' from 'tqdm'", name="tqdm"),
                                 "train", "train") is None
    # the package's own error already names the extra: printed as it is
    named = ImportError('EntityExtractor needs spaCy: pip install "medtrim_ext[extract]"')
    assert missing_extra_message(named, "mine", None) == f"error: {named}"


# --- issue 24: outputs through links and to standard output, inputs never overwritten, safe CSV


def _records_file(path, n=20, ids=None):
    records = synthetic_records(n, seed=1)
    ids = ids if ids is not None else [f"s{i}" for i in range(n)]
    path.write_text("".join(json.dumps({"id": i, "entities": r}) + "\n" for i, r in zip(ids, records)))
    return path


def test_mine_writes_through_a_link_and_to_standard_output(tmp_path, capfd):
    records = _records_file(tmp_path / "r.jsonl")
    target = tmp_path / "target.csv"
    target.write_text("old")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    assert main(["mine", str(records), "-o", str(link), "--device", "cpu", "--no-progress"]) == 0
    assert link.is_symlink() and target.read_text().startswith("anchor_id,")   # before: "old"
    capfd.readouterr()
    # "-": the CSV alone on standard output, the summary on standard error
    assert main(["mine", str(records), "-o", "-", "--device", "cpu", "--no-progress"]) == 0
    out, err = capfd.readouterr()
    assert out.replace("\r\n", "\n") == target.read_text().replace("\r\n", "\n")
    assert "anchors have a full triplet" in err and "wrote standard output" in err
    assert not (tmp_path / "-").exists() and not os.path.exists("-")
    # /dev/fd/1 (what /dev/stdout links to): the same, and the link is left alone
    assert main(["mine", str(records), "-o", "/dev/fd/1", "--device", "cpu", "--no-progress"]) == 0
    out, err = capfd.readouterr()
    assert out.replace("\r\n", "\n") == target.read_text().replace("\r\n", "\n")
    assert "anchors have a full triplet" in err and os.path.islink("/dev/fd")
    # a folder as the output: refused by name before any work
    assert main(["mine", str(records), "-o", str(tmp_path), "--device", "cpu"]) == 2
    assert "it is a folder" in capfd.readouterr().err


def test_an_output_that_is_an_input_is_refused_before_any_work(tmp_path, capsys):
    records = _records_file(tmp_path / "same.jsonl")
    before = records.read_bytes()
    link = tmp_path / "alias.jsonl"
    link.symlink_to(records)
    hard = tmp_path / "hard.jsonl"
    os.link(records, hard)
    other = _records_file(tmp_path / "other.jsonl")
    for argv, names in [
        (["mine", str(records), "-o", str(records)], ("same.jsonl", "records")),
        (["mine", str(records), "-o", str(link)], ("alias.jsonl", "same.jsonl")),
        (["mine", str(records), "-o", str(hard)], ("hard.jsonl", "same.jsonl")),
        (["mine", str(other), "--candidates", str(records), "-o", str(link)], ("alias.jsonl", "--candidates")),
    ]:
        assert main(argv + ["--device", "cpu"]) == 2, argv
        err = capsys.readouterr().err
        assert "is the same file as" in err and all(n in err for n in names), err
        assert records.read_bytes() == before   # before: replaced by the triplets CSV
    # extract: the reports table as its own output, through a link named like an output (checked
    # before spaCy loads)
    table = tmp_path / "reports.csv"
    table.write_text("id,report\na,FINDINGS: edema.\n")
    (tmp_path / "entities.jsonl").symlink_to(table)
    assert main(["extract", str(table), "-o", str(tmp_path / "entities.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "is the same file as reports" in err and "reports.csv" in err and "entities.jsonl" in err
    assert table.read_text() == "id,report\na,FINDINGS: edema.\n"


def test_mine_csv_escapes_cells_a_spreadsheet_would_run(tmp_path, capsys):
    evil = ["=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx", "'quoted", "plain"]
    records = _records_file(tmp_path / "r.jsonl", n=len(evil), ids=evil)
    out = tmp_path / "t.csv"
    assert main(["mine", str(records), "-o", str(out), "--device", "cpu", "--no-progress"]) == 0
    rows = list(csv.DictReader(out.open(newline="")))
    anchors = [r["anchor_id"] for r in rows]
    # before: written as they are, so a spreadsheet ran =HYPERLINK(...)
    assert anchors == ["'" + e for e in evil[:7]] + ["plain"]
    for r in rows:
        for col in ("positive_id", "negative_id"):
            assert r[col] == "" or r[col][0] not in "=+-@\t\r"
        for col in ("positive_score", "negative_score"):   # numbers are never altered
            assert r[col] == "" or float(r[col]) == float(r[col])


def test_extract_to_standard_output_writes_json_lines(tmp_path, capfd):
    pytest.importorskip("medspacy")
    table = tmp_path / "reports.csv"
    table.write_text("id,report\na1,FINDINGS: Small left pleural effusion.\na2,FINDINGS: Normal.\n")
    # before: "-" was refused as a name without .parquet/.jsonl/.json
    assert main(["extract", str(table), "-o", "-", "--no-progress"]) == 0
    out, err = capfd.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]   # JSON lines alone on stdout
    assert [x["id"] for x in lines] == ["a1", "a2"]
    assert lines[0]["entities"] == {"pleural effusion": {"adjs": ["small"], "dirs": ["left"]}}
    assert "wrote standard output" in err and "reports" in err
    assert not (tmp_path / "-").exists()
