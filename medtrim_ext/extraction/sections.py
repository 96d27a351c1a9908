"""Report text before tokenization: pick the sections that describe the image, neutralize de-id.

Only FINDINGS and IMPRESSION (and their synonyms in the ontology) describe this image; the
INDICATION / HISTORY / COMPARISON text names diseases the patient is *suspected* of or *had*
("Indication: rule out pneumonia"), which must not become findings.
"""

from __future__ import annotations

import re

DEID_PLACEHOLDER = "xxxx"


class SectionFilter:
    """Splits a report at known section headers and keeps the text of the image sections.

    Policy: when the report has at least one 'keep' header, only text under 'keep' headers is
    used; otherwise everything except text under 'ignore' headers (a report without headers is
    used whole). A header is a known name followed by ':' at the start of the text, of a line, or
    after a sentence end; unknown headers do not split (their text joins the current section).
    An ignored section also ends at a blank line.
    """

    def __init__(self, keep, ignore, deid_tokens=()):
        self.keep = frozenset(keep)
        self.ignore = frozenset(ignore)
        names = sorted(self.keep | self.ignore, key=len, reverse=True)  # longest first
        alt = "|".join(r"\s+".join(map(re.escape, n.split())) for n in names)
        self._header = re.compile(rf"(?:^|(?<=[\n.;])|(?<=[.;]\s))[ \t]*({alt})[ \t]*:", re.IGNORECASE)
        # IU writes de-identified words as XXXX (sometimes runs like "XXXX-XXXX"), MIMIC as ___:
        # each run becomes one placeholder token that is in no term list.
        extra = "|".join(re.escape(t) for t in deid_tokens if t.lower() != "xxxx")
        deid = r"\bX{3,}\b(?:[-/ ]*\bX{3,}\b)*|_{2,}" + (f"|\\b(?:{extra})\\b" if extra else "")
        self._deid = re.compile(deid)
        self._blank = re.compile(r"\n[ \t]*\n")

    def sections(self, text: str) -> list[tuple[str | None, str]]:
        """``[(header or None, text), ...]`` in order; header names are lowercased."""
        out: list[tuple[str | None, str]] = []
        pos, name = 0, None
        for m in self._header.finditer(text):
            out.append((name, text[pos:m.start()]))
            name, pos = " ".join(m.group(1).lower().split()), m.end()
        out.append((name, text[pos:]))
        # an ignored section ("INDICATION: ...") ends at a blank line: report templates put one
        # between sections, and the text after it is not part of the indication
        split: list[tuple[str | None, str]] = []
        for n, t in out:
            m = self._blank.search(t) if n in self.ignore else None
            if m:
                split += [(n, t[:m.start()]), (None, t[m.end():])]
            else:
                split.append((n, t))
        return [(n, t) for n, t in split if t.strip() or n is not None]

    def __call__(self, text: str) -> str:
        """The text to analyse: kept sections joined as separate sentences, de-id neutralized,
        whitespace collapsed (reports wrap lines mid-sentence)."""
        parts = self.sections(text)
        if any(n in self.keep for n, _ in parts):
            kept = [t for n, t in parts if n in self.keep]
        else:
            kept = [t for n, t in parts if n not in self.ignore]
        # " . " keeps the last sentence of one section from running into the next one
        joined = " .\n".join(t.strip() for t in kept if t.strip())
        joined = self._deid.sub(DEID_PLACEHOLDER, joined)
        return " ".join(joined.split())
