"""EntityExtractor: free-text chest X-ray reports -> MedTrim meta-entity records.

Per report (see ``_analyse``):

1. sections: keep FINDINGS / IMPRESSION text, neutralize de-id placeholders (``sections.py``);
2. spaCy ``blank("en")`` tokenizer + rule-based ``sentencizer``;
3. a ``PhraseMatcher`` on lowercased tokens finds disease terms, conditional anatomy, and the
   terms that are not findings; overlapping matches keep the longest ("pericardial effusion"
   beats "effusion", "nodular opacity" beats "opacity");
4. medspacy ``ConText`` (rules from the ontology) marks each mention negated, uncertain,
   historical, hypothetical or family;
5. a second ``PhraseMatcher`` finds adjectives, directions, clause breaks, qualifiers and
   "normal" cues; each adjective / direction attaches to the nearest mention of its clause.

spaCy and medspacy are imported when an extractor is built, not when medtrim_ext is imported.
"""

from __future__ import annotations

import os
import warnings
from typing import Iterable, Sequence

from .ontology import ExtractionOntology
from .sections import SectionFilter

UNCERTAIN_POLICIES = ("positive", "negative")
_NEGATING_WORDS = frozenset({"no", "not", "without", "nor", "never", "n't"})
_CLAUSE_PUNCT = frozenset({",", ";", ":", "(", ")", "[", "]"})


def _quiet_medspacy_logs():
    """medspacy / PyRuSH log DEBUG lines through loguru on import: keep WARNING and above."""
    try:
        import sys

        from loguru import logger

        logger.remove()
        logger.add(sys.stderr, level="WARNING")
    except ImportError:  # loguru absent: nothing to silence
        pass


class EntityExtractor:
    """Extract ``{disease: {"adjs": [...], "dirs": [...]}}`` records from report texts.

    Args:
        ontology: ``None`` for the packaged ``extraction.yaml``, a path to a YAML/JSON file of
            the same layout, a dict, or an :class:`ExtractionOntology`.
        uncertain: what a mention under an uncertainty cue ("may represent atelectasis",
            "possible pneumonia", "cannot exclude effusion") counts as. ``"positive"`` (default):
            present, as in CheXpert's U-Ones policy, because a hedged finding is usually what the
            image shows and the triplets should group it with its certain cases. ``"negative"``:
            absent (for a conservative, high-precision label set).
        sections: use only FINDINGS/IMPRESSION sections when a report has them (default True).
        vocabulary: the Vocabulary whose canonical names the output uses (default: packaged).

    Negated, historical ("history of pneumonia"), hypothetical ("evaluate for pneumonia") and
    family mentions never count. An empty or blank report gives ``{}`` (no finding).
    """

    def __init__(self, ontology=None, *, uncertain: str = "negative", sections: bool = True,
                 vocabulary=None):
        if uncertain not in UNCERTAIN_POLICIES:
            raise ValueError(f"uncertain must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
        if not isinstance(sections, bool):
            raise TypeError(f"sections must be a bool, got {type(sections).__name__}")
        self.ontology = ExtractionOntology.load(ontology, vocabulary=vocabulary)
        self.uncertain = uncertain
        self.use_sections = sections
        self._section_filter = SectionFilter(self.ontology.keep_sections, self.ontology.ignore_sections,
                                             self.ontology.deid_tokens)
        self._build()

    # -- pipeline construction -----------------------------------------------------------------
    def _build(self):
        _quiet_medspacy_logs()
        import spacy
        from medspacy.context import ConText, ConTextRule
        from spacy.matcher import PhraseMatcher

        onto = self.ontology
        nlp = spacy.blank("en")
        nlp.add_pipe("sentencizer")
        self.nlp = nlp
        make = nlp.make_doc

        def matcher(by_label: dict[str, list[str]]) -> PhraseMatcher:
            """A lowercase phrase matcher; labels are strings in the vocab."""
            m = PhraseMatcher(nlp.vocab, attr="LOWER")
            for label, terms in by_label.items():
                if terms:
                    m.add(label, [make(t) for t in terms])
            return m

        def grouped(prefix: str, term_to_name: dict[str, str]) -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            for term, name in term_to_name.items():
                out.setdefault(f"{prefix}|{name}", []).append(term)
            return out

        # targets: class terms, conditional anatomy, blockers
        targets = grouped("D", onto.disease_terms)
        for cls, (anatomy, _) in onto.conditional.items():
            targets.setdefault(f"C|{cls}", []).extend(anatomy)
        targets["X|"] = sorted(onto.not_findings)
        self._target_matcher = matcher(targets)

        # descriptors and clause structure
        desc = {**grouped("A", onto.adjective_terms), **grouped("R", onto.direction_terms)}
        for cls, (_, qualifiers) in onto.conditional.items():
            desc[f"Q|{cls}"] = list(qualifiers)
        desc["N|"] = list(onto.normal_cues)
        desc["B|"] = list(onto.clause_breaks)
        self._descriptor_matcher = matcher(desc)

        self._context = ConText(nlp, rules=None, phrase_matcher_attr="LOWER")
        self._context.add([ConTextRule(phrase, category, direction=direction)
                           for phrase, category, direction in onto.context_rules])

    # -- public API ----------------------------------------------------------------------------
    def preprocess(self, text: str) -> str:
        """The text that is analysed: image sections only, de-id placeholders neutralized."""
        if self.use_sections:
            return self._section_filter(text)
        return " ".join(self._section_filter._deid.sub("xxxx", text).split())

    def __call__(self, text: str) -> dict:
        """Record of one report."""
        return self.extract([text])[0]

    def extract(self, texts: Sequence[str], *, n_process: int = 1, batch_size: int = 256,
                progress: bool = False) -> list[dict]:
        """One record per text, in order.

        ``n_process``: worker processes (``-1`` or ``0``: all cores); ``progress``: a tqdm bar.
        Raises ``TypeError`` naming the first text that is not a ``str``.
        """
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string (wrap it in a list)")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
        if not isinstance(n_process, int) or isinstance(n_process, bool):
            raise TypeError(f"n_process must be an int, got {type(n_process).__name__}")
        if n_process <= 0:
            n_process = os.cpu_count() or 1
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(texts), desc="extracting", unit="report")
        try:
            if n_process == 1 or len(texts) < 2 * batch_size:
                out = []
                for start in range(0, len(texts), batch_size):
                    chunk = texts[start:start + batch_size]
                    out += self._extract_batch(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                return out
            return self._extract_parallel(texts, n_process, batch_size, bar)
        finally:
            if bar is not None:
                bar.close()

    # -- work ----------------------------------------------------------------------------------
    def _extract_batch(self, texts: Sequence[str]) -> list[dict]:
        clean = [self.preprocess(t) for t in texts]
        return [self._analyse(doc) if len(doc) else {} for doc in self.nlp.pipe(clean)]

    def _extract_parallel(self, texts, n_process, batch_size, bar) -> list[dict]:
        # Own process pool rather than nlp.pipe(n_process=...): the ConText and matcher objects
        # are not spaCy pipeline factories, so each worker rebuilds the extractor from its config.
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        global _WORKER
        chunks = [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)]
        out: list[dict] = []
        if "fork" in mp.get_all_start_methods():
            # forked workers inherit this extractor (no rebuild, ~1.5 s saved per worker)
            _WORKER = self
            kwargs = {"mp_context": mp.get_context("fork")}
        else:
            config = (self.ontology.to_config(), self.uncertain, self.use_sections,
                      self.ontology.vocabulary)
            kwargs = {"mp_context": mp.get_context("spawn"), "initializer": _worker_init,
                      "initargs": config}
        with ProcessPoolExecutor(n_process, **kwargs) as pool:
            for records in pool.map(_worker_run, chunks):
                out += records
                if bar is not None:
                    bar.update(len(records))
        return out

    def _analyse(self, doc) -> dict:
        onto = self.ontology
        # 1. targets: longest match wins; blockers ("X|") are dropped after winning their span
        from spacy.tokens import Span
        from spacy.util import filter_spans

        strings = self.nlp.vocab.strings
        spans = [Span(doc, s, e, label=strings[m]) for m, s, e in self._target_matcher(doc)]
        targets = [s for s in filter_spans(spans) if not s.label_.startswith("X|")]
        if not targets:
            return {}
        doc.ents = targets
        with warnings.catch_warnings():
            # ConText keeps a token-pattern matcher next to its phrase matcher; ours has only
            # phrases, and spaCy would warn on every document that the empty one has no patterns
            warnings.filterwarnings("ignore", message=r"\[W036\]")
            self._context(doc)

        # 2. descriptors, clause ids and cue positions
        clause = _clause_ids(doc, self._descriptor_matcher, strings)
        desc, qualifiers, normals = clause.descriptors, clause.qualifiers, clause.normals
        occupied = set()
        for t in targets:
            occupied.update(range(t.start, t.end))

        # 3. which mentions count
        kept = []  # (span, class)
        not_findings = set()  # anatomy without its qualifier: no mention at all
        for t in doc.ents:
            kind, cls = t.label_.split("|", 1)
            if kind == "C":
                qualifier = self._conditional_qualifier(t, cls, clause, qualifiers, normals, doc)
                if qualifier is None:
                    not_findings.add((t.start, t.end))
                    continue
                occupied.update(range(*qualifier))  # "enlarged" made it cardiomegaly: not an adjective too
            if t._.is_negated or t._.is_historical or t._.is_hypothetical or t._.is_family:
                continue
            if t._.is_uncertain and self.uncertain == "negative":
                continue
            kept.append((t, cls))

        # 4. attach descriptors to the nearest mention of their clause (negated ones included,
        #    so that the words of a negated finding do not drift to another one)
        record: dict[str, dict[str, set]] = {}
        for _, cls in kept:
            record.setdefault(cls, {"adjs": set(), "dirs": set()})
        if kept:
            kept_ids = {(t.start, t.end) for t, _ in kept}  # doc.ents makes new Span objects
            mentions = [m for m in doc.ents if (m.start, m.end) not in not_findings]
            descriptor_tokens = {i for s, e, _, _ in desc for i in range(s, e)}
            for start, end, kind, name in desc:
                if any(i in occupied for i in range(start, end)):
                    continue  # a word inside a disease term ("enlarged heart") is not a descriptor
                host = _host(mentions, start, end, clause, doc, descriptor_tokens)
                if host is None or (host.start, host.end) not in kept_ids:
                    continue
                cls = host.label_.split("|", 1)[1]
                record[cls]["adjs" if kind == "A" else "dirs"].add(name)
        for v in record.values():
            # "left and right effusions", "bilateral effusions, left small, right moderate":
            # both sides are one finding on both sides, so the sets compare equal in the scores
            if {"left", "right"} <= v["dirs"] and "bilateral" in onto.vocabulary.directions:
                v["dirs"] = (v["dirs"] - {"left", "right"}) | {"bilateral"}
        return {c: {"adjs": sorted(v["adjs"]), "dirs": sorted(v["dirs"])}
                for c, v in sorted(record.items(), key=lambda kv: onto.classes.index(kv[0]))}

    @staticmethod
    def _conditional_qualifier(t, cls, clause, qualifiers, normals, doc):
        """Anatomy ('heart', 'mediastinum') counts only with a qualifier of its class in its
        clause ('enlarged', 'widened'), no 'normal' cue there, and no negating word between
        the anatomy and the qualifier ('heart is not enlarged'). Returns the qualifier's
        (start, end), or None when the mention does not count."""
        cid = clause.ids[t.start]
        if any(clause.ids[s] == cid for s in normals):
            return None
        for s, e in qualifiers.get(cls, ()):
            if clause.ids[s] != cid:
                continue
            lo, hi = (t.end, s) if s >= t.end else (e, t.start)
            if not any(doc[i].lower_ in _NEGATING_WORDS for i in range(lo, hi)):
                return s, e
        return None


class _Clauses:
    __slots__ = ("ids", "sent", "descriptors", "qualifiers", "normals")


def _clause_ids(doc, matcher, strings) -> _Clauses:
    """Clause id of every token (-1 for a break), and the descriptor/cue matches of the doc.

    A clause ends at a sentence end, at ',', ';', ':', brackets, or at a clause-break word."""
    out = _Clauses()
    breaks = set()
    out.descriptors, out.qualifiers, out.normals = [], {}, []
    for m, s, e in matcher(doc):
        kind, name = strings[m].split("|", 1)
        if kind == "B":
            breaks.update(range(s, e))
        elif kind == "Q":
            out.qualifiers.setdefault(name, []).append((s, e))
        elif kind == "N":
            out.normals.append(s)
        else:
            out.descriptors.append((s, e, kind, name))
    out.descriptors = _longest_per_kind(out.descriptors)
    ids, sent = [0] * len(doc), [0] * len(doc)
    cid, sid = 0, 0
    for tok in doc:
        if tok.is_sent_start and tok.i > 0:
            cid += 1
            sid += 1
        sent[tok.i] = sid
        if tok.i in breaks or tok.text in _CLAUSE_PUNCT:
            cid += 1
            ids[tok.i] = -1
            continue
        ids[tok.i] = cid
    out.ids, out.sent = ids, sent
    return out


def _longest_per_kind(matches):
    """Among overlapping adjective matches keep the longest ("mild to moderate", not "mild");
    same for directions. An adjective and a direction may share a word ('bibasilar')."""
    kept, taken = [], {"A": set(), "R": set()}
    for s, e, kind, name in sorted(matches, key=lambda m: (m[0] - m[1], m[0])):
        span = set(range(s, e))
        if span & taken[kind]:
            continue
        taken[kind] |= span
        kept.append((s, e, kind, name))
    return sorted(kept)


def _host(mentions, start: int, end: int, clause: _Clauses, doc, descriptor_tokens):
    """The mention a descriptor at [start, end) describes.

    In its clause: the following mention when the words in between can belong to one noun
    phrase (no stop word: "left lower lobe atelectasis"), else the preceding mention
    ("opacity in the right lower lobe", "effusion is small"), else the following one. In a
    clause with no mention ("small, bilateral effusions", "left and right effusions"): the first
    mention after it in the sentence, else the last one before it."""
    cid, sid = clause.ids[start], clause.sent[start]
    before = after = None
    for m in mentions:
        if clause.ids[m.start] != cid:
            continue
        if m.start >= end and after is None:
            after = m
        elif m.end <= start:
            before = m
    if after is not None:
        gap = range(end, after.start)
        if before is None or not any(doc[i].is_stop and i not in descriptor_tokens for i in gap):
            return after
    if before is not None:
        return before
    later = [m for m in mentions if m.start >= end and clause.sent[m.start] == sid]
    if later:
        return later[0]
    earlier = [m for m in mentions if m.end <= start and clause.sent[m.start] == sid]
    return earlier[-1] if earlier else None


# -- worker processes ----------------------------------------------------------------------------
_WORKER: EntityExtractor | None = None


def _worker_init(ontology_config, uncertain, use_sections, vocabulary):
    global _WORKER
    _WORKER = EntityExtractor(ontology_config, uncertain=uncertain, sections=use_sections,
                              vocabulary=vocabulary)


def _worker_run(texts: Sequence[str]) -> list[dict]:
    return _WORKER._extract_batch(texts)


def extract(texts: Iterable[str], **kwargs) -> list[dict]:
    """Convenience: ``EntityExtractor().extract(texts, **kwargs)``."""
    return EntityExtractor().extract(list(texts), **kwargs)
