"""A Parquet cache of extracted meta-entities: spaCy runs once per report and ontology.

Each entry is keyed by the study id, the extraction ontology (name, version and a hash of its
full configuration, the vocabulary, and the extractor's uncertainty / section settings) and a
hash of the report text, so that an edited ontology or an edited report is extracted again
while everything else is read back.

A corrupt or foreign cache file raises ``ValueError`` naming it (delete it to rebuild): the
cache is never silently dropped or overwritten.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from pathlib import Path
from typing import Sequence

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
    rename); entries another process wrote to the file meanwhile are merged, not lost.
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
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self) -> dict:
        stamp = self._stamp()
        self._loaded_stamp = stamp
        if stamp is None:
            return {}
        import pandas as pd

        try:
            df = pd.read_parquet(self.path)
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...
            raise ValueError(f"entity cache {str(self.path)!r} is unreadable ({exc}); delete it to "
                             "rebuild the cache") from None
        missing = [c for c in COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"entity cache {str(self.path)!r} lacks columns {missing}; is it an "
                             "entity cache? Delete it to rebuild")
        cols = [df[c].astype(str).tolist() for c in COLUMNS]
        return {(s, o, h): r for s, o, h, r in zip(*cols)}

    def _write(self) -> None:
        import pandas as pd

        from ..io import atomic_write

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
            if extractor is None:
                from ..extraction.pipeline import EntityExtractor

                extractor = EntityExtractor()
            kwargs = {"progress": progress}
            if n_process != 1:
                kwargs["n_process"] = n_process
            found = extractor.extract(list(missing.values()), **kwargs)
            if len(found) != len(missing):
                raise RuntimeError(f"extractor returned {len(found)} records for {len(missing)} texts")
            for k, record in zip(missing, found):
                self._entries[k] = json.dumps(record, sort_keys=False)
            if self.path is not None:
                self._write()
        return [json.loads(self._entries[k]) for k in keys]
