"""The spaCy components of the MedTrim extraction pipeline (``@Language.factory``).

Importing this module registers the factories, so any pipeline can add them by name::

    import spacy
    import medtrim_ext.extraction.components  # noqa: F401  (registers the factories)

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.add_pipe("medtrim_sentence_cap")
    nlp.add_pipe("medtrim_targets")            # doc.ents: the mentions
    nlp.add_pipe("medtrim_context", name="medspacy_context")  # span._.is_negated ...
    nlp.add_pipe("medtrim_descriptors")        # doc._.medtrim_descriptors
    nlp.add_pipe("medtrim_record")             # doc._.medtrim_record

:class:`~.pipeline.EntityExtractor` builds exactly this pipeline. The components read their
settings from their config only (JSON values: the ontology as its raw mapping, ``None`` for the
packaged one; the vocabulary likewise; the uncertain policy), so ``nlp.config`` rebuilds them.

Extensions they set: ``Doc._.medtrim_descriptors`` (descriptor matches ``(start, end, kind,
name)``), ``Doc._.medtrim_record`` (the record of the doc), ``Doc._.medtrim_raw_record`` (the same
before left + right become "bilateral", to merge the pieces of a long report) and
``Doc._.medtrim_error`` (``{"component", "error"}`` when a component failed on the doc and the
pipeline's error handler is :func:`note_failure`; the later components then skip the doc).
"""

import functools
import json
import warnings
from typing import Any, Dict, Optional

import numpy
from spacy.language import Language
from spacy.matcher import PhraseMatcher
from spacy.tokens import Doc, Span
from spacy.util import filter_spans, raise_error

from ..entities.vocabulary import Vocabulary
from ..utils.checks import check_int
from .ontology import ExtractionOntology
from .rules import (CLAUSE_PUNCT, MAX_SENTENCE_TOKENS, UNCERTAIN_POLICIES, build_record, finish_record,
                    sentence_ids)


def _import_medspacy():
    """Import medspacy without its side effect on the whole process: medspacy's matcher module
    runs ``warnings.filterwarnings("ignore")`` on import, which would hide every later warning of
    the program (ours naming the reports that failed included)."""
    before = list(warnings.filters)
    import medspacy.common.medspacy_matcher  # noqa: F401
    from medspacy.context import ConText  # noqa: F401

    ignore_all = ("ignore", None, Warning, None, 0)
    if ignore_all in warnings.filters and ignore_all not in before:
        warnings.filters.remove(ignore_all)
        mutated = getattr(warnings, "_filters_mutated", None)  # what filterwarnings() calls
        if mutated is not None:
            mutated()


_import_medspacy()
from medspacy.common.medspacy_matcher import MedspacyMatcher  # noqa: E402
from medspacy.common.util import prune_overlapping_matches  # noqa: E402
from medspacy.context import ConText, ConTextRule  # noqa: E402
from medspacy.context.context_graph import ConTextGraph  # noqa: E402
from medspacy.context.context_modifier import ConTextModifier  # noqa: E402

_EXTENSIONS = ("medtrim_descriptors", "medtrim_record", "medtrim_raw_record", "medtrim_error")
for _extension in _EXTENSIONS:
    if not Doc.has_extension(_extension):
        Doc.set_extension(_extension, default=None)


def note_failure(proc_name, proc, docs, exc) -> None:
    """spaCy error handler (``nlp.set_error_handler``): record the error on the doc instead of
    raising, so that one bad report does not stop a batch; the later components skip the doc."""
    if docs is None:  # a worker process lost a whole batch: the extractor names its reports
        return
    for doc in docs:
        if doc._.medtrim_error is None:
            doc._.medtrim_error = {"component": proc_name, "error": f"{type(exc).__name__}: {exc}"}


def _failed(doc) -> bool:
    """Whether a component failed on ``doc``. The error lives in ``doc.user_data``: a doc without
    user data (most docs, before ConText) has none, and needs no ``doc._`` object, which costs."""
    return bool(doc.user_data) and doc._.medtrim_error is not None


class Component:
    """Base of the components: ``process(doc)`` does the work; ``__call__`` and ``pipe`` skip a
    doc that a component failed on. ``pipe`` hands an error to the error handler and, when the
    handler returns, yields the doc all the same (spaCy's own loop would drop it, and its report
    would go missing)."""

    name = ""
    _error_handler = staticmethod(raise_error)

    def process(self, doc) -> None:
        raise NotImplementedError

    def __call__(self, doc):
        if not _failed(doc):
            self.process(doc)
        return doc

    def pipe(self, docs, batch_size: Optional[int] = None):
        handler = self.get_error_handler()
        for doc in docs:
            if not _failed(doc):
                try:
                    self.process(doc)
                except Exception as exc:  # the handler decides: raise, or note it on the doc
                    handler(self.name, self, [doc], exc)
            yield doc

    def set_error_handler(self, handler) -> None:
        self._error_handler = handler

    def get_error_handler(self):
        return self._error_handler


# -- settings ------------------------------------------------------------------------------------
def vocabulary_config(vocabulary: Optional[Vocabulary]) -> Optional[dict]:
    """The JSON form of a vocabulary for a component config (``None``: the packaged one)."""
    if vocabulary is None or vocabulary is Vocabulary.default():
        return None
    out = {k: list(getattr(vocabulary, k)) for k in ("diseases", "adjectives", "directions")}
    for k in ("disease_synonyms", "adjective_synonyms", "direction_synonyms"):
        out[k] = dict(getattr(vocabulary, k))
    out.update(name=vocabulary.name, version=vocabulary.version)
    return out


def load_ontology(ontology: Optional[dict], vocabulary: Optional[dict] = None) -> ExtractionOntology:
    """The ontology of a component config; the components of one pipeline share one object."""
    dump = (lambda d: None if d is None else json.dumps(d))  # insertion order kept: it is match order
    return _load_ontology(dump(ontology), dump(vocabulary))


@functools.lru_cache(maxsize=8)
def _load_ontology(ontology_json: Optional[str], vocabulary_json: Optional[str]) -> ExtractionOntology:
    vocab = None if vocabulary_json is None else Vocabulary.from_dict(json.loads(vocabulary_json),
                                                                       source="<pipeline config>")
    if ontology_json is None:
        return ExtractionOntology.load(None, vocabulary=vocab)
    return ExtractionOntology.from_dict(json.loads(ontology_json), vocabulary=vocab,
                                        source="<pipeline config>")


def _phrase_matcher(nlp, by_label: dict) -> PhraseMatcher:
    """A lowercase phrase matcher; labels are strings in the vocab."""
    matcher = PhraseMatcher(nlp.vocab, attr="LOWER")
    for label, terms in by_label.items():
        if terms:
            matcher.add(label, [nlp.make_doc(t) for t in terms])
    return matcher


def _grouped(prefix: str, term_to_name: dict) -> dict:
    out: dict = {}
    for term, name in term_to_name.items():
        out.setdefault(f"{prefix}|{name}", []).append(term)
    return out


_ONTOLOGY_SETTINGS = {"ontology": None, "vocabulary": None}


# -- sentences -----------------------------------------------------------------------------------
class SentenceCap(Component):
    """Start a new sentence after ``max_tokens`` tokens of one (put it after a sentencizer)."""

    def __init__(self, name: str, max_tokens: int):
        self.name, self.max_tokens = name, check_int("max_tokens", max_tokens)

    def process(self, doc) -> None:
        cap_sentences(doc, self.max_tokens)


@Language.factory("medtrim_sentence_cap", default_config={"max_tokens": MAX_SENTENCE_TOKENS})
def make_sentence_cap(nlp: Language, name: str, max_tokens: int) -> SentenceCap:
    return SentenceCap(name, max_tokens)


def cap_sentences(doc, limit: int) -> None:
    """Start a new sentence after ``limit`` tokens of one: after its last ',' / ';' ... of the
    second half of the run, else right there. Sentences of real reports are far shorter."""
    if len(doc) <= limit:
        return
    starts = doc.to_array("SENT_START").astype("int64").tolist()  # 1: starts, -1: does not
    run_start, last_punct, cut_any = 0, -1, False
    for i, tok in enumerate(doc):
        if i == 0 or starts[i] == 1:
            run_start, last_punct = i, -1
        elif i - run_start >= limit:
            cut = last_punct + 1 if last_punct >= run_start + limit // 2 else i
            starts[cut], cut_any = 1, True
            run_start, last_punct = cut, -1
        if tok.text in CLAUSE_PUNCT:
            last_punct = i
    if cut_any:  # one array write: setting Token.is_sent_start scans the whole doc every time
        doc.from_array(["SENT_START"], numpy.asarray(starts, dtype="int64").astype("uint64"))


# -- mentions ------------------------------------------------------------------------------------
class TargetMatcher(Component):
    """``doc.ents``: the disease terms (label ``"D|class"``) and conditional anatomy
    (``"C|class"``). Overlapping matches keep the longest ("pericardial effusion" beats
    "effusion"); the terms that are not findings win their span and are then dropped."""

    def __init__(self, nlp, name: str, ontology: ExtractionOntology):
        self.name = name
        targets = _grouped("D", ontology.disease_terms)
        for cls, (anatomy, _) in ontology.conditional.items():
            targets.setdefault(f"C|{cls}", []).extend(anatomy)
        targets["X|"] = sorted(ontology.not_findings)
        self.matcher = _phrase_matcher(nlp, targets)
        self._blocker = nlp.vocab.strings.add("X|")

    def process(self, doc) -> None:
        spans = [Span(doc, s, e, label=m) for m, s, e in self.matcher(doc)]
        doc.ents = [s for s in filter_spans(spans) if s.label != self._blocker]


@Language.factory("medtrim_targets", default_config=_ONTOLOGY_SETTINGS)
def make_targets(nlp: Language, name: str, ontology: Optional[Dict[str, Any]],
                 vocabulary: Optional[Dict[str, Any]]) -> TargetMatcher:
    return TargetMatcher(nlp, name, load_ontology(ontology, vocabulary))


# -- descriptors ---------------------------------------------------------------------------------
class DescriptorMatcher(Component):
    """``doc._.medtrim_descriptors``: ``(start, end, kind, name)`` of the adjectives (kind
    ``A``), directions (``R``), qualifiers of conditional anatomy (``Q``, name: the class),
    "normal" cues (``N``) and clause-break words (``B``), in match order."""

    def __init__(self, nlp, name: str, ontology: ExtractionOntology):
        self.name = name
        desc = {**_grouped("A", ontology.adjective_terms), **_grouped("R", ontology.direction_terms)}
        for cls, (_, qualifiers) in ontology.conditional.items():
            desc[f"Q|{cls}"] = list(qualifiers)
        desc["N|"] = list(ontology.normal_cues)
        desc["B|"] = list(ontology.clause_breaks)
        self.matcher = _phrase_matcher(nlp, desc)

    def process(self, doc) -> None:
        strings = doc.vocab.strings
        doc._.medtrim_descriptors = [(s, e, *strings[m].split("|", 1)) for m, s, e in self.matcher(doc)]


@Language.factory("medtrim_descriptors", default_config=_ONTOLOGY_SETTINGS)
def make_descriptors(nlp: Language, name: str, ontology: Optional[Dict[str, Any]],
                     vocabulary: Optional[Dict[str, Any]]) -> DescriptorMatcher:
    return DescriptorMatcher(nlp, name, load_ontology(ontology, vocabulary))


# -- records -------------------------------------------------------------------------------------
class RecordBuilder(Component):
    """``doc._.medtrim_record``: ``{class: {"adjs": [...], "dirs": [...]}}`` of the mentions that
    count (see :mod:`.rules`), and ``doc._.medtrim_raw_record`` before the sides are merged.
    Put it after ConText and ``medtrim_descriptors``."""

    def __init__(self, name: str, ontology: ExtractionOntology, uncertain: str):
        if uncertain not in UNCERTAIN_POLICIES:
            raise ValueError(f"uncertain must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
        self.name, self.uncertain = name, uncertain
        self.classes = ontology.classes
        self.merge_sides = "bilateral" in ontology.vocabulary.directions

    def process(self, doc) -> None:
        raw = build_record(doc, doc._.medtrim_descriptors or (),
                           count_uncertain=self.uncertain == "positive")
        doc._.medtrim_raw_record = {c: {k: sorted(v[k]) for k in ("adjs", "dirs")} for c, v in raw.items()}
        doc._.medtrim_record = finish_record(raw, self.classes, self.merge_sides)


@Language.factory("medtrim_record", default_config={**_ONTOLOGY_SETTINGS, "uncertain": "negative"})
def make_record(nlp: Language, name: str, ontology: Optional[Dict[str, Any]],
                vocabulary: Optional[Dict[str, Any]], uncertain: str) -> RecordBuilder:
    return RecordBuilder(name, load_ontology(ontology, vocabulary), uncertain)


# -- ConText -------------------------------------------------------------------------------------
class SentenceContext(Component, ConText):
    """medspacy's ConText (the ``medspacy_context`` component), run once per sentence.

    Marks the mentions in ``doc.ents`` negated / uncertain / historical / hypothetical / family
    (``span._.is_negated`` ...; ``span._.modifiers``) exactly as medspacy's ConText does, in time
    linear in the document's length. ConText compares every pair of modifiers and every (mention,
    modifier) pair of the whole document. A modifier's scope is its sentence (no ``max_scope`` is
    set), and scopes of different sentences never overlap, so no pair across sentences changes
    anything: running ConText's graph once per sentence, with the matches pruned per sentence in
    the same order, gives the same marks. A match that spans a sentence boundary (possible only
    with a custom ontology) breaks that argument: such a document goes through ConText whole
    (which also sets ``doc._.context_graph``). Docs without mentions are left alone.
    """

    def __init__(self, nlp, name: str, rules):
        ConText.__init__(self, nlp, name=name, rules=None, phrase_matcher_attr="LOWER")
        rules = [ConTextRule(phrase, category, direction=direction) for phrase, category, direction in rules]
        self.add(rules)
        # the same rules, matched without pruning: overlapping modifiers are pruned per
        # sentence, as ConText's own matcher would prune them on the whole document
        self._unpruned = MedspacyMatcher(nlp, name=f"{name}_unpruned", phrase_matcher_attr="LOWER",
                                         prune=False)
        self._unpruned.add(rules)

    def process(self, doc) -> None:
        targets = list(doc.ents)
        if not targets:
            return
        sent = sentence_ids(doc)
        with warnings.catch_warnings():
            # medspacy keeps a token-pattern matcher next to its phrase matcher; ours has only
            # phrases, and spaCy would warn on every document that the empty one has no patterns
            warnings.filterwarnings("ignore", message=r"\[W036\]")
            matches = self._unpruned(doc)
            if any(sent[s] != sent[e - 1] for _, s, e in matches) or any(
                    sent[t.start] != sent[t.end - 1] for t in targets):
                ConText.__call__(self, doc)
                return
        for found, in_sentence in self._by_sentence(targets, matches, sent):
            self._apply(doc, found, in_sentence)

    @staticmethod
    def _by_sentence(targets, matches, sent):
        """``(matches, targets)`` of every sentence holding both."""
        by_sent: dict = {}
        for t in targets:
            by_sent.setdefault(sent[t.start], []).append(t)
        modifiers: dict = {}
        for m in matches:
            if sent[m[1]] in by_sent:  # a sentence without a mention gets no edge anyway
                modifiers.setdefault(sent[m[1]], []).append(m)
        return [(found, by_sent[sid]) for sid, found in modifiers.items()]

    def _apply(self, doc, matches, targets) -> None:
        """ConText's graph on one sentence: its pruned matches and its mentions."""
        rule_map, strings = self._unpruned.rule_map, doc.vocab.strings
        mods = [ConTextModifier(rule_map[strings[mid]], s, e, doc)
                for mid, s, e in prune_overlapping_matches(matches)]
        graph = ConTextGraph(targets=targets, modifiers=mods, prune_on_modifier_overlap=False)
        graph.update_scopes()
        graph.apply_modifiers()
        for target, modifier in graph.edges:
            target._.modifiers += (modifier,)
        self.set_context_attributes(graph.edges)


@Language.factory("medtrim_context", default_config=_ONTOLOGY_SETTINGS)
def make_context(nlp: Language, name: str, ontology: Optional[Dict[str, Any]],
                 vocabulary: Optional[Dict[str, Any]]) -> SentenceContext:
    return SentenceContext(nlp, name, load_ontology(ontology, vocabulary).context_rules)
