"""The rules that turn a report's matches into its record (no spaCy import: they read Docs only).

Input: a Doc whose ``doc.ents`` are the mentions (labels ``"D|class"`` for a disease term,
``"C|class"`` for conditional anatomy) marked by ConText (``span._.is_negated`` ...), and the
descriptor matches ``(start, end, kind, name)`` of the ``medtrim_descriptors`` component, kinds
``A`` adjective, ``R`` direction, ``Q`` qualifier of conditional anatomy, ``N`` "normal" cue and
``B`` clause break. Output: ``{class: {"adjs": set, "dirs": set}}`` (:func:`build_record`), and the
record as the extractor returns it (:func:`finish_record`).
"""

from __future__ import annotations

import bisect
import re

UNCERTAIN_POLICIES = ("positive", "negative")
# Longest run of tokens analysed as one sentence. ConText compares every pair of modifiers of a
# sentence, so a report without full stops would take quadratic time; real sentences are far
# shorter (the longest of the 3,955 IU reports has 47 tokens).
MAX_SENTENCE_TOKENS = 200
NEGATING_WORDS = frozenset({"no", "not", "without", "nor", "never", "n't"})
CLAUSE_PUNCT = frozenset({",", ";", ":", "(", ")", "[", "]"})
# Structured "finding: value" lines ("Pneumothorax: none.", "Consolidation - negative"): ConText
# ends a cue's scope at ':' (medspacy issue #155), so a value that says "absent" is read here.
# The value must be the whole rest of the clause: "Effusion: no change" is no negation.
FIELD_SEPARATORS = frozenset({":", "-", "--", "\u2013", "\u2014", "="})
FIELD_NEGATIVE_VALUES = frozenset({
    "none", "absent", "negative", "no", "nil", "not seen", "not present", "not identified",
    "not visualized", "not visible", "none seen", "none identified", "resolved"})
_FIELD_LIST_WORDS = frozenset({",", "and", "or", "/"})
# Anatomy decides the class: "collapse" is atelectasis in a lung, but "collapse of the T8
# vertebral body" is a vertebral (compression-type) deformity, which is no class of its own here
# (as "compression deformity" in the ontology's not_findings): such a mention does not count.
COLLAPSE_TERMS = frozenset({"collapse", "collapsed", "collapsing"})
SPINE_WORDS = frozenset({"vertebra", "vertebrae", "vertebral", "spine", "spinal", "endplate",
                         "endplates", "lumbar", "thoracolumbar", "vertebroplasty", "kyphoplasty"})
_SPINE_LEVEL = re.compile(r"^[tl]-?(?:[1-9]|1[0-2])$")


def sentence_ids(doc) -> list[int]:
    """Sentence number of every token (0 for all when the doc has no sentence boundaries)."""
    sent, sid = [0] * len(doc), 0
    for tok in doc:
        if tok.is_sent_start and tok.i > 0:
            sid += 1
        sent[tok.i] = sid
    return sent


def build_record(doc, matches, *, count_uncertain: bool) -> dict:
    """``{class: {"adjs": set, "dirs": set}}`` of one analysed doc (before sides are merged).

    ``count_uncertain``: whether a mention under an uncertainty cue counts as present.
    """
    ents = list(doc.ents)  # doc.ents makes new Span objects each time: once is enough
    if not ents:
        return {}
    clause = _clause_ids(doc, matches, sentence_ids(doc))
    occupied = set()
    for t in ents:
        occupied.update(range(t.start, t.end))
    kept, not_findings = _counted_mentions(ents, clause, occupied, count_uncertain)
    record: dict[str, dict[str, set]] = {}
    for _, cls in kept:
        record.setdefault(cls, {"adjs": set(), "dirs": set()})
    if kept:
        _attach_descriptors(doc, ents, record, kept, not_findings, clause, occupied)
    return record


def finish_record(record: dict, classes, merge_sides: bool) -> dict:
    """The output record: sides merged, sorted lists, classes in ``classes`` order.

    ``merge_sides``: whether left + right becomes "bilateral" (the vocabulary has that name)."""
    for v in record.values():
        # "left and right effusions", "bilateral effusions, left small, right moderate":
        # both sides are one finding on both sides, so the sets compare equal in the scores
        if merge_sides and {"left", "right"} <= v["dirs"]:
            v["dirs"] = (v["dirs"] - {"left", "right"}) | {"bilateral"}
    order = {c: i for i, c in enumerate(classes)}
    return {c: {"adjs": sorted(v["adjs"]), "dirs": sorted(v["dirs"])}
            for c, v in sorted(record.items(), key=lambda kv: order[kv[0]])}


# -- which mentions count ----------------------------------------------------------------------
def _counted_mentions(ents, clause, occupied: set, count_uncertain: bool):
    """The mentions that count, as ``[(span, class)]``, and the ``(start, end)`` of the anatomy
    mentions that are no mention at all (no qualifier). ``occupied`` gains the qualifiers' tokens."""
    kept, not_findings = [], set()
    ent_at = {m.start: m.end for m in ents}  # mention start -> end, for field names in a list
    spine_clauses = None  # clause ids naming the spine, found once when a "collapse" needs them
    for t in ents:
        kind, cls = t.label_.split("|", 1)
        if kind == "C":
            qualifier = _conditional_qualifier(t, cls, clause)
            if qualifier is None:
                not_findings.add((t.start, t.end))
                continue
            occupied.update(range(*qualifier))  # "enlarged" made it cardiomegaly: not an adjective too
        if t._.is_negated or t._.is_historical or t._.is_hypothetical or t._.is_family:
            continue
        if _negative_field_value(t, ent_at, clause.sent):
            continue
        if t.text.lower() in COLLAPSE_TERMS:
            if spine_clauses is None:
                spine_clauses = {clause.ids[tok.i] for tok in t.doc
                                 if tok.lower_ in SPINE_WORDS or _SPINE_LEVEL.match(tok.lower_)}
            if clause.ids[t.start] in spine_clauses:
                continue
        if t._.is_uncertain and not count_uncertain:
            continue
        kept.append((t, cls))
    return kept, not_findings


def _negative_field_value(t, ent_at: dict, sent) -> bool:
    """Whether ``t`` is the name of a structured field whose value says it is absent:
    "Pneumothorax: none.", "Effusion: absent", "Consolidation - negative", "Pneumothorax or
    effusion: none". Other mentions, ',', 'and', 'or' may stand between the name and the
    separator; the value runs to the end of the clause (sentence end, punctuation, line break,
    the next mention)."""
    doc = t.doc
    i, n = t.end, len(doc)
    while i < n and sent[i] == sent[t.start] and doc[i].text not in FIELD_SEPARATORS:
        if i in ent_at:
            i = ent_at[i]
        elif doc[i].lower_ in _FIELD_LIST_WORDS:
            i += 1
        else:
            return False
    if i >= n or sent[i] != sent[t.start] or doc[i].text not in FIELD_SEPARATORS:
        return False
    value = []
    for tok in doc[i + 1:]:
        if (sent[tok.i] != sent[tok.i - 1] or tok.is_space or tok.is_punct or tok.i in ent_at
                or tok.text in CLAUSE_PUNCT):
            break  # the next field's name ends the value too (line breaks may be gone)
        value.append(tok.lower_)
        if len(value) > 3:
            return False
    return " ".join(value) in FIELD_NEGATIVE_VALUES


def _conditional_qualifier(t, cls, clause):
    """Anatomy ('heart', 'mediastinum') counts only with a qualifier of its class in its clause
    ('enlarged', 'widened'), no 'normal' cue there, and no negating word between the anatomy and
    the qualifier ('heart is not enlarged'). Returns the qualifier's (start, end), or None when
    the mention does not count."""
    cid = clause.ids[t.start]
    if cid in clause.normal_clauses:
        return None
    negating = clause.negating
    found = clause.qualifiers.get((cls, cid), ())
    starts = {s: k for k, (s, _) in enumerate(found)}
    for s, e in found:
        lo, hi = (t.end, s) if s >= t.end else (e, t.start)
        if hi <= lo or negating[hi] == negating[lo]:
            # of adjacent qualifiers the last is the head ("borderline enlarged": "enlarged");
            # the words before it stay free to be adjectives ("borderline" -> mild)
            while e in starts:
                s, e = found[starts[e]]
            return s, e
    return None


def _attach_descriptors(doc, ents, record, kept, not_findings, clause, occupied) -> None:
    """Add each adjective / direction to the record of the nearest mention of its clause
    (negated mentions included, so that the words of a negated finding do not drift to another)."""
    kept_ids = {(t.start, t.end) for t, _ in kept}
    mentions = _Mentions([m for m in ents if (m.start, m.end) not in not_findings], clause)
    descriptor_tokens = {i for s, e, _, _ in clause.descriptors for i in range(s, e)}
    # stops[i]: stop words before token i that are not descriptor words
    stops = [0]
    for tok in doc:
        stops.append(stops[-1] + (tok.is_stop and tok.i not in descriptor_tokens))
    for start, end, kind, name in clause.descriptors:
        if any(i in occupied for i in range(start, end)):
            continue  # a word inside a disease term ("enlarged heart") is not a descriptor
        host = _host(mentions, start, end, clause, stops)
        if host is None:
            continue
        for m in _coordinated(doc, mentions, host, start, clause):
            if (m.start, m.end) in kept_ids:
                record[m.label_.split("|", 1)[1]]["adjs" if kind == "A" else "dirs"].add(name)


_COORDINATORS = frozenset({"and", "or", ",", "/"})


def _coordinated(doc, mentions, host, start: int, clause):
    """``host`` and, when the descriptor follows it in its own clause, the mentions coordinated
    with it just before ("atelectasis and infiltrate ... involving the right upper lobe": both
    are right-sided; in "atelectasis and cardiomegaly, mild" "mild" is the cardiomegaly's only)."""
    yield host
    if host.end > start or clause.ids[host.start] != clause.ids[start]:
        return
    group = mentions.by_sent.get(clause.sent[host.start])
    m = host
    while True:
        prev, _ = _Mentions.around(group, m.start, m.end)
        if prev is None or prev.end > m.start or prev.end == m.start or not all(
                doc[i].lower_ in _COORDINATORS for i in range(prev.end, m.start)):
            return
        yield prev
        m = prev


# -- clauses -----------------------------------------------------------------------------------
class _Clauses:
    """Per token: clause id (``ids``, -1 for a break) and sentence id (``sent``); the descriptor
    matches; qualifiers by (class, clause id); the clause ids holding a 'normal' cue; and
    ``negating[i]``, the number of negating words before token i."""

    __slots__ = ("ids", "sent", "descriptors", "qualifiers", "normal_clauses", "negating")


def _clause_ids(doc, matches, sent) -> _Clauses:
    """Clause id of every token (-1 for a break), and the descriptor/cue matches of the doc.

    A clause ends at a sentence end, at ',', ';', ':', brackets, or at a clause-break word."""
    out = _Clauses()
    breaks = set()
    qualifiers, normals, descriptors = [], [], []
    for s, e, kind, name in matches:
        if kind == "B":
            breaks.update(range(s, e))
        elif kind == "Q":
            qualifiers.append((name, s, e))
        elif kind == "N":
            normals.append(s)
        else:
            descriptors.append((s, e, kind, name))
    out.descriptors = _longest_per_kind(descriptors)
    ids = [0] * len(doc)
    negating = [0] * (len(doc) + 1)
    cid = 0
    for tok in doc:
        if tok.i > 0 and sent[tok.i] != sent[tok.i - 1]:
            cid += 1
        negating[tok.i + 1] = negating[tok.i] + (tok.lower_ in NEGATING_WORDS)
        if tok.i in breaks or tok.text in CLAUSE_PUNCT:
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


# -- the mention a descriptor describes --------------------------------------------------------
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
