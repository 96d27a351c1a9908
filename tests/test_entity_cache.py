"""EntityCache: extraction runs once per (study, ontology, report text); the file is atomic,
merged between writers, and a corrupt one is reported by name."""

from __future__ import annotations

import pytest

from medtrim_ext.datasets import EntityCache
from medtrim_ext.datasets.entity_cache import ontology_key, text_hash

TEXTS = ["FINDINGS: Small left pleural effusion.", "IMPRESSION: No acute process.",
         "Moderate cardiomegaly. No pneumothorax.", ""]
IDS = ["s1", "s2", "s3", "s4"]


@pytest.fixture(scope="module")
def real():
    from medtrim_ext.extraction import EntityExtractor

    return EntityExtractor()


class Counting:
    """Wraps an extractor and counts the texts it is asked to extract."""

    def __init__(self, inner):
        self.inner, self.calls, self.texts = inner, 0, []
        self.ontology, self.uncertain, self.use_sections = inner.ontology, inner.uncertain, inner.use_sections

    def extract(self, texts, **kwargs):
        self.calls += 1
        self.texts += list(texts)
        return self.inner.extract(texts, **kwargs)


def test_extracts_once(tmp_path, real):
    path = tmp_path / "cache" / "entities.parquet"
    ex = Counting(real)
    first = EntityCache(path).records_for(IDS, TEXTS, extractor=ex, progress=False)
    assert first == real.extract(TEXTS)
    assert ex.calls == 1 and len(ex.texts) == 4 and path.is_file()
    again = EntityCache(path).records_for(IDS, TEXTS, extractor=ex, progress=False)
    assert again == first and ex.calls == 1  # a new cache object reads the file: no spaCy
    # input order, duplicates, a subset
    sub = EntityCache(path).records_for(["s3", "s1", "s3"], [TEXTS[2], TEXTS[0], TEXTS[2]], extractor=ex)
    assert sub == [first[2], first[0], first[2]] and ex.calls == 1


def test_edited_report_and_new_ontology_are_extracted_again(tmp_path, real):
    from medtrim_ext.extraction import EntityExtractor

    path = tmp_path / "e.parquet"
    ex = Counting(real)
    cache = EntityCache(path)
    cache.records_for(IDS, TEXTS, extractor=ex, progress=False)
    edited = ["FINDINGS: Large left pleural effusion."] + TEXTS[1:]
    out = cache.records_for(IDS, edited, extractor=ex, progress=False)
    assert ex.texts[4:] == [edited[0]]
    assert out[0] == {"pleural effusion": {"adjs": ["large"], "dirs": ["left"]}}
    hedged = Counting(EntityExtractor(uncertain="positive"))
    assert ontology_key(hedged) != ontology_key(ex)
    cache.records_for(IDS[:1], edited[:1], extractor=hedged, progress=False)
    assert hedged.calls == 1
    assert len(EntityCache(path)) == 6


def test_default_key_matches_default_extractor(real):
    assert ontology_key(None) == ontology_key(real)
    assert ontology_key(None).startswith("medtrim-extraction@")
    with pytest.raises(TypeError):
        ontology_key(object())


def test_lazy_default_extractor_not_built_when_cached(tmp_path, real, monkeypatch):
    path = tmp_path / "e.parquet"
    EntityCache(path).records_for(IDS, TEXTS, extractor=real, progress=False)
    import medtrim_ext.extraction.pipeline as pipeline

    def boom(*a, **k):
        raise AssertionError("EntityExtractor built although every record is cached")

    monkeypatch.setattr(pipeline.EntityExtractor, "_build", boom)  # where spaCy is loaded
    assert EntityCache(path).records_for(IDS, TEXTS, progress=False) == real.extract(TEXTS)


def test_in_memory_and_merge(tmp_path, real):
    mem = EntityCache(None)
    assert mem.records_for(IDS[:2], TEXTS[:2], extractor=real) == real.extract(TEXTS[:2])
    assert len(mem) == 2 and mem.path is None
    path = tmp_path / "shared.parquet"
    a, b = EntityCache(path), EntityCache(path)
    a.records_for(IDS[:2], TEXTS[:2], extractor=real, progress=False)
    b.records_for(IDS[2:], TEXTS[2:], extractor=real, progress=False)  # b read the file before a wrote
    assert len(EntityCache(path)) == 4
    assert not list(tmp_path.glob(".*.tmp"))


def test_corrupt_or_foreign_file(tmp_path):
    bad = tmp_path / "entities.parquet"
    bad.write_bytes(b"definitely not parquet")
    with pytest.raises(ValueError, match="entities.parquet"):
        EntityCache(bad)
    import pandas as pd

    other = tmp_path / "other.parquet"
    pd.DataFrame({"a": [1]}).to_parquet(other)
    with pytest.raises(ValueError, match="lacks columns"):
        EntityCache(other)
    with pytest.raises(ValueError, match="not a file"):
        EntityCache(tmp_path)


def test_bad_arguments(real):
    cache = EntityCache(None)
    with pytest.raises(ValueError, match="length"):
        cache.records_for(["a"], ["x", "y"], extractor=real)
    with pytest.raises(TypeError):
        cache.records_for(["a"], [None], extractor=real)
    with pytest.raises(TypeError):
        cache.records_for("a", "x", extractor=real)
    assert cache.records_for([], [], extractor=real) == []
    assert text_hash("a") != text_hash("b") and len(text_hash("")) == 16


_WRITER = """
import sys, time
from pathlib import Path
from medtrim_ext.datasets import EntityCache
from medtrim_ext.extraction import ExtractionOntology


class Instant:  # an extractor without spaCy: every report has no finding
    ontology, uncertain, use_sections = ExtractionOntology.default(), "negative", True

    def extract(self, texts, **kwargs):
        return [{} for _ in texts]


path, name, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
(go.parent / f"ready-{name}").touch()
while not go.exists():
    time.sleep(0.005)
cache = EntityCache(path)
for rnd in range(15):
    ids = [f"{name}-{rnd}-{i}" for i in range(20)]
    cache.records_for(ids, ids, extractor=Instant(), progress=False)
print(len(cache))
"""


def test_two_processes_writing_one_cache_lose_nothing(tmp_path):
    """Before: the read-merge-write was not locked, and two processes kept ~80% of the entries."""
    import subprocess
    import sys

    path, go = tmp_path / "entities.parquet", tmp_path / "go"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    procs = [subprocess.Popen([sys.executable, str(script), str(path), name, str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    import time

    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{n}").exists() for n in "ab") and time.monotonic() < deadline:
        time.sleep(0.01)  # both imported (torch takes seconds): start them together
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-500:] for _, err in outs]
    cache = EntityCache(path)
    assert len(cache) == 2 * 15 * 20
    assert (tmp_path / "entities.parquet.lock").exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_corrupt_entries_name_the_file(tmp_path, real):
    import pandas as pd

    from medtrim_ext.utils.io import read_parquet_columns

    path = tmp_path / "entities.parquet"
    EntityCache(path).records_for(IDS, TEXTS, extractor=real, progress=False)
    df = pd.DataFrame(read_parquet_columns(path))
    df.loc[df["study_id"] == "s2", "record"] = '{"cardiomegaly": {"adjs": ['
    df.to_parquet(path, index=False)
    cache = EntityCache(path)
    assert cache.records_for(IDS[:1], TEXTS[:1], extractor=real) == real.extract(TEXTS[:1])
    # before: json.JSONDecodeError "Expecting value: line 1 column 28", no file, no study
    with pytest.raises(ValueError, match=r"entity cache '.*entities.parquet': the record of study 's2' is not valid JSON"):
        cache.records_for(IDS, TEXTS, extractor=real)
    df.loc[df["study_id"] == "s2", "record"] = "[1, 2]"
    df.to_parquet(path, index=False)
    with pytest.raises(ValueError, match=r"entities.parquet': the record of study 's2' is a list, not an object"):
        EntityCache(path).records_for(IDS, TEXTS, extractor=real)
    df.loc[df["study_id"] == "s2", "record"] = None
    df.to_parquet(path, index=False)
    with pytest.raises(ValueError, match=r"entity cache '.*entities.parquet' row \d: 'record' is NoneType, not text"):
        EntityCache(path)
