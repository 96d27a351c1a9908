"""The ground-truth model of the phantoms: which findings a study has, with which attributes,
drawn from per-sample random streams.

Sample ``i`` of a seed depends only on ``(seed, i)``: :func:`_streams` gives it its own random
streams, so a larger ``n`` gives the same first samples.
"""

from __future__ import annotations

import hashlib

import numpy as np

DISEASES = ("pleural effusion", "lung opacity", "atelectasis", "cardiomegaly", "edema",
            "consolidation", "pneumothorax", "lung lesion")
NORMAL_SHARE = 0.30
# share of abnormal studies with each finding: CheXpert-like order; the rare classes are raised
# a little so that a few thousand phantoms hold enough of each for retrieval to be scored
PREVALENCE = {"pleural effusion": 0.30, "lung opacity": 0.26, "atelectasis": 0.22,
              "cardiomegaly": 0.22, "edema": 0.14, "consolidation": 0.12, "pneumothorax": 0.10,
              "lung lesion": 0.10}
TWO_FINDINGS_SHARE = 0.40
# disease -> attribute -> (values, probabilities); an attribute not listed is None
ATTRIBUTE_SPACE = {
    "pleural effusion": {"side": (("left", "right", "bilateral"), (0.35, 0.35, 0.30)),
                         "size": (("small", "moderate", "large"), (0.45, 0.35, 0.20))},
    "consolidation": {"side": (("left", "right"), (0.5, 0.5)),
                      "zone": (("upper", "mid", "lower"), (0.3, 0.3, 0.4))},
    "lung opacity": {"side": (("left", "right", "bilateral"), (0.4, 0.4, 0.2)),
                     "zone": (("upper", "mid", "lower"), (0.3, 0.3, 0.4))},
    "cardiomegaly": {"size": (("mild", "moderate", "severe"), (0.45, 0.35, 0.20))},
    "lung lesion": {"side": (("left", "right"), (0.5, 0.5)),
                    "size": (("small", "large"), (0.6, 0.4)),
                    "zone": (("upper", "mid", "lower"), (0.4, 0.3, 0.3))},
    "pneumothorax": {"side": (("left", "right"), (0.5, 0.5)),
                     "size": (("small", "large"), (0.6, 0.4))},
    "atelectasis": {"side": (("left", "right", "bilateral"), (0.4, 0.4, 0.2)),
                    "zone": (("lower",), (1.0,))},
    "edema": {"side": (("bilateral",), (1.0,)),
              "size": (("mild", "moderate", "severe"), (0.45, 0.35, 0.20))},
}
ATTRIBUTE_KEYS = ("side", "size", "zone")

# per-sample random streams: attributes, nuisance, finding geometry, noise, report. Separate
# streams keep the patient, exposure and noise of (seed, i) the same whatever its findings, so
# images of one (seed, i) with different forced attributes differ only by the findings.
_STREAMS = 5
_TAG = 0x50484E54  # keeps phantom streams apart from other users of (seed, i)


def _streams(seed: int, i: int) -> list[np.random.Generator]:
    """The random streams of sample ``i``: attributes, nuisance, geometry, noise, report."""
    ss = np.random.SeedSequence([_TAG, seed, i])
    return [np.random.default_rng(s) for s in ss.spawn(_STREAMS)]


def seed_from_text(text: str) -> int:
    """A 56-bit seed from a text (its SHA-256): reproducible, and apart for different texts."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:7], "little")


def split_seed(seed: int, split: str) -> int:
    """The generator seed of one split: disjoint, reproducible streams per (seed, split)."""
    return seed_from_text(f"medtrim-phantoms/{int(seed)}/{split}")


# -- checking --------------------------------------------------------------------------------------
def _clean_finding(disease: str, attrs, where: str, keys=ATTRIBUTE_KEYS, allowed=None,
                   zone_tuples: bool = False) -> dict:
    """One finding's attributes with all ``keys`` (None where the key does not apply).
    ``allowed``: key -> values (default: the values of :data:`ATTRIBUTE_SPACE`); with
    ``zone_tuples`` a list or tuple of zones becomes a tuple without repeats."""
    attrs = {} if attrs is None else attrs
    if not isinstance(attrs, dict):
        raise TypeError(f"{where}[{disease!r}] must be a dict, got {type(attrs).__name__}")
    unknown = set(attrs) - set(keys)
    if unknown:
        raise ValueError(f"{where}[{disease!r}]: unknown keys {sorted(unknown)}")
    if allowed is None:
        allowed = {key: values for key, (values, _) in ATTRIBUTE_SPACE[disease].items()}
    clean = {}
    for key in keys:
        value = attrs.get(key)
        if key not in allowed:
            if value is not None:
                raise ValueError(f"{where}[{disease!r}]: {key!r} does not apply, got {value!r}")
            clean[key] = None
        elif zone_tuples and key == "zone" and isinstance(value, (list, tuple)):
            zones = tuple(dict.fromkeys(value))  # order kept, repeats dropped
            bad = [z for z in zones if z not in allowed[key]]
            if not zones or bad:
                raise ValueError(f"{where}[{disease!r}]['zone'] must be one of {allowed[key]} or a "
                                 f"non-empty tuple of them, got {value!r}")
            clean[key] = zones
        elif value not in allowed[key]:
            raise ValueError(f"{where}[{disease!r}][{key!r}] must be one of {allowed[key]}, "
                             f"got {value!r}")
        else:
            clean[key] = value
    return clean


def _check_findings(attributes, where: str, known) -> None:
    if not isinstance(attributes, dict):
        raise TypeError(f"{where} must be a dict, got {type(attributes).__name__}")
    for disease in attributes:
        if disease not in known:
            raise ValueError(f"{where}: unknown disease {disease!r}; known: {list(known)}")


def validate_attributes(attributes, where: str = "attributes") -> dict:
    """Check one ground-truth dict against :data:`ATTRIBUTE_SPACE`; returns a normalised copy
    with all three keys (None where not applicable). ``ValueError`` names the bad entry."""
    if isinstance(attributes, dict) and len(attributes) > 2:
        raise ValueError(f"{where}: a phantom has at most 2 findings, got {len(attributes)}")
    _check_findings(attributes, where, ATTRIBUTE_SPACE)
    return {disease: _clean_finding(disease, attrs, where) for disease, attrs in attributes.items()}


# -- rendering from other sources ----------------------------------------------------------------
_SIDES = ("left", "right", "bilateral")
_ZONES = ("upper", "mid", "lower")
# What the renderer (:func:`.scene.sample_scene` + :func:`.render.render`) can draw, for ground
# truth that does not come from :func:`sample_attributes` (e.g. findings read from real reports):
# disease -> key -> allowed values; None in a tuple means "unspecified" is allowed (today's look);
# a key not listed must be None. A superset of ATTRIBUTE_SPACE (same values draw the same
# images), plus the key "form" and four more findings. A "zone" may also be a tuple of zones:
# one instance per (side, zone). No probabilities: callers choose the values.
RENDER_SPACE = {
    "pleural effusion": {"side": _SIDES, "size": ("small", "moderate", "large")},
    "consolidation": {"side": _SIDES, "zone": _ZONES},
    "lung opacity": {"side": _SIDES, "zone": _ZONES, "size": (None, "small", "large")},
    "cardiomegaly": {"size": ("mild", "moderate", "severe")},
    "lung lesion": {"side": _SIDES, "zone": _ZONES, "size": ("small", "large"),
                    "form": (None, "calcified")},
    "pneumothorax": {"side": _SIDES, "size": ("small", "moderate", "large")},
    "atelectasis": {"side": _SIDES, "zone": _ZONES},
    "edema": {"side": ("bilateral",), "size": ("mild", "moderate", "severe")},
    "pneumonia": {"side": _SIDES, "zone": _ZONES},
    "pleural other": {"side": _SIDES, "zone": _ZONES, "size": (None, "small", "large")},
    "fracture": {"side": _SIDES, "zone": _ZONES},
    "enlarged cardiomediastinum": {},
}
RENDER_KEYS = ATTRIBUTE_KEYS + ("form",)


def validate_render_attributes(attributes, where: str = "attributes") -> dict:
    """Check one dict of findings against :data:`RENDER_SPACE` (any number of findings);
    returns a normalised copy with all of :data:`RENDER_KEYS` (None where not applicable; zones
    of a list or tuple as a tuple). ``ValueError`` names the bad disease, key or value."""
    _check_findings(attributes, where, RENDER_SPACE)
    return {disease: _clean_finding(disease, attrs, where, RENDER_KEYS, RENDER_SPACE[disease],
                                    zone_tuples=True) for disease, attrs in attributes.items()}


# -- sampling --------------------------------------------------------------------------------------
def _choice(rng: np.random.Generator, values, probs):
    # inverse CDF of one uniform draw (Generator.choice with p= is ~10x slower per call)
    k = int(np.searchsorted(np.cumsum(probs), rng.random() * sum(probs), side="right"))
    return values[min(k, len(values) - 1)]


def sample_attributes(rng: np.random.Generator) -> dict:
    """Ground truth of one study: ``{}`` (normal) or 1-2 findings with their attributes."""
    if rng.random() < NORMAL_SHARE:
        return {}
    k = 2 if rng.random() < TWO_FINDINGS_SHARE else 1
    names = list(PREVALENCE)
    p = np.array([PREVALENCE[d] for d in names])
    chosen = rng.choice(len(names), size=k, replace=False, p=p / p.sum())
    out = {}
    for j in sorted(chosen):  # prevalence order, so the dict order does not depend on the draw
        disease = names[j]
        space = ATTRIBUTE_SPACE[disease]
        out[disease] = {key: (_choice(rng, *space[key]) if key in space else None)
                        for key in ATTRIBUTE_KEYS}
    return out


# -- captions --------------------------------------------------------------------------------------
_SHORT = {"pleural effusion": "eff", "lung opacity": "opac", "atelectasis": "atel",
          "cardiomegaly": "cardio", "edema": "edema", "consolidation": "consol",
          "pneumothorax": "ptx", "lung lesion": "lesion"}
_SIDE_LETTERS = {"left": "L", "right": "R", "bilateral": "B"}


def describe(attributes: dict) -> str:
    """A one-line caption: 'L eff small; cardiomegaly mild' ('normal' when empty)."""
    if not attributes:
        return "normal"
    parts = []
    for d, a in attributes.items():
        # edema is always bilateral and atelectasis always lower: the caption leaves those out
        words = [_SIDE_LETTERS.get(a.get("side"), "")] if a.get("side") and d != "edema" else []
        words.append(_SHORT[d])
        words += [a[k] for k in ("size", "zone") if a.get(k) and not (d == "atelectasis" and k == "zone")]
        parts.append(" ".join(w for w in words if w))
    return "; ".join(parts)
