"""One rule for study ids, whichever file they come from (report tables, report trees, IU
archives, records files, manifests, ground-truth files).

- **Key names.** An item's id is under ``study_id`` or ``id`` (tables: the first of the reader's
  id columns; JSON: either key; both with different values is an error).
- **Values.** An id is a string or an integer (a whole float, as pandas stores an integer column
  with gaps, counts as that integer); its text (an integer's decimal digits, a string as written)
  is the id. ``true``, ``1.5``, lists and objects are refused by name,
  so that ``true`` does not quietly become ``"True"``. Because the text is the id, the number
  ``1`` and the string ``"1"`` are the same id: in one file they are a repeat (below).
- **Missing.** No id, ``null``, NaN or an empty (or all-space) string: the item gets a generated id,
  ``"#<position>"`` (its 0-based position in the file), with more ``#`` in front while that
  equals an id the file gives, so a generated id never equals a given one.
- **Repeats.** Two items with one id raise ``ValueError`` naming both places, unless the source
  legitimately repeats a study: a manifest lists each image of a study on its own row, and a
  records file may hold several records of one study (they never pair with each other). There
  equal ids mean one study, and a repeat must be written the same way (``1`` on one line and
  ``"1"`` on another raises, naming both).
"""

from __future__ import annotations

import numbers
from typing import Sequence

ID_KEYS = ("study_id", "id")


def id_text(value, where: str) -> str | None:
    """The text of one id value, or None when it is missing (None, "", spaces only); other kinds
    raise ``ValueError`` naming ``where``."""
    if value is None:
        return None
    if isinstance(value, bool) or type(value).__name__ == "bool_":   # before int: bool is an int
        raise ValueError(f"{where}: an id must be a string or an integer, got the boolean "
                         f"{str(value).lower()}")
    if isinstance(value, numbers.Integral):   # int, numpy integers (a Parquet column via pandas)
        return str(int(value))
    if isinstance(value, float):
        if value != value:   # NaN: a gap in a numeric column
            return None
        if value.is_integer():   # pandas stores an integer column with gaps as floats
            return str(int(value))
    if isinstance(value, str):
        return value if value.strip() else None   # kept as written: " x" is not "x"
    raise ValueError(f"{where}: an id must be a string or an integer, got {type(value).__name__} "
                     f"{str(value)[:60]!r}")


def item_id(item: dict, where: str):
    """The raw id of a JSON object: its ``study_id`` or ``id`` (equal when both are there)."""
    present = [k for k in ID_KEYS if k in item and item[k] is not None]
    if len(present) == 2 and id_text(item["study_id"], where) != id_text(item["id"], where):
        raise ValueError(f"{where}: 'study_id' {item['study_id']!r} and 'id' {item['id']!r} differ; "
                         "give one of them")
    return item[present[0]] if present else None


def resolve_ids(values: Sequence, places: Sequence[str], source: str, *,
                allow_repeats: bool = False) -> tuple[list[str], list[bool]]:
    """The ids of one file's items by the rule above: ``(ids, given)``, where ``given[k]`` says
    whether item ``k``'s id came from the file. ``values`` are the raw ids (None: missing),
    ``places`` name each item in messages ("line 3", "row 0", a path)."""
    texts = [id_text(v, f"{source}: {p}") for v, p in zip(values, places)]
    first: dict[str, int] = {}
    for k, t in enumerate(texts):
        if t is None:
            continue
        j = first.setdefault(t, k)
        if j == k:
            continue
        if not allow_repeats:
            raise ValueError(
                f"{source}: study id {t!r} is given twice, at {places[j]} ({_shown(values[j])}) and "
                f"at {places[k]} ({_shown(values[k])}); every study needs its own id (an item "
                "without one gets a generated id)")
        if _is_number(values[j]) != _is_number(values[k]):   # 1 and "1": one study, or a slip?
            raise ValueError(
                f"{source}: study id {t!r} is written as {_shown(values[j])} at {places[j]} and as "
                f"{_shown(values[k])} at {places[k]}; write one study's id one way")
    taken = {t for t in texts if t is not None}
    ids = []
    for k, t in enumerate(texts):
        if t is None:
            t = f"#{k}"
            while t in taken:
                t = "#" + t
            taken.add(t)
        ids.append(t)
    return ids, [t is not None for t in texts]


def _is_number(value) -> bool:
    return isinstance(value, numbers.Number)


def _shown(value) -> str:
    """How a raw id looked, so that a repeat of ``1`` and ``"1"`` is visible as such."""
    return f"the number {value}" if _is_number(value) else repr(value)
