"""EntityExtractor: free-text chest X-ray reports -> MedTrim meta-entity records.

Per report:

1. the text is normalized (``normalize.py``: control characters, bidi marks, combining accents,
   HTML), FINDINGS / IMPRESSION text is kept and de-id placeholders neutralized (``sections.py``);
2. the spaCy pipeline ``nlp`` (components in ``components.py``) analyses it:
   ``sentencizer``; ``medtrim_sentence_cap`` cuts a "sentence" longer than
   ``MAX_SENTENCE_TOKENS`` tokens (text without full stops) at a comma or semicolon where there is
   one; ``medtrim_targets`` finds the mentions (disease terms, conditional anatomy; the longest
   match wins, and terms that are not findings block the shorter ones inside them);
   ``medspacy_context`` (medspacy's ConText, once per sentence) marks each mention negated,
   uncertain, historical, hypothetical or family; ``medtrim_descriptors`` finds adjectives,
   directions, clause breaks, qualifiers and "normal" cues; ``medtrim_record`` attaches each
   adjective / direction to the nearest mention of its clause and writes ``doc._.medtrim_record``.

Every step works within a sentence, so the time is linear in a report's length. A report longer
than spaCy's ``nlp.max_length`` characters is analysed in pieces cut at sentence ends and their
records are merged. A report whose analysis fails gives ``{}`` and an :class:`ExtractionWarning`
naming it; the batch goes on. With ``n_process > 1`` worker processes each run the pipeline
over contiguous chunks of the reports and send back only records (:meth:`EntityExtractor.extract`).

spaCy and medspacy are imported when an extractor is built, not when medtrim_ext is imported.
"""

from __future__ import annotations

import os
import warnings
from collections import deque
from typing import Iterable, Sequence

from ..utils.checks import check_int
from .normalize import normalize_text
from .ontology import ExtractionOntology
from .rules import MAX_SENTENCE_TOKENS, UNCERTAIN_POLICIES, finish_record
from .sections import SectionFilter

__all__ = ["MAX_SENTENCE_TOKENS", "UNCERTAIN_POLICIES", "EntityExtractor", "ExtractionWarning", "extract"]


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
    """A report could not be analysed (it is recorded as ``{}``, no finding) or was cut, or the
    extraction could not run in worker processes as asked."""


class _ComponentFailure(Exception):
    """A pipeline component failed on a doc (noted by ``components.note_failure``)."""

    def __init__(self, component: str, error: str):
        super().__init__(f"{error} (in component {component!r})")
        self.component, self.error = component, error


class EntityExtractor:
    """Extract ``{disease: {"adjs": [...], "dirs": [...]}}`` records from report texts.

    Args:
        ontology: ``None`` for the packaged ``extraction.yaml``, a path to a YAML/JSON file of
            the same layout, a dict, or an :class:`ExtractionOntology`.
        uncertain: what a mention under an uncertainty cue ("may represent atelectasis",
            "possible pneumonia", "cannot exclude effusion") counts as. ``"positive"``:
            present, as in CheXpert's U-Ones policy, because a hedged finding is usually what the
            image shows and the triplets should group it with its certain cases. ``"negative"``
            (default): absent (for a conservative, high-precision label set).
        sections: use only FINDINGS/IMPRESSION sections when a report has them (default True).
        vocabulary: the Vocabulary whose canonical names the output uses (default: packaged).

    Negated, historical ("history of pneumonia"), hypothetical ("evaluate for pneumonia") and
    family mentions never count. An empty or blank report gives ``{}`` (no finding).
    ``nlp`` is the spaCy pipeline (``nlp.pipe_names``); ``nlp(text)`` analyses a text that is
    already preprocessed (:meth:`preprocess`) and puts its record in ``doc._.medtrim_record``.
    """

    def __init__(self, ontology=None, *, uncertain: str = "negative", sections: bool = True,
                 vocabulary=None):
        if uncertain not in UNCERTAIN_POLICIES:
            raise ValueError(f"uncertain must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
        if not isinstance(sections, bool):
            raise TypeError(f"sections must be a bool, got {type(sections).__name__}")
        # the packaged ontology travels in the pipeline config as None (small, and the same file)
        self._packaged = ontology is None and vocabulary is None
        self.ontology = ExtractionOntology.load(ontology, vocabulary=vocabulary)
        self.uncertain = uncertain
        self.use_sections = sections
        self._section_filter = SectionFilter(self.ontology.keep_sections, self.ontology.ignore_sections,
                                             self.ontology.deid_tokens)
        self._build()

    # -- pipeline construction -----------------------------------------------------------------
    def _build(self):
        """``self.nlp``: a blank English pipeline with the extraction components."""
        _quiet_medspacy_logs()
        import spacy

        from . import components

        settings = {"ontology": None, "vocabulary": None}
        if not self._packaged:
            settings = {"ontology": self.ontology.to_config(),
                        "vocabulary": components.vocabulary_config(self.ontology.vocabulary)}
        nlp = spacy.blank("en")
        nlp.add_pipe("sentencizer")
        nlp.add_pipe("medtrim_sentence_cap", config={"max_tokens": MAX_SENTENCE_TOKENS})
        nlp.add_pipe("medtrim_targets", config=settings)
        nlp.add_pipe("medtrim_context", name="medspacy_context", config=settings)
        nlp.add_pipe("medtrim_descriptors", config=settings)
        nlp.add_pipe("medtrim_record", config={**settings, "uncertain": self.uncertain})
        # a component's error is noted on its doc (doc._.medtrim_error), the batch goes on
        nlp.set_error_handler(components.note_failure)
        self.nlp, self._settings = nlp, settings

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

        ``n_process``: worker processes (``-1`` or ``0``: all cores; fewer than ``2 * batch_size``
        texts are analysed in this process). The texts are cut into contiguous chunks of
        ``batch_size``; each worker runs ``nlp.pipe`` serially over its chunks and sends back
        only their records and problems, which are put together in order. Workers are forked
        where the platform can (they inherit this extractor and its ``nlp``), else spawned (each
        rebuilds the pipeline from its JSON settings). spaCy's own ``nlp.pipe(n_process=)`` is
        not used: it sends every Doc back to the parent, which costs more than the analysis (on
        the 3,955 IU reports with 2 processes: about 8 s instead of 0.8 s, 1.5 s serially).
        ``progress``: a tqdm bar (per report; per chunk with workers); ``ids``: the reports'
        names for warnings (default: ``texts[i]``).
        Raises ``TypeError`` naming the first text that is not a ``str``. A report whose analysis
        fails does not stop the batch: its record is ``{}`` and an :class:`ExtractionWarning`
        names it and the error (also when it failed in a worker).
        """
        texts = _checked_texts(texts)
        if ids is not None:
            ids = list(ids)
            if len(ids) != len(texts):
                raise ValueError(f"ids ({len(ids)}) and texts ({len(texts)}) differ in length")
        n_process = check_int("n_process", n_process, minimum=-1)
        batch_size = check_int("batch_size", batch_size)
        if n_process <= 0:
            n_process = os.cpu_count() or 1
        if len(texts) < 2 * batch_size:
            n_process = 1  # starting workers would cost more than they save
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(texts), desc="extracting", unit="report")
        out: list[dict] = []

        def collect(records: list[dict], problems: list[tuple[int, str]], offset: int) -> None:
            out.extend(records)
            for k, note in problems:
                name = f"report {ids[offset + k]!r}" if ids is not None else f"texts[{offset + k}]"
                warnings.warn(f"{name}: {note}", ExtractionWarning, stacklevel=3)
            if bar is not None:
                bar.update(len(records))

        try:
            if n_process == 1:
                for k, (record, note) in enumerate(self._records(texts, batch_size)):
                    collect([record], [(0, note)] if note else [], k)
            else:
                for start, records, problems in self._parallel(texts, n_process, batch_size):
                    collect(records, problems, start)
            return out
        finally:
            if bar is not None:
                bar.close()

    # -- work ----------------------------------------------------------------------------------
    def _parallel(self, texts: list[str], n_process: int, batch_size: int):
        """``(start, records, problems)`` of the chunks of ``batch_size`` texts, in order, from a
        pool of ``n_process`` workers."""
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        starts = range(0, len(texts), batch_size)
        chunks = [texts[i:i + batch_size] for i in starts]
        if "fork" in mp.get_all_start_methods():
            # a forked worker inherits this extractor (nothing is pickled, nothing rebuilt)
            context, initargs = mp.get_context("fork"), (self, None)
        else:  # spawned: each worker rebuilds the pipeline from the JSON settings
            context, initargs = mp.get_context("spawn"), (None, self._worker_settings())
        with ProcessPoolExecutor(n_process, mp_context=context, initializer=_worker_init,
                                 initargs=initargs) as pool:
            for start, (records, problems) in zip(starts, pool.map(_worker_run, chunks,
                                                                    [batch_size] * len(chunks))):
                yield start, records, problems

    def _worker_settings(self) -> dict:
        """JSON settings that rebuild this extractor (and its pipeline) in a spawned worker."""
        return {"ontology": self._settings["ontology"], "vocabulary": self._settings["vocabulary"],
                "uncertain": self.uncertain, "sections": self.use_sections}

    def _chunk(self, texts: list[str], batch_size: int) -> tuple[list[dict], list[tuple[int, str]]]:
        """Records of ``texts`` and ``(position, note)`` of each report that failed or was cut
        (what a worker sends back: plain values, no Docs)."""
        records, problems = [], []
        for k, (record, note) in enumerate(self._records(texts, batch_size)):
            records.append(record)
            if note:
                problems.append((k, note))
        return records, problems

    def _records(self, texts: list[str], batch_size: int):
        """``(record, note or None)`` of every text, in order, analysed in this process.

        The pieces of all reports go through one ``nlp.pipe``; ``pending`` holds the reports
        whose docs have not all come back. Docs come back in order, so each one belongs to the
        first pending report that made it; a report passed over lost its docs (the pipeline
        dropped them)."""
        pending: deque[_Report] = deque()
        docs = self.nlp.pipe(self._pieces(texts, pending), batch_size=batch_size)
        for doc in docs:
            while pending[0].complete or not pending[0].take(doc):
                yield self._result(pending.popleft())
            if pending[0].complete:
                yield self._result(pending.popleft())
        while pending:
            yield self._result(pending.popleft())

    def _pieces(self, texts: list[str], pending: deque):
        """The docs of every report's pieces; each report is appended to ``pending`` before its
        docs are handed out."""
        limit = self.nlp.max_length
        for text in texts:
            report = _Report()
            pending.append(report)
            try:
                clean = self.preprocess(text)
                if len(clean) > limit:
                    # spaCy refuses texts over nlp.max_length (its memory guard): analyse the
                    # report in pieces cut at sentence ends; every step is sentence-local
                    report.pieces = _split_at_sentences(clean, limit)
                    report.note = (f"{len(clean):,} characters, more than spaCy's nlp.max_length "
                                   f"({limit:,}): analysed in {len(report.pieces)} pieces cut at "
                                   "sentence ends")
                elif clean:
                    report.pieces = [clean]
                # made here, a doc that the pipeline drops can still be read
                report.made = [self.nlp.make_doc(p) for p in report.pieces]
            except Exception as exc:  # one report must not stop the others: say which one
                report.error = _failure(f"{type(exc).__name__}: {exc}")
                continue
            yield from report.made

    def _result(self, report: "_Report") -> tuple[dict, str | None]:
        """A finished report's record and note."""
        if report.error is None and len(report.docs) < len(report.pieces):
            report.error = report.lost()
        if report.error is not None:
            return {}, report.error
        try:
            merged: dict[str, dict[str, set]] = {}
            for doc in report.docs:
                for cls, v in self._analyse(doc).items():
                    m = merged.setdefault(cls, {"adjs": set(), "dirs": set()})
                    m["adjs"] |= v["adjs"]
                    m["dirs"] |= v["dirs"]
        except _ComponentFailure as exc:
            return {}, _failure(exc.error, exc.component)
        except Exception as exc:  # one report must not stop the others: say which one
            return {}, _failure(f"{type(exc).__name__}: {exc}")
        return self._finish(merged), report.note

    def _analyse(self, doc) -> dict:
        """``{class: {"adjs": set, "dirs": set}}`` of one analysed doc, before the sides are
        merged; raises :class:`_ComponentFailure` when a component failed on the doc."""
        failure = doc._.medtrim_error
        if failure is not None:
            raise _ComponentFailure(failure["component"], failure["error"])
        raw = doc._.medtrim_raw_record
        if raw is None:
            raise RuntimeError("the medtrim_record component did not run on the doc")
        return {cls: {"adjs": set(v["adjs"]), "dirs": set(v["dirs"])} for cls, v in raw.items()}

    def _finish(self, record: dict) -> dict:
        """The output record: sides merged, sorted lists, classes in ontology order."""
        onto = self.ontology
        return finish_record(record, onto.classes, "bilateral" in onto.vocabulary.directions)


def _failure(error: str, component: str | None = None) -> str:
    """The warning's text for a report recorded as no finding because of ``error``."""
    where = f" in component {component!r}" if component else ""
    return f"extraction failed ({error}){where}; recorded as no finding"


class _Report:
    """One report on its way through the pipeline: its pieces (texts), the docs made of them,
    the docs back so far, and ``next``, its first piece not yet back."""

    __slots__ = ("pieces", "made", "docs", "next", "error", "note")

    def __init__(self):
        self.pieces, self.made, self.docs = [], [], []
        self.next = 0
        self.error = self.note = None

    @property
    def complete(self) -> bool:
        return self.error is not None or self.next == len(self.pieces)

    def take(self, doc) -> bool:
        """Keep ``doc`` if it is one of this report's docs still to come; the ones before it
        are lost."""
        for k in range(self.next, len(self.made)):
            if doc is self.made[k]:
                self.docs.append(doc)
                self.next = k + 1
                return True
        return False

    def lost(self) -> str:
        """Why a piece did not come back: a component failed on its doc and the pipeline
        dropped it (spaCy's own components do, after the error handler)."""
        back = {id(d) for d in self.docs}
        for doc in self.made:
            failure = doc._.medtrim_error if id(doc) not in back else None
            if failure is not None:
                return _failure(failure["error"], failure["component"])
        return _failure("the pipeline dropped its doc")


def _checked_texts(texts) -> list[str]:
    """``texts`` as a list, after checking that every item is a ``str``."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string (wrap it in a list)")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
    return texts


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
# The one per-process state: the extractor of a pool worker, set by the pool initializer (forked:
# the parent's, inherited; spawned: rebuilt from its JSON settings). Workers run nlp.pipe serially
# and send back records, not Docs: spaCy's nlp.pipe(n_process=) ships every Doc back to the
# parent (Doc.to_bytes / from_bytes), which costs more than the analysis itself.
_WORKER: EntityExtractor | None = None


def _worker_init(extractor: EntityExtractor | None, settings: dict | None) -> None:
    global _WORKER
    if extractor is None:
        vocabulary = settings["vocabulary"]
        if vocabulary is not None:
            from ..entities.vocabulary import Vocabulary

            vocabulary = Vocabulary.from_dict(vocabulary, source="<pipeline config>")
        extractor = EntityExtractor(settings["ontology"], uncertain=settings["uncertain"],
                                    sections=settings["sections"], vocabulary=vocabulary)
    _WORKER = extractor


def _worker_run(texts: list[str], batch_size: int) -> tuple[list[dict], list[tuple[int, str]]]:
    return _WORKER._chunk(texts, batch_size)


def extract(texts: Iterable[str], **kwargs) -> list[dict]:
    """Convenience: ``EntityExtractor().extract(texts, **kwargs)``."""
    return EntityExtractor().extract(list(texts), **kwargs)
