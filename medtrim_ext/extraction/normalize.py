"""Report text before section splitting: the characters that hide a finding from the matchers.

Reports copied out of HL7 messages, web pages, PDFs or word processors carry NUL and other control
characters, bidi and zero-width marks, combining accents, ligatures and full-width letters, HTML
tags and entities. spaCy's tokenizer keeps such a character inside the neighbouring word
(``"effusion.\\x00"`` is one token), so the phrase matchers miss the finding. A lone surrogate
(text decoded with ``errors="surrogateescape"``) cannot even be encoded for spaCy's string store.
"""

from __future__ import annotations

import html
import re
import unicodedata

# HTML a report may have been pasted with: only known tag names, so "<Heart size ..." or
# "XXXX<XXXX>" (IU de-identification) stay text. Block tags end a line (section headers start
# lines), inline ones become a space.
_BLOCK_TAGS = ("br|p|div|li|ul|ol|tr|td|th|table|tbody|thead|h[1-6]|hr|pre|blockquote|section|article|"
               "header|footer|body|html|head|title")
_INLINE_TAGS = ("b|i|u|s|em|strong|span|font|sup|sub|small|big|tt|code|a|img|mark|center|strike|del|ins|"
                "abbr|cite|q|label")
_BLOCK_TAG = re.compile(rf"</?(?:{_BLOCK_TAGS})(?:\s[^<>]{{0,500}})?/?>", re.IGNORECASE)
_INLINE_TAG = re.compile(rf"</?(?:{_INLINE_TAGS})(?:\s[^<>]{{0,500}})?/?>", re.IGNORECASE)
_COMMENT = re.compile(r"<!--.{0,2000}?-->", re.DOTALL)
# entities only with their ';' ("&gt;", "&#160;", "&#xA0;"): a bare "& lungs" or "R&D" stays
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_SURROGATE = re.compile("[\ud800-\udfff]")
# control characters: line-like ones end a line, the others become a space (NUL, ESC, DEL, C1)
_LINE_CONTROLS = re.compile("[\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
_OTHER_CONTROLS = re.compile("[\x00-\x08\x0e-\x1b\x1f\x7f-\x84\x86-\x9f]")


def normalize_text(text: str) -> str:
    """The report with the characters that hide findings from the matchers removed or replaced.

    - lone surrogates (``"\\ud800"``) become U+FFFD; a valid surrogate pair becomes its character;
    - HTML comments and tags of known HTML elements are removed (``<br>``, ``<p>``, ``<div>`` ...
      end a line, ``<b>``, ``<span ...>`` ... become a space); entities with their ``;``
      (``&gt;``, ``&#160;``) are decoded;
    - non-ASCII text is NFKC-normalized (ligatures, full-width letters, no-break spaces) and
      combining marks are dropped (``"effusión"`` -> ``"effusion"``); format characters
      (bidi marks, zero-width spaces and joiners, soft hyphens, byte-order marks) are removed;
    - control characters become a space (a line break for vertical tab, form feed and the Unicode
      line/paragraph separators); tabs, newlines and carriage returns stay.

    Plain printable ASCII without ``<`` or ``&`` is returned unchanged.
    """
    if _SURROGATE.search(text):
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if "<" in text:
        text = _COMMENT.sub(" ", text)
        text = _BLOCK_TAG.sub("\n", text)
        text = _INLINE_TAG.sub(" ", text)
    if "&" in text:
        text = _ENTITY.sub(lambda m: html.unescape(m.group()), text)
    if not text.isascii():
        text = unicodedata.normalize("NFKD", text)
        text = "".join(c for c in text if unicodedata.category(c) not in ("Mn", "Me", "Cf"))
        text = unicodedata.normalize("NFKC", text)
    text = _LINE_CONTROLS.sub("\n", text)
    return _OTHER_CONTROLS.sub(" ", text)
