"""The extraction ontology: which report words name which disease, adjective and direction.

The packaged file is ``medtrim_ext/data/extraction.yaml`` (its comments document every section).
Users can pass their own YAML or JSON file with the same layout, or a dict. Loading validates the
whole file and raises ``ValueError`` naming the file and the bad entry, so a typo fails at load
time rather than silently matching nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Mapping

from ..entities.vocabulary import Vocabulary

CONTEXT_CATEGORIES = {
    # ontology key -> medspacy ConText category (these names drive medspacy's default span
    # attributes: is_negated, is_uncertain, is_historical, is_hypothetical, is_family)
    "negated": "NEGATED_EXISTENCE",
    "possible": "POSSIBLE_EXISTENCE",
    "historical": "HISTORICAL",
    "hypothetical": "HYPOTHETICAL",
    "family": "FAMILY",
}
_REQUIRED = ("diseases", "adjectives", "directions", "context", "sections", "clause_breaks")


def _norm(term: str) -> str:
    return " ".join(term.lower().split())


@dataclass(frozen=True)
class ExtractionOntology:
    """A validated extraction ontology. All terms are lowercased, whitespace-normalized.

    - ``disease_terms``: surface term -> disease class
    - ``not_findings``: terms that block the shorter disease terms inside them
    - ``conditional``: class -> (anatomy terms, qualifier terms) (see the YAML file)
    - ``normal_cues``: terms that veto a conditional mention in their clause
    - ``adjective_terms`` / ``direction_terms``: surface term -> canonical name
    - ``context_rules``: (phrase, ConText category, direction) triples
    - ``keep_sections`` / ``ignore_sections``: section header names
    - ``clause_breaks``: words that end a clause; ``deid_tokens``: placeholders of de-identified text
    """

    name: str
    version: str
    classes: tuple[str, ...]
    disease_terms: Mapping[str, str]
    not_findings: frozenset
    conditional: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]
    normal_cues: tuple[str, ...]
    adjective_terms: Mapping[str, str]
    direction_terms: Mapping[str, str]
    context_rules: tuple[tuple[str, str, str], ...]
    keep_sections: frozenset
    ignore_sections: frozenset
    clause_breaks: tuple[str, ...]
    deid_tokens: tuple[str, ...]
    source: str = "<dict>"

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def default(cls) -> "ExtractionOntology":
        """The packaged ontology (``medtrim_ext/data/extraction.yaml``)."""
        ref = resources.files("medtrim_ext") / "data" / "extraction.yaml"
        return cls.from_text(ref.read_text(encoding="utf-8"), source="extraction.yaml")

    @classmethod
    def load(cls, ontology=None, vocabulary: Vocabulary | None = None) -> "ExtractionOntology":
        """``None`` (packaged), an :class:`ExtractionOntology`, a dict, or a path to YAML/JSON."""
        if ontology is None:
            return cls.default() if vocabulary is None else cls.from_dict(
                cls.default()._raw, vocabulary=vocabulary, source="extraction.yaml")
        if isinstance(ontology, ExtractionOntology):
            return ontology
        if isinstance(ontology, Mapping):
            return cls.from_dict(ontology, vocabulary=vocabulary)
        if isinstance(ontology, (str, Path)):
            return cls.from_file(ontology, vocabulary=vocabulary)
        raise TypeError(f"ontology must be None, a dict or a path, got {type(ontology).__name__}")

    @classmethod
    def from_file(cls, path, vocabulary: Vocabulary | None = None) -> "ExtractionOntology":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read ontology file {str(path)!r}: {exc}") from None
        if path.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"ontology file {str(path)!r} is not valid JSON: {exc}") from None
            return cls.from_dict(data, vocabulary=vocabulary, source=str(path))
        return cls.from_text(text, vocabulary=vocabulary, source=str(path))

    @classmethod
    def from_text(cls, text: str, vocabulary: Vocabulary | None = None,
                  source: str = "<text>") -> "ExtractionOntology":
        """Parse YAML text; duplicate keys are an error (PyYAML would keep the last silently)."""
        import yaml

        from ..utils.yamlsafe import no_alias_safe_loader

        class _Loader(no_alias_safe_loader()):  # aliases refused: they can expand without bound
            pass

        def _mapping(loader, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = loader.construct_object(key_node, deep=deep)
                if key in seen:
                    raise ValueError(f"{source}: duplicate key {key!r} (line {key_node.start_mark.line + 1})")
                seen.add(key)
            return loader.construct_mapping(node, deep=deep)

        _Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
        try:
            data = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
        except yaml.YAMLError as exc:
            raise ValueError(f"ontology {source} is not valid YAML: {exc}") from None
        return cls.from_dict(data, vocabulary=vocabulary, source=source)

    @classmethod
    def from_dict(cls, data: Mapping, vocabulary: Vocabulary | None = None,
                  source: str = "<dict>") -> "ExtractionOntology":
        """Validate ``data`` against ``vocabulary`` (default: the packaged one): every class,
        canonical adjective and direction must be a name that ``MetaEntities.from_records`` accepts."""
        vocab = vocabulary if vocabulary is not None else Vocabulary.default()
        v = _Validator(source)
        if not isinstance(data, Mapping):
            v.fail(f"an ontology must be a mapping, got {type(data).__name__}")
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            v.fail(f"missing required keys {missing}")

        # diseases: class -> terms; a term names exactly one class
        diseases = v.mapping(data["diseases"], "diseases")
        term_owner: dict[str, str] = {}
        disease_terms: dict[str, str] = {}
        classes = []
        for cls_name, terms in diseases.items():
            where = f"diseases.{cls_name}"
            canon = v.vocab_name(vocab.disease_index, vocab.diseases, cls_name, where)
            classes.append(canon)
            for t in v.terms(terms, where):
                v.unique(term_owner, t, where)
                disease_terms[t] = canon
        if len(set(classes)) != len(classes):
            v.fail("diseases: two entries name the same class")

        not_findings = set()
        for t in v.terms(data.get("not_findings", []), "not_findings"):
            v.unique(term_owner, t, "not_findings")
            not_findings.add(t)

        conditional = {}
        for cls_name, spec in v.mapping(data.get("conditional", {}), "conditional").items():
            where = f"conditional.{cls_name}"
            canon = v.vocab_name(vocab.disease_index, vocab.diseases, cls_name, where)
            spec = v.mapping(spec, where)
            extra = set(spec) - {"terms", "qualifiers"}
            if extra or "terms" not in spec or "qualifiers" not in spec:
                v.fail(f"{where} must have exactly the keys 'terms' and 'qualifiers'")
            anatomy = v.terms(spec["terms"], f"{where}.terms")
            for t in anatomy:
                v.unique(term_owner, t, f"{where}.terms")
            conditional[canon] = (tuple(anatomy), tuple(v.terms(spec["qualifiers"], f"{where}.qualifiers")))
        normal_cues = tuple(v.terms(data.get("normal_cues", []), "normal_cues"))

        adjective_terms = v.descriptor_map(data["adjectives"], "adjectives", vocab.adjective_index, vocab.adjectives)
        direction_terms = v.descriptor_map(data["directions"], "directions", vocab.direction_index, vocab.directions)
        for t in list(adjective_terms) + list(direction_terms):
            if t in disease_terms:  # the published list had 'infectious' as both
                v.fail(f"term {t!r} is both a descriptor and a disease term ({disease_terms[t]!r})")

        context_rules = v.context(data["context"])
        sections = v.mapping(data["sections"], "sections")
        if set(sections) - {"keep", "ignore"}:
            v.fail(f"sections: unknown keys {sorted(set(sections) - {'keep', 'ignore'})}")
        keep = frozenset(v.terms(sections.get("keep", []), "sections.keep"))
        ignore = frozenset(v.terms(sections.get("ignore", []), "sections.ignore"))
        if keep & ignore:
            v.fail(f"sections: {sorted(keep & ignore)} listed under both keep and ignore")
        clause_breaks = tuple(v.terms(data["clause_breaks"], "clause_breaks"))
        deid = tuple(v.terms(data.get("deid_tokens", []), "deid_tokens"))

        onto = cls(
            name=str(data.get("name", "custom")), version=str(data.get("version", "")),
            classes=tuple(c for c in vocab.diseases if c in set(classes) | set(conditional)),
            disease_terms=disease_terms, not_findings=frozenset(not_findings),
            conditional=conditional, normal_cues=normal_cues,
            adjective_terms=adjective_terms, direction_terms=direction_terms,
            context_rules=context_rules, keep_sections=keep, ignore_sections=ignore,
            clause_breaks=clause_breaks, deid_tokens=deid, source=source,
        )
        object.__setattr__(onto, "_raw", dict(data))
        object.__setattr__(onto, "vocabulary", vocab)
        return onto

    def to_config(self) -> dict:
        """The raw mapping this ontology was built from (to rebuild it in a worker process)."""
        return dict(self._raw)


class _Validator:
    """Small checks shared by the sections of the file; every error names the entry."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, msg: str):
        raise ValueError(f"ontology {self.source}: {msg}")

    def mapping(self, obj, where: str) -> Mapping:
        if not isinstance(obj, Mapping):
            self.fail(f"{where} must be a mapping, got {type(obj).__name__}")
        return obj

    def terms(self, obj, where: str) -> list[str]:
        if isinstance(obj, str) or not isinstance(obj, (list, tuple)):
            self.fail(f"{where} must be a list of strings, got {type(obj).__name__}")
        out = []
        for i, t in enumerate(obj):
            if not isinstance(t, str) or not t.strip():
                self.fail(f"{where}[{i}] must be a non-empty string, got {t!r}")
            n = _norm(t)
            if n in out:
                self.fail(f"{where}: duplicate term {n!r}")
            out.append(n)
        return out

    def unique(self, owner: dict, term: str, where: str):
        if term in owner:
            self.fail(f"{where}: term {term!r} is already listed under {owner[term]}")
        owner[term] = where

    def vocab_name(self, index_fn, names, name, where: str) -> str:
        if not isinstance(name, str):
            self.fail(f"{where}: names must be strings, got {name!r}")
        try:
            return names[index_fn(name)]
        except ValueError:
            self.fail(f"{where}: {name!r} is not a name of the vocabulary")

    def descriptor_map(self, obj, where: str, index_fn, names) -> dict[str, str]:
        out: dict[str, str] = {}
        for canon, terms in self.mapping(obj, where).items():
            canon_n = self.vocab_name(index_fn, names, canon, f"{where}.{canon}")
            for t in self.terms(terms, f"{where}.{canon}"):
                if t in out:
                    self.fail(f"{where}.{canon}: term {t!r} is already mapped to {out[t]!r}")
                out[t] = canon_n
        return out

    def context(self, obj) -> tuple[tuple[str, str, str], ...]:
        ctx = self.mapping(obj, "context")
        rules = []
        for key, spec in ctx.items():
            if key == "terminate":
                rules += [(t, "TERMINATE", "TERMINATE") for t in self.terms(spec, "context.terminate")]
            elif key == "pseudo":
                rules += [(t, "PSEUDO", "PSEUDO") for t in self.terms(spec, "context.pseudo")]
            elif key in CONTEXT_CATEGORIES:
                spec = self.mapping(spec, f"context.{key}")
                if set(spec) - {"forward", "backward"}:
                    self.fail(f"context.{key}: keys must be 'forward' and/or 'backward'")
                fwd = self.terms(spec.get("forward", []) or [], f"context.{key}.forward")
                bwd = self.terms(spec.get("backward", []) or [], f"context.{key}.backward")
                cat = CONTEXT_CATEGORIES[key]
                # a phrase listed in both directions is one bidirectional rule
                for t in fwd:
                    rules.append((t, cat, "BIDIRECTIONAL" if t in bwd else "FORWARD"))
                rules += [(t, cat, "BACKWARD") for t in bwd if t not in fwd]
            else:
                self.fail(f"context: unknown category {key!r} (known: "
                          f"{sorted(CONTEXT_CATEGORIES) + ['pseudo', 'terminate']})")
        seen = {}
        for t, cat, _ in rules:
            if t in seen and seen[t] != cat:
                # one phrase, two meanings: the matcher would pick one arbitrarily
                self.fail(f"context: phrase {t!r} is listed under {seen[t]} and {cat}")
            seen[t] = cat
        return tuple(rules)
