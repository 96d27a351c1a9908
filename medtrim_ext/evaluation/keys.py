"""Relevance keys for retrieval: one int64 id per sample; two samples are relevant to each other
exactly when their ids are equal.

Ids are dense (``0 .. n_groups - 1``, in the order of the sorted group descriptions, like
``torch.unique(..., return_inverse=True)``) and are comparable **only within one call**: to
compare a query set with a separate gallery set, compute the keys of both in one call (e.g. on
``MetaEntities.cat([queries, gallery])`` or on ``list(q_attrs) + list(g_attrs)``) and split the
result. :func:`keys_for` gives both granularities the evaluation uses.

Granularities:

- ``disease``: the set of diseases (the paper's relevance). The empty set ("no finding") is a
  set of its own.
- ``fine``: the diseases plus their attributes. From ground-truth attribute dicts when a dataset
  has them (synthetic phantoms: ``{"pleural effusion": {"side": "left", "size": "small",
  "zone": None}}``), otherwise from meta-entities (per-disease adjective and direction sets).
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

import torch

from ..entities.meta_entities import MetaEntities
from ..entities.vocabulary import NO_FINDING

__all__ = ["attribute_disease_keys", "attribute_keys", "disease_set_keys", "entity_keys", "keys_for"]


def _dense(rows: torch.Tensor) -> torch.Tensor:
    """Dense int64 ids of the rows of a 2-D integer tensor (equal rows, equal id)."""
    if rows.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=rows.device)
    _, inverse = torch.unique(rows, dim=0, return_inverse=True)
    return inverse.to(torch.int64)


def _check_entities(entities) -> MetaEntities:
    if not isinstance(entities, MetaEntities):
        raise TypeError(f"entities must be a MetaEntities, got {type(entities).__name__}")
    return entities


def disease_set_keys(entities: MetaEntities) -> torch.Tensor:
    """Ids of the disease sets of ``entities``: int64 ``(N,)`` on the entities' device.

    Equal id = same set of diseases; "no finding" (the empty set) is one set like any other.
    """
    ents = _check_entities(entities)
    return _dense(ents.disease_bits.unsqueeze(1))


def entity_keys(entities: MetaEntities) -> torch.Tensor:
    """Ids of the full meta-entities: equal id = the same diseases and, for every disease, the
    same set of adjectives and the same set of directions (exact match). int64 ``(N,)``."""
    ents = _check_entities(entities)
    n = len(ents)
    c = ents.vocabulary.sizes[0]
    # descriptors of an absent disease carry no meaning; MetaEntities.from_masks already drops
    # them, but an instance built from raw bits might not
    present = ents.masks()[0].unsqueeze(-1).to(torch.int32)  # (N, C, 1)
    adj = ents.adjective_bits * present
    dirs = ents.direction_bits * present
    rows = torch.cat([ents.disease_bits.view(n, 1), adj.reshape(n, c * adj.shape[2]),
                      dirs.reshape(n, c * dirs.shape[2])], dim=1)
    return _dense(rows)


# -- ground-truth attribute dicts ---------------------------------------------------------------

def _norm_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: names must be non-empty strings, got {name!r}")
    return " ".join(name.strip().lower().split())


def _canonical_value(value: Any, where: str) -> Any:
    """A JSON-ready canonical form of one attribute value."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return " ".join(value.strip().lower().split())
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where}: attribute values must be finite, got {value!r}")
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        # a list of descriptors is a set: order and repeats do not matter
        items = {json.dumps(_canonical_value(v, where), sort_keys=True) for v in value}
        return [json.loads(s) for s in sorted(items)]
    if isinstance(value, Mapping):
        return {_norm_name(k, where): _canonical_value(v, where) for k, v in value.items()
                if v is not None}
    raise TypeError(f"{where}: attribute values must be str, number, bool, None, list or dict, "
                    f"got {type(value).__name__}")


def _canonical_attributes(attributes: Sequence[Mapping]) -> list[dict]:
    if isinstance(attributes, (str, bytes, Mapping)) or not isinstance(attributes, Sequence):
        raise TypeError("attributes must be a sequence of dicts, one per sample")
    out = []
    for i, item in enumerate(attributes):
        where = f"attributes[{i}]"
        if not isinstance(item, Mapping):
            raise TypeError(f"{where} must be a dict {{disease: {{attribute: value}}}}, "
                            f"got {type(item).__name__}")
        diseases: dict = {}
        for name, attrs in item.items():
            key = _norm_name(name, where)
            if key in diseases:
                raise ValueError(f"{where} lists disease {key!r} twice (after normalising case)")
            if attrs is None:
                attrs = {}
            if not isinstance(attrs, Mapping):
                raise TypeError(f"{where}[{name!r}] must be a dict of attributes or None, "
                                f"got {type(attrs).__name__}")
            diseases[key] = _canonical_value(attrs, f"{where}[{name!r}]")
        if NO_FINDING in diseases:
            if len(diseases) > 1:
                raise ValueError(f"{where} lists {NO_FINDING!r} together with diseases "
                                 f"{sorted(k for k in diseases if k != NO_FINDING)}")
            diseases = {}
        out.append(diseases)
    return out


def _ids_of_strings(strings: list[str]) -> torch.Tensor:
    # a dict, not np.unique: numpy's fixed-width strings would cost N x the longest string
    index = {s: i for i, s in enumerate(sorted(set(strings)))}
    return torch.tensor([index[s] for s in strings], dtype=torch.int64)


def attribute_keys(attributes: Sequence[Mapping]) -> torch.Tensor:
    """Ids of ground-truth attribute dicts ``{disease: {attribute: value}}``, one per sample:
    int64 ``(N,)`` on the CPU. Equal id = the same diseases with the same attributes.

    Canonical form (so that equal meaning gives equal ids): names and string values are
    lower-cased with whitespace collapsed; key order does not matter; an attribute whose value is
    ``None`` counts as absent (``{"zone": None}`` equals ``{}``); a disease mapped to ``None``
    has no attributes; lists are sets (order and repeats ignored); ``{}`` and
    ``{"no finding": ...}`` are both "no finding". Non-finite numbers raise ``ValueError``,
    values of other types ``TypeError``, both naming the sample.
    """
    canon = _canonical_attributes(attributes)
    return _ids_of_strings([json.dumps(d, sort_keys=True) for d in canon])


def attribute_disease_keys(attributes: Sequence[Mapping]) -> torch.Tensor:
    """Ids of the disease sets (the keys) of ground-truth attribute dicts: int64 ``(N,)``."""
    canon = _canonical_attributes(attributes)
    return _ids_of_strings([json.dumps(sorted(d)) for d in canon])


def keys_for(*, entities: MetaEntities | None = None,
             attributes: Sequence[Mapping] | None = None) -> dict[str, torch.Tensor]:
    """Both relevance keys of one sample set: ``{"disease": ids, "fine": ids}``, int64 ``(N,)``
    on the CPU.

    With ``attributes`` (ground truth) both keys come from them: the disease set is the set of
    their disease names and ``fine`` adds the attribute values. Without, both come from
    ``entities`` (:func:`disease_set_keys` and :func:`entity_keys`). When both are given they
    must have the same length; the ground truth decides.
    """
    if entities is None and attributes is None:
        raise ValueError("keys_for needs entities=... or attributes=...")
    if entities is not None:
        _check_entities(entities)
    if attributes is not None:
        keys = {"disease": attribute_disease_keys(attributes), "fine": attribute_keys(attributes)}
        if entities is not None and len(entities) != len(keys["fine"]):
            raise ValueError(f"entities has {len(entities)} samples but attributes has "
                             f"{len(keys['fine'])}")
        return keys
    return {"disease": disease_set_keys(entities).cpu(), "fine": entity_keys(entities).cpu()}
