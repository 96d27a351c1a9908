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
# Hangul fillers: letters (category Lo) that render as nothing, so dropping Cf misses them
_FILLERS = re.compile("[\u115f\u1160\u3164\uffa0]")
# Greek and Cyrillic letters drawn like Latin ones ("effusi\u03bfn" with a Greek omicron); mapped
# only inside a word whose other letters are Latin, so Greek or Cyrillic words stay as they are
_LOOK_ALIKES = str.maketrans(
    "\u0391\u0392\u0395\u0396\u0397\u0399\u039a\u039c\u039d\u039f\u03a1\u03a4\u03a5\u03a7"  # Greek capitals
    "\u03b1\u03b9\u03ba\u03bd\u03bf\u03c1\u03c5\u03c7\u03b3"  # Greek a i k v o p u x y
    "\u0410\u0412\u0421\u0415\u041d\u0406\u0408\u041a\u041c\u041e\u0420\u0405\u0422\u0425\u0423"  # Cyrillic capitals
    "\u0430\u0441\u0435\u043e\u0440\u0445\u0443\u0456\u0458\u0455\u04bb\u0501\u051b\u051d",  # Cyrillic a c e o p x y i j s h d q w
    "ABEZHIKMNOPTYX" "aikvopuxy" "ABCEHIJKMOPSTXY" "aceopxyijshdqw")
_LOOK_ALIKE_CHARS = re.compile("[" + "".join(map(chr, _LOOK_ALIKES)) + "]")
_WORD = re.compile(r"[^\W\d_]+")  # a run of letters
# spaCy's tokenizer splits a run of punctuation off one piece at a time, re-scanning the rest each
# time: quadratic (10,000 "+" took 21 s, 2,700 "(+)" 15 s). A run of one character, or of one short
# unit ("(+)", "!?"), repeated more than three times is cut to three; what is left of a longer run
# without spaces is cut into pieces of _PUNCT_PIECE characters, so each piece costs a bounded time.
_PUNCT_RUN = re.compile(r"((?:[^\w\s]|_){1,4}?)\1{3,}")
_PUNCT_PIECE = 16
_PUNCT_LONG = re.compile(rf"((?:[^\w\s]|_){{{_PUNCT_PIECE}}})(?=[^\w\s]|_)")


def _latin_look_alikes(word: re.Match) -> str:
    w = word.group()
    if w.isascii() or not _LOOK_ALIKE_CHARS.search(w) or not re.search("[A-Za-z]", w):
        return w
    mapped = w.translate(_LOOK_ALIKES)
    return mapped if mapped.isascii() else w  # a letter that is not a look-alike: not a Latin word


def normalize_text(text: str) -> str:
    """The report with the characters that hide findings from the matchers removed or replaced.

    - lone surrogates (``"\\ud800"``) become U+FFFD; a valid surrogate pair becomes its character;
    - HTML comments and tags of known HTML elements are removed (``<br>``, ``<p>``, ``<div>`` ...
      end a line, ``<b>``, ``<span ...>`` ... become a space); entities with their ``;``
      (``&gt;``, ``&#160;``) are decoded;
    - non-ASCII text is NFKC-normalized (ligatures, full-width letters, no-break spaces) and
      combining marks are dropped (``"effusión"`` -> ``"effusion"``); format characters
      (bidi marks, zero-width spaces and joiners, soft hyphens, byte-order marks) and Hangul
      fillers are removed; Greek and Cyrillic letters that look Latin (``"effusiοn"`` with an
      omicron) become the Latin letter inside a word whose other letters are Latin;
    - control characters become a space (a line break for vertical tab, form feed and the Unicode
      line/paragraph separators); tabs, newlines and carriage returns stay;
    - a run of more than three of one punctuation character (``"+++++"``, ``"____"``) or of one
      short punctuation unit (``"(+)(+)(+)(+)"``) becomes three; a longer run of punctuation
      without spaces is cut by a space every 16 characters: spaCy's tokenizer takes time
      quadratic in the run's length.

    Plain printable ASCII without ``<``, ``&`` or such runs is returned unchanged.
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
        text = _FILLERS.sub("", text)
        if _LOOK_ALIKE_CHARS.search(text):
            text = _WORD.sub(_latin_look_alikes, text)
    text = _LINE_CONTROLS.sub("\n", text)
    text = _OTHER_CONTROLS.sub(" ", text)
    text = _PUNCT_RUN.sub(r"\1\1\1", text)
    return _PUNCT_LONG.sub(r"\1 ", text)
