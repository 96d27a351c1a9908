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

Before step 1 the text is normalized (``normalize.py``: control characters, bidi marks,
combining accents, HTML). Every step works within a sentence, so the time is linear in a report's
length: ConText runs once per sentence (a modifier's scope never leaves its sentence, so the result
is the one medspacy gives on the whole document), and a "sentence" longer than
``MAX_SENTENCE_TOKENS`` tokens (text without full stops) is cut into pieces of at most that length,
at a comma or semicolon where there is one. A report longer than spaCy's ``nlp.max_length``
characters is analysed in pieces cut at sentence ends and their records are merged. A report whose
analysis still fails gives ``{}`` and an :class:`ExtractionWarning` naming it; the batch goes on.

spaCy and medspacy are imported when an extractor is built, not when medtrim_ext is imported.
"""

from __future__ import annotations

import bisect
import os
import warnings
from typing import Iterable, Sequence

from .normalize import normalize_text
from .ontology import ExtractionOntology
from .sections import SectionFilter

UNCERTAIN_POLICIES = ("positive", "negative")
# Longest run of tokens analysed as one sentence. ConText compares every pair of modifiers of a
# sentence, so a report without full stops would take quadratic time; real sentences are far
# shorter (the longest of the 3,955 IU reports has 47 tokens).
MAX_SENTENCE_TOKENS = 200
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


class ExtractionWarning(UserWarning):
    """A report could not be analysed (it is recorded as ``{}``, no finding) or was cut."""


_IGNORE_ALL = ("ignore", None, Warning, None, 0)


def _import_medspacy():
    """Import medspacy without its side effect on the whole process: medspacy's matcher module
    runs ``warnings.filterwarnings("ignore")`` on import, which would hide every later warning of
    the program (ours naming the reports that failed included)."""
    before = list(warnings.filters)
    import medspacy.common.medspacy_matcher  # noqa: F401
    from medspacy.context import ConText  # noqa: F401

    if _IGNORE_ALL in warnings.filters and _IGNORE_ALL not in before:
        warnings.filters.remove(_IGNORE_ALL)
        mutated = getattr(warnings, "_filters_mutated", None)  # what filterwarnings() calls
        if mutated is not None:
            mutated()


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
        _import_medspacy()
        import spacy
        from medspacy.common.medspacy_matcher import MedspacyMatcher
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

        rules = [ConTextRule(phrase, category, direction=direction)
                 for phrase, category, direction in onto.context_rules]
        self._context = ConText(nlp, rules=None, phrase_matcher_attr="LOWER")
        self._context.add(rules)
        # the same rules, matched without pruning: overlapping modifiers are pruned per sentence
        # (see _apply_context), as ConText's own matcher would prune them on the whole document
        self._context_matcher = MedspacyMatcher(nlp, name="medtrim_context", phrase_matcher_attr="LOWER",
                                                prune=False)
        self._context_matcher.add(rules)

    # -- public API ----------------------------------------------------------------------------
    def preprocess(self, text: str) -> str:
        """The text that is analysed: normalized (:func:`~.normalize.normalize_text`), image
        sections only, de-id placeholders neutralized, whitespace collapsed."""
        text = normalize_text(text)
        if self.use_sections:
            return self._section_filter(text)
        return " ".join(self._section_filter._deid.sub("xxxx", text).split())

    def __call__(self, text: str) -> dict:
        """Record of one report."""
        return self.extract([text])[0]

    def extract(self, texts: Sequence[str], *, n_process: int = 1, batch_size: int = 256,
                progress: bool = False, ids: Sequence | None = None) -> list[dict]:
        """One record per text, in order.

        ``n_process``: worker processes (``-1`` or ``0``: all cores); ``progress``: a tqdm bar;
        ``ids``: the reports' names for warnings (default: ``texts[i]``).
        Raises ``TypeError`` naming the first text that is not a ``str``. A report whose analysis
        fails does not stop the batch: its record is ``{}`` and an :class:`ExtractionWarning`
        names it and the error.
        """
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string (wrap it in a list)")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
        if ids is not None:
            ids = list(ids)
            if len(ids) != len(texts):
                raise ValueError(f"ids ({len(ids)}) and texts ({len(texts)}) differ in length")
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
        out: list[dict] = []

        def collect(records, problems, offset):
            out.extend(records)
            for k, message in problems:
                name = f"report {ids[offset + k]!r}" if ids is not None else f"texts[{offset + k}]"
                warnings.warn(f"{name}: {message}", ExtractionWarning, stacklevel=3)
            if bar is not None:
                bar.update(len(records))

        try:
            if n_process == 1 or len(texts) < 2 * batch_size:
                for start in range(0, len(texts), batch_size):
                    collect(*self._extract_batch(texts[start:start + batch_size]), start)
            else:
                self._extract_parallel(texts, n_process, batch_size, collect)
            return out
        finally:
            if bar is not None:
                bar.close()

    # -- work ----------------------------------------------------------------------------------
    def _extract_batch(self, texts: Sequence[str]) -> tuple[list[dict], list[tuple[int, str]]]:
        """Records of the texts and ``(position, message)`` of each report that failed or was cut."""
        records, problems = [], []
        for k, text in enumerate(texts):
            try:
                record, note = self._extract_one(text)
            except Exception as exc:  # one report must not stop the others: say which one
                record, note = {}, (f"extraction failed ({type(exc).__name__}: {exc}); recorded as "
                                    "no finding")
            records.append(record)
            if note:
                problems.append((k, note))
        return records, problems

    def _extract_one(self, text: str) -> tuple[dict, str | None]:
        clean = self.preprocess(text)
        if not clean:
            return {}, None
        limit = self.nlp.max_length
        if len(clean) <= limit:
            return self._finish(self._analyse(self._doc(clean))), None
        # spaCy refuses texts over nlp.max_length (its memory guard): analyse the report in pieces
        # cut at sentence ends; every step is sentence-local, so the merged record is the same
        pieces = _split_at_sentences(clean, limit)
        merged: dict[str, dict[str, set]] = {}
        for piece in pieces:
            for cls, v in self._analyse(self._doc(piece)).items():
                m = merged.setdefault(cls, {"adjs": set(), "dirs": set()})
                m["adjs"] |= v["adjs"]
                m["dirs"] |= v["dirs"]
        note = (f"{len(clean):,} characters, more than spaCy's nlp.max_length ({limit:,}): analysed "
                f"in {len(pieces)} pieces cut at sentence ends")
        return self._finish(merged), note

    def _doc(self, text: str):
        doc = self.nlp(text)
        _cap_sentences(doc, MAX_SENTENCE_TOKENS)
        return doc

    def _extract_parallel(self, texts, n_process, batch_size, collect) -> None:
        # Own process pool rather than nlp.pipe(n_process=...): the ConText and matcher objects
        # are not spaCy pipeline factories, so each worker rebuilds the extractor from its config.
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        global _WORKER
        starts = range(0, len(texts), batch_size)
        chunks = [texts[i:i + batch_size] for i in starts]
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
            for start, (records, problems) in zip(starts, pool.map(_worker_run, chunks)):
                collect(records, problems, start)

    def _apply_context(self, doc, sent: list[int]) -> None:
        """Mark the mentions in ``doc.ents`` negated / uncertain / ... as medspacy's ConText does,
        in time linear in the document's length.

        ConText compares every pair of modifiers and every (mention, modifier) pair of the whole
        document. A modifier's scope is its sentence (no ``max_scope`` is set), and scopes of
        different sentences never overlap, so no pair across sentences changes anything: running
        ConText's graph once per sentence, with the matches pruned per sentence in the same
        order, gives the same marks. A match that spans a sentence boundary (possible only with
        a custom ontology) breaks that argument: such a document goes through ConText whole.
        """
        from medspacy.common.util import prune_overlapping_matches
        from medspacy.context.context_graph import ConTextGraph
        from medspacy.context.context_modifier import ConTextModifier

        targets = list(doc.ents)
        with warnings.catch_warnings():
            # medspacy keeps a token-pattern matcher next to its phrase matcher; ours has only
            # phrases, and spaCy would warn on every document that the empty one has no patterns
            warnings.filterwarnings("ignore", message=r"\[W036\]")
            matches = self._context_matcher(doc)
            if any(sent[s] != sent[e - 1] for _, s, e in matches) or any(
                    sent[t.start] != sent[t.end - 1] for t in targets):
                self._context(doc)
                return
        by_sent: dict[int, list] = {}
        for t in targets:
            by_sent.setdefault(sent[t.start], []).append(t)
        modifiers: dict[int, list] = {}
        for m in matches:
            if sent[m[1]] in by_sent:  # a sentence without a mention gets no edge anyway
                modifiers.setdefault(sent[m[1]], []).append(m)
        rule_map, strings = self._context_matcher.rule_map, self.nlp.vocab.strings
        for sid, found in modifiers.items():
            mods = [ConTextModifier(rule_map[strings[mid]], s, e, doc)
                    for mid, s, e in prune_overlapping_matches(found)]
            graph = ConTextGraph(targets=by_sent[sid], modifiers=mods, prune_on_modifier_overlap=False)
            graph.update_scopes()
            graph.apply_modifiers()
            for target, modifier in graph.edges:
                target._.modifiers += (modifier,)
            self._context.set_context_attributes(graph.edges)

    def _analyse(self, doc) -> dict:
        """``{class: {"adjs": set, "dirs": set}}`` of one document (see :meth:`_finish`)."""
        # 1. targets: longest match wins; blockers ("X|") are dropped after winning their span
        from spacy.tokens import Span
        from spacy.util import filter_spans

        strings = self.nlp.vocab.strings
        spans = [Span(doc, s, e, label=strings[m]) for m, s, e in self._target_matcher(doc)]
        targets = [s for s in filter_spans(spans) if not s.label_.startswith("X|")]
        if not targets:
            return {}
        doc.ents = targets
        sent = _sentence_ids(doc)
        self._apply_context(doc, sent)

        # 2. descriptors, clause ids and cue positions
        clause = _clause_ids(doc, self._descriptor_matcher, strings, sent)
        desc = clause.descriptors
        occupied = set()
        for t in targets:
            occupied.update(range(t.start, t.end))

        # 3. which mentions count
        kept = []  # (span, class)
        not_findings = set()  # anatomy without its qualifier: no mention at all
        for t in doc.ents:
            kind, cls = t.label_.split("|", 1)
            if kind == "C":
                qualifier = self._conditional_qualifier(t, cls, clause)
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
            mentions = _Mentions([m for m in doc.ents if (m.start, m.end) not in not_findings], clause)
            descriptor_tokens = {i for s, e, _, _ in desc for i in range(s, e)}
            # stops[i]: stop words before token i that are not descriptor words
            stops = [0]
            for tok in doc:
                stops.append(stops[-1] + (tok.is_stop and tok.i not in descriptor_tokens))
            for start, end, kind, name in desc:
                if any(i in occupied for i in range(start, end)):
                    continue  # a word inside a disease term ("enlarged heart") is not a descriptor
                host = _host(mentions, start, end, clause, stops)
                if host is None or (host.start, host.end) not in kept_ids:
                    continue
                cls = host.label_.split("|", 1)[1]
                record[cls]["adjs" if kind == "A" else "dirs"].add(name)
        return record

    def _finish(self, record: dict) -> dict:
        """The output record: sides merged, sorted lists, classes in ontology order."""
        onto = self.ontology
        for v in record.values():
            # "left and right effusions", "bilateral effusions, left small, right moderate":
            # both sides are one finding on both sides, so the sets compare equal in the scores
            if {"left", "right"} <= v["dirs"] and "bilateral" in onto.vocabulary.directions:
                v["dirs"] = (v["dirs"] - {"left", "right"}) | {"bilateral"}
        return {c: {"adjs": sorted(v["adjs"]), "dirs": sorted(v["dirs"])}
                for c, v in sorted(record.items(), key=lambda kv: onto.classes.index(kv[0]))}

    @staticmethod
    def _conditional_qualifier(t, cls, clause):
        """Anatomy ('heart', 'mediastinum') counts only with a qualifier of its class in its
        clause ('enlarged', 'widened'), no 'normal' cue there, and no negating word between
        the anatomy and the qualifier ('heart is not enlarged'). Returns the qualifier's
        (start, end), or None when the mention does not count."""
        cid = clause.ids[t.start]
        if cid in clause.normal_clauses:
            return None
        negating = clause.negating
        for s, e in clause.qualifiers.get((cls, cid), ()):
            lo, hi = (t.end, s) if s >= t.end else (e, t.start)
            if hi <= lo or negating[hi] == negating[lo]:
                return s, e
        return None


class _Clauses:
    """Per token: clause id (``ids``, -1 for a break) and sentence id (``sent``); the descriptor
    matches; qualifiers by (class, clause id); the clause ids holding a 'normal' cue; and
    ``negating[i]``, the number of negating words before token i."""

    __slots__ = ("ids", "sent", "descriptors", "qualifiers", "normal_clauses", "negating")


def _sentence_ids(doc) -> list[int]:
    sent, sid = [0] * len(doc), 0
    for tok in doc:
        if tok.is_sent_start and tok.i > 0:
            sid += 1
        sent[tok.i] = sid
    return sent


def _cap_sentences(doc, limit: int) -> None:
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
        if tok.text in _CLAUSE_PUNCT:
            last_punct = i
    if cut_any:  # one array write: setting Token.is_sent_start scans the whole doc every time
        import numpy

        doc.from_array(["SENT_START"], numpy.asarray(starts, dtype="int64").astype("uint64"))


def _clause_ids(doc, matcher, strings, sent) -> _Clauses:
    """Clause id of every token (-1 for a break), and the descriptor/cue matches of the doc.

    A clause ends at a sentence end, at ',', ';', ':', brackets, or at a clause-break word."""
    out = _Clauses()
    breaks = set()
    qualifiers, normals, out.descriptors = [], [], []
    for m, s, e in matcher(doc):
        kind, name = strings[m].split("|", 1)
        if kind == "B":
            breaks.update(range(s, e))
        elif kind == "Q":
            qualifiers.append((name, s, e))
        elif kind == "N":
            normals.append(s)
        else:
            out.descriptors.append((s, e, kind, name))
    out.descriptors = _longest_per_kind(out.descriptors)
    ids = [0] * len(doc)
    negating = [0] * (len(doc) + 1)
    cid = 0
    for tok in doc:
        if tok.i > 0 and sent[tok.i] != sent[tok.i - 1]:
            cid += 1
        negating[tok.i + 1] = negating[tok.i] + (tok.lower_ in _NEGATING_WORDS)
        if tok.i in breaks or tok.text in _CLAUSE_PUNCT:
            cid += 1
            ids[tok.i] = -1
            continue
        ids[tok.i] = cid
    out.ids, out.sent, out.negating = ids, sent, negating
    out.qualifiers = {}
    for name, s, e in qualifiers:  # in match order: the first one that counts wins
        out.qualifiers.setdefault((name, ids[s]), []).append((s, e))
    out.normal_clauses = {ids[s] for s in normals}
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


class _Mentions:
    """The mentions (non-overlapping, in order) grouped by clause id and by sentence, with their
    start and end positions for binary search."""

    def __init__(self, mentions, clause: _Clauses):
        self.by_clause: dict[int, tuple[list, list, list]] = {}
        self.by_sent: dict[int, tuple[list, list, list]] = {}
        for m in mentions:
            for key, groups in ((clause.ids[m.start], self.by_clause), (clause.sent[m.start], self.by_sent)):
                ms, starts, ends = groups.setdefault(key, ([], [], []))
                ms.append(m)
                starts.append(m.start)
                ends.append(m.end)

    @staticmethod
    def around(group, start: int, end: int):
        """(last mention ending at or before ``start``, first one starting at or after ``end``)."""
        if group is None:
            return None, None
        ms, starts, ends = group
        b = bisect.bisect_right(ends, start) - 1
        a = bisect.bisect_left(starts, end)
        return (ms[b] if b >= 0 else None), (ms[a] if a < len(ms) else None)


def _host(mentions: _Mentions, start: int, end: int, clause: _Clauses, stops: list[int]):
    """The mention a descriptor at [start, end) describes.

    In its clause: the following mention when the words in between can belong to one noun
    phrase (no stop word: "left lower lobe atelectasis"), else the preceding mention
    ("opacity in the right lower lobe", "effusion is small"), else the following one. In a
    clause with no mention ("small, bilateral effusions", "left and right effusions"): the first
    mention after it in the sentence, else the last one before it."""
    before, after = _Mentions.around(mentions.by_clause.get(clause.ids[start]), start, end)
    if after is not None:
        if before is None or stops[after.start] == stops[end]:
            return after
    if before is not None:
        return before
    earlier, later = _Mentions.around(mentions.by_sent.get(clause.sent[start]), start, end)
    return later if later is not None else earlier


def _split_at_sentences(text: str, limit: int) -> list[str]:
    """Pieces of at most ``limit`` characters, cut after a sentence end ('. ', '! ', '? ') where
    there is one, else after a ', ' or '; ', else at a space, else anywhere."""
    pieces, pos = [], 0
    while len(text) - pos > limit:
        window = text[pos:pos + limit]
        cut = 0
        for ends in ((". ", "! ", "? "), (", ", "; "), (" ",)):
            cut = max(window.rfind(p) + len(p) for p in ends)
            if cut > len(ends[0]):
                break
        if cut <= 2:
            cut = limit
        pieces.append(text[pos:pos + cut].strip())
        pos += cut
    pieces.append(text[pos:].strip())
    return [p for p in pieces if p]


# -- worker processes ----------------------------------------------------------------------------
_WORKER: EntityExtractor | None = None


def _worker_init(ontology_config, uncertain, use_sections, vocabulary):
    global _WORKER
    _WORKER = EntityExtractor(ontology_config, uncertain=uncertain, sections=use_sections,
                              vocabulary=vocabulary)


def _worker_run(texts: Sequence[str]) -> tuple[list[dict], list[tuple[int, str]]]:
    return _WORKER._extract_batch(texts)


def extract(texts: Iterable[str], **kwargs) -> list[dict]:
    """Convenience: ``EntityExtractor().extract(texts, **kwargs)``."""
    return EntityExtractor().extract(list(texts), **kwargs)
