"""Vocabularies of meta-entities: disease classes, adjectives and directions, with synonyms.

A :class:`Vocabulary` fixes the column order of the masks in :class:`~medtrim_ext.MetaEntities`
and maps the names users write (``"effusion"``, ``"tiny"``, ``"left-sided"``) to canonical ones.
The packaged default comes from ``medtrim_ext/data/ontology.json``.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Mapping, Sequence

from ..utils.checks import read_json

NO_FINDING = "no finding"
MAX_DISEASES = 32  # the kernels keep one 32-bit disease mask per sample


def _normalize(name: str) -> str:
    return " ".join(name.strip().lower().split())


def _check_names(kind: str, names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise TypeError(f"{kind} must be a sequence of names, got {type(names).__name__}")
    out = []
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{kind}[{i}] must be a non-empty string, got {name!r}")
        out.append(_normalize(name))
    dupes = sorted(n for n, k in Counter(out).items() if k > 1)  # linear: vocabularies can be wide
    if dupes:
        raise ValueError(f"{kind} has duplicate entries: {dupes}")
    return tuple(out)


def _check_synonyms(kind: str, synonyms: Mapping[str, str], canonical: tuple[str, ...]) -> dict:
    if not isinstance(synonyms, Mapping):
        raise TypeError(f"{kind} must be a mapping of synonym -> canonical name")
    known = set(canonical)
    out = {}
    for syn, target in synonyms.items():
        if not isinstance(syn, str) or not isinstance(target, str) or not syn.strip():
            raise ValueError(f"{kind} entry {syn!r}: {target!r} must map a string to a string")
        target_n = _normalize(target)
        if target_n not in known:
            raise ValueError(f"{kind} entry {syn!r} maps to {target!r}, which is not in the vocabulary")
        syn_n = _normalize(syn)
        # A synonym spelled like another canonical name would silently move that class's records.
        if syn_n in known and syn_n != target_n:
            raise ValueError(
                f"{kind} entry {syn!r} maps to {target!r}, but {syn!r} is itself a canonical name "
                f"in the vocabulary; remove the synonym or the canonical name"
            )
        # Two spellings that normalise alike must not map to different names (the last would win).
        if syn_n in out and out[syn_n] != target_n:
            raise ValueError(
                f"{kind} entry {syn!r} maps to {target!r}, but the same synonym (normalised "
                f"{syn_n!r}) already maps to {out[syn_n]!r}"
            )
        out[syn_n] = target_n
    return out


@dataclass(frozen=True)
class Vocabulary:
    """Ordered disease classes, adjectives and directions, plus synonym maps.

    ``diseases`` excludes "no finding": an empty record means no finding. Equality compares the
    three ordered name lists only, which is what decides whether two entity sets can be scored
    against each other.
    """

    diseases: tuple[str, ...]
    adjectives: tuple[str, ...]
    directions: tuple[str, ...]
    disease_synonyms: Mapping[str, str] = field(default_factory=dict, compare=False)
    adjective_synonyms: Mapping[str, str] = field(default_factory=dict, compare=False)
    direction_synonyms: Mapping[str, str] = field(default_factory=dict, compare=False)
    name: str = field(default="custom", compare=False)
    version: str = field(default="", compare=False)

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "diseases", _check_names("diseases", self.diseases))
        set_(self, "adjectives", _check_names("adjectives", self.adjectives))
        set_(self, "directions", _check_names("directions", self.directions))
        if NO_FINDING in self.diseases:
            raise ValueError(f"diseases must not list {NO_FINDING!r}: an empty record means no finding")
        if not 1 <= len(self.diseases) <= MAX_DISEASES:
            raise ValueError(f"diseases must have between 1 and {MAX_DISEASES} classes, got {len(self.diseases)}")
        if not self.adjectives:
            raise ValueError("adjectives must not be empty")
        if not self.directions:
            raise ValueError("directions must not be empty")
        set_(self, "disease_synonyms", _check_synonyms("disease_synonyms", self.disease_synonyms, self.diseases))
        set_(self, "adjective_synonyms", _check_synonyms("adjective_synonyms", self.adjective_synonyms, self.adjectives))
        set_(self, "direction_synonyms", _check_synonyms("direction_synonyms", self.direction_synonyms, self.directions))
        set_(self, "_disease_index", {n: i for i, n in enumerate(self.diseases)})
        set_(self, "_adjective_index", {n: i for i, n in enumerate(self.adjectives)})
        set_(self, "_direction_index", {n: i for i, n in enumerate(self.directions)})

    # -- lookups -------------------------------------------------------------------------------
    def disease_index(self, name: str) -> int:
        """Column of a disease name or synonym; ``ValueError`` naming it if unknown."""
        return self._lookup("disease", name, self._disease_index, self.disease_synonyms)

    def adjective_index(self, name: str) -> int:
        return self._lookup("adjective", name, self._adjective_index, self.adjective_synonyms)

    def direction_index(self, name: str) -> int:
        return self._lookup("direction", name, self._direction_index, self.direction_synonyms)

    @staticmethod
    def _lookup(kind: str, name, index: dict, synonyms: Mapping[str, str]) -> int:
        if not isinstance(name, str):
            raise ValueError(f"{kind} names must be strings, got {name!r}")
        key = _normalize(name)
        key = synonyms.get(key, key)
        try:
            return index[key]
        except KeyError:
            raise ValueError(f"unknown {kind} {name!r}: not in the vocabulary or its synonyms") from None

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping, *, source: str = "<dict>") -> "Vocabulary":
        """Build from the ontology layout (keys ``diseases``, ``adjectives``, ``directions`` and
        optional ``*_synonyms``, ``name``, ``version``)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: an ontology must be a mapping, got {type(data).__name__}")
        missing = [k for k in ("diseases", "adjectives", "directions") if k not in data]
        if missing:
            raise ValueError(f"{source}: missing required keys {missing}")
        try:
            return cls(
                diseases=tuple(data["diseases"]),
                adjectives=tuple(data["adjectives"]),
                directions=tuple(data["directions"]),
                disease_synonyms=data.get("disease_synonyms", {}),
                adjective_synonyms=data.get("adjective_synonyms", {}),
                direction_synonyms=data.get("direction_synonyms", {}),
                name=str(data.get("name", "custom")),
                version=str(data.get("version", "")),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: {exc}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> "Vocabulary":
        """Load a JSON ontology file (see ``medtrim_ext/data/ontology.json`` for the layout)."""
        return cls.from_dict(read_json(path, "vocabulary file"), source=str(path))

    @classmethod
    def default(cls) -> "Vocabulary":
        """The packaged ontology's vocabulary (12 CheXpert-style classes)."""
        return _default_vocabulary()

    @property
    def sizes(self) -> tuple[int, int, int]:
        return len(self.diseases), len(self.adjectives), len(self.directions)


@functools.lru_cache(maxsize=1)
def _default_vocabulary() -> Vocabulary:
    text = resources.files("medtrim_ext").joinpath("data/ontology.json").read_text(encoding="utf-8")
    return Vocabulary.from_dict(json.loads(text), source="medtrim_ext/data/ontology.json")
