"""A Parquet cache of extracted meta-entities: spaCy runs once per report and ontology.

Each entry is keyed by the study id, the extraction ontology (name, version and a hash of its
full configuration, the vocabulary, and the extractor's uncertainty / section settings) and a
hash of the report text, so that an edited ontology or an edited report is extracted again
while everything else is read back.

A corrupt or foreign cache file, or a corrupt entry in it, raises ``ValueError`` naming the file
(delete it to rebuild): the cache is never silently dropped or overwritten.

Several processes may share one cache file (e.g. data-loading jobs started together): each write
re-reads the file, merges its entries and replaces the file while holding an exclusive lock on
``<file>.lock`` (``fcntl.flock``; the lock file stays next to the cache), so no process loses
another's entries. Where ``fcntl`` is missing (Windows) writes are not locked.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
from pathlib import Path
from typing import Sequence

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; see the module docstring
    fcntl = None

COLUMNS = ("study_id", "ontology", "text_hash", "record")


def text_hash(text: str) -> str:
    """Short content hash of a report (sha256, 16 hex digits)."""
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()[:16]


def ontology_key(extractor=None) -> str:
    """The cache key part that names what the extractor outputs:
    ``"<name>@<version>#<config hash>"``.

    ``None`` means the default ``EntityExtractor()``; it is computed from the packaged ontology
    and the extractor's default arguments without building spaCy.
    """
    if extractor is None:
        from ..extraction.ontology import ExtractionOntology
        from ..extraction.pipeline import EntityExtractor

        params = inspect.signature(EntityExtractor.__init__).parameters
        onto = ExtractionOntology.default()
        uncertain, sections = params["uncertain"].default, params["sections"].default
    else:
        onto = getattr(extractor, "ontology", None)
        if onto is None or not hasattr(onto, "to_config"):
            raise TypeError("extractor must be an EntityExtractor (or have its .ontology, "
                            f".uncertain and .use_sections), got {type(extractor).__name__}")
        uncertain = getattr(extractor, "uncertain", None)
        sections = getattr(extractor, "use_sections", None)
    vocab = getattr(onto, "vocabulary", None)
    config = {
        "ontology": onto.to_config(),
        "vocabulary": None if vocab is None else [vocab.diseases, vocab.adjectives, vocab.directions],
        "uncertain": uncertain,
        "sections": sections,
    }
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{onto.name}@{onto.version}#{digest}"


class EntityCache:
    """Meta-entity records by (study id, ontology, report text), stored in a Parquet file.

    ``EntityCache(None)`` keeps the entries in memory only. Writes are atomic (temporary file +
    rename) and made under a file lock; entries another process wrote to the file meanwhile are
    merged, not lost.
    """

    def __init__(self, path=None):
        self.path = None if path is None else Path(path)
        self._entries: dict[tuple[str, str, str], str] = {}
        self._loaded_stamp = None
        if self.path is not None:
            if self.path.exists() and not self.path.is_file():
                raise ValueError(f"entity cache {str(self.path)!r} is not a file")
            self._entries = self._read()

    def __len__(self) -> int:
        return len(self._entries)

    def _stamp(self):
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except NotADirectoryError:   # a file where a folder above the cache should be
            raise ValueError(f"entity cache {str(self.path)!r}: a path above it is a file, not a "
                             "folder") from None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self) -> dict:
        stamp = self._stamp()
        self._loaded_stamp = stamp
        if stamp is None:
            return {}
        from ..utils.io import read_parquet_columns

        # not pandas.read_parquet: see read_parquet_columns (aborts at exit in torch processes)
        try:
            data = read_parquet_columns(self.path, what="entity cache")
        except ValueError as exc:
            raise ValueError(f"{exc}; delete it to rebuild the cache") from None
        missing = [c for c in COLUMNS if c not in data]
        if missing:
            raise ValueError(f"entity cache {str(self.path)!r} lacks columns {missing}; is it an "
                             "entity cache? Delete it to rebuild")
        cols = [data[c] for c in COLUMNS]
        for c, values in zip(COLUMNS, cols):
            bad = next((k for k, v in enumerate(values) if not isinstance(v, str)), None)
            if bad is not None:
                raise ValueError(f"entity cache {str(self.path)!r} row {bad}: {c!r} is "
                                 f"{type(values[bad]).__name__}, not text; delete the file to rebuild "
                                 "the cache")
        return {(s, o, h): r for s, o, h, r in zip(*cols)}

    @contextlib.contextmanager
    def _locked(self):
        """Hold an exclusive lock on ``<cache>.lock`` (a separate file: the cache itself is
        replaced by rename on every write, so a lock on it would not be shared)."""
        if fcntl is None:
            yield
            return
        lock = self.path.with_name(self.path.name + ".lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise ValueError(f"cannot create the lock file {str(lock)!r} of entity cache "
                             f"{str(self.path)!r}: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _write(self) -> None:
        import pandas as pd

        from ..utils.io import atomic_write

        with self._locked():
            if self._stamp() != self._loaded_stamp:
                # someone else wrote the file since we read it: keep their entries too
                theirs = self._read()
                theirs.update(self._entries)
                self._entries = theirs
            keys = list(self._entries)
            df = pd.DataFrame({
                "study_id": [k[0] for k in keys], "ontology": [k[1] for k in keys],
                "text_hash": [k[2] for k in keys], "record": [self._entries[k] for k in keys],
            })
            with atomic_write(self.path, "wb") as f:
                df.to_parquet(f, index=False)
            self._loaded_stamp = self._stamp()

    def _record(self, key) -> dict:
        """The entry's record, parsed; a corrupt one names the cache file and the study."""
        where = "entity cache (in memory)" if self.path is None else f"entity cache {str(self.path)!r}"
        try:
            record = json.loads(self._entries[key])
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: the record of study {key[0]!r} is not valid JSON ({exc}); "
                             "delete the file to rebuild the cache") from None
        if not isinstance(record, dict):
            raise ValueError(f"{where}: the record of study {key[0]!r} is a {type(record).__name__}, "
                             "not an object; delete the file to rebuild the cache")
        return record

    def records_for(self, study_ids: Sequence, texts: Sequence[str], extractor=None,
                    progress: bool = True, n_process: int = 1) -> list[dict]:
        """Records of the reports, in input order; only the missing ones are extracted.

        ``extractor``: an :class:`~medtrim_ext.extraction.EntityExtractor` (default: one is built,
        only when something is missing). New entries are written to the file before returning.
        """
        if isinstance(texts, str) or isinstance(study_ids, str):
            raise TypeError("study_ids and texts must be sequences, not single strings")
        study_ids, texts = list(study_ids), list(texts)
        if len(study_ids) != len(texts):
            raise ValueError(f"study_ids ({len(study_ids)}) and texts ({len(texts)}) differ in length")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
        onto = ontology_key(extractor)
        keys = [(str(s), onto, text_hash(t)) for s, t in zip(study_ids, texts)]
        missing: dict[tuple, str] = {}
        for k, t in zip(keys, texts):
            if k not in self._entries and k not in missing:
                missing[k] = t
        if missing:
            from ..extraction.pipeline import EntityExtractor

            if extractor is None:
                extractor = EntityExtractor()
            kwargs = {"progress": progress}
            if isinstance(extractor, EntityExtractor):  # its warnings then name the study
                kwargs["ids"] = [k[0] for k in missing]
            if n_process != 1:
                kwargs["n_process"] = n_process
            found = extractor.extract(list(missing.values()), **kwargs)
            if len(found) != len(missing):
                raise RuntimeError(f"extractor returned {len(found)} records for {len(missing)} texts")
            for k, record in zip(missing, found):
                self._entries[k] = json.dumps(record, sort_keys=False)
            if self.path is not None:
                self._write()
        return [self._record(k) for k in keys]
