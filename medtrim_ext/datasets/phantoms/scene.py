"""What is drawn for one phantom image: the nuisance (patient position and build, exposure) and
the geometry of each finding, as a plain dict that :mod:`.render` paints.

The nuisance comes from its own stream and every nuisance draw happens whatever the findings,
so two images of one ``(seed, i)`` with different forced findings share patient and exposure.

Beyond the built-in phantoms (:data:`.attributes.ATTRIBUTE_SPACE`), the geometry covers all of
:data:`.attributes.RENDER_SPACE` (checked by ``validate_render_attributes``): a zone may be a
tuple of zones (one instance per side and zone); new values of existing findings (opacity size,
calcified lesions, upper/mid atelectasis, moderate pneumothorax) draw only in their own branch,
after the draws the existing values make, and the new findings (pneumonia, pleural other,
fracture, enlarged cardiomediastinum) draw from the finding stream only, so images of the
built-in values stay bit for bit the same. Enlarged cardiomediastinum is a whole-chest finding:
its instance has no ``"sgn"``.
"""

from __future__ import annotations

import math

import numpy as np

# cardiothoracic ratio per heart state
CTR_RANGES = {None: (0.40, 0.48), "mild": (0.53, 0.57), "moderate": (0.59, 0.63),
              "severe": (0.66, 0.71)}
_EDEMA_GRADES = {"mild": 1.0, "moderate": 2.0, "severe": 3.0}
_ZONE_Y = {"upper": -0.42, "mid": -0.08, "lower": 0.18}  # zone centres, anatomical y
_SIGN = {"right": -1.0, "left": 1.0}  # patient's right is on the image's left


def _u(rng, lo, hi) -> float:
    return float(rng.uniform(lo, hi))


def _severity(attributes: dict, disease: str):
    """The size / severity of ``disease`` in ``attributes``, or None when it is absent."""
    return attributes.get(disease, {}).get("size") if disease in attributes else None


def _sample_nuisance(rng: np.random.Generator, attributes: dict) -> dict:
    """Patient, anatomy and exposure of one image (the dict order is the draw order)."""
    s = {
        "theta": math.radians(_u(rng, -4.0, 4.0)), "scale": _u(rng, 0.90, 1.06),
        "tx": _u(rng, -0.05, 0.05), "ty": _u(rng, -0.05, 0.05),
        "body_w": _u(rng, 0.80, 0.95), "spread": _u(rng, 0.95, 1.05), "lung_w": _u(rng, 0.92, 1.08),
        "apex": _u(rng, -0.76, -0.66), "base": _u(rng, 0.46, 0.58), "dome_h": _u(rng, 0.15, 0.24),
        "ctr": _u(rng, *CTR_RANGES[_severity(attributes, "cardiomegaly")]),
        "heart_y": _u(rng, 0.15, 0.21),
        "clav_y": _u(rng, -0.66, -0.58), "rib_strength": _u(rng, 0.0, 1.0),
        "rib_spacing": _u(rng, 0.15, 0.19), "rib_phase": _u(rng, 0.0, 1.0),
        "mark_phase": _u(rng, 0.0, 2 * math.pi),
        "bias": _u(rng, 0.0, 0.08), "gain": _u(rng, 0.85, 1.15), "gamma": _u(rng, 0.8, 1.25),
        "noise": _u(rng, 0.008, 0.03), "grad": _u(rng, -0.06, 0.06),
        "grad_angle": _u(rng, 0.0, 2 * math.pi),
        "marker": float(rng.random() < 0.5), "marker_x": float(rng.choice([-0.8, 0.8])),
    }
    # edema needs no draw: its grade (0 = none) sets the haze and strengthens the markings
    s["edema"] = _EDEMA_GRADES.get(_severity(attributes, "edema"), 0.0)
    return s


# -- the geometry of one finding in one lung (keyword order = draw order) ------------------------
def _effusion(rng, a) -> dict:
    return {"rise": {"small": 0.22, "moderate": 0.42, "large": 0.70}[a["size"]] + _u(rng, -0.03, 0.03)}


def _consolidation(rng, a) -> dict:
    return dict(dx=_u(rng, 0.0, 0.05), y=_ZONE_Y[a["zone"]] + _u(rng, -0.04, 0.04),
                rx=_u(rng, 0.24, 0.30), ry=_u(rng, 0.12, 0.15))


def _opacity(rng, a) -> dict:
    size = a.get("size")
    if size == "large":  # more, wider puffs over a larger area; "amp" is the painter's density
        return dict(px=rng.uniform(-0.20, 0.20, 12), py=_ZONE_Y[a["zone"]] + rng.uniform(-0.16, 0.16, 12),
                    ps=rng.uniform(0.055, 0.085, 12), amp=0.30)
    # seven puffs: centre offsets and widths
    g = dict(px=rng.uniform(-0.13, 0.13, 7), py=_ZONE_Y[a["zone"]] + rng.uniform(-0.1, 0.1, 7),
             ps=rng.uniform(0.035, 0.06, 7))
    if size == "small":  # the first four of today's puffs, fainter
        g = {k: v[:4] for k, v in g.items()}
        g["amp"] = 0.17
    return g


def _lesion(rng, a) -> dict:
    if a.get("form") == "calcified":
        # granuloma(s): 1-3 small, very dense, sharp-edged nodules near the zone centre
        n = int(rng.integers(1, 4))
        r = (0.025, 0.035) if a["size"] == "small" else (0.045, 0.06)
        return dict(form="calcified", dxs=rng.uniform(0.02, 0.16, n),
                    ys=_ZONE_Y[a["zone"]] + rng.uniform(-0.08, 0.08, n), rs=rng.uniform(*r, n))
    r = (0.055, 0.07) if a["size"] == "small" else (0.12, 0.15)
    return dict(dx=_u(rng, 0.02, 0.12), y=_ZONE_Y[a["zone"]] + _u(rng, -0.05, 0.05),
                r=_u(rng, *r), amp=0.30 if a["size"] == "small" else 0.36)


def _pneumothorax(rng, a) -> dict:
    # f: the collapsed lung's scale, smaller for a larger pneumothorax
    if a["size"] == "moderate":
        return {"f": _u(rng, 0.72, 0.78)}
    return {"f": _u(rng, 0.83, 0.88) if a["size"] == "small" else _u(rng, 0.60, 0.68)}


def _atelectasis(rng, a) -> dict:
    g = dict(rise=_u(rng, 0.20, 0.30), slope=_u(rng, -0.25, 0.10), th=_u(rng, 0.028, 0.036))
    if a["zone"] != "lower":  # upper / mid: the band at that zone's height ("y" replaces "rise")
        g["y"] = _ZONE_Y[a["zone"]] + _u(rng, -0.04, 0.04)
    return g


def _pneumonia(rng, a) -> dict:
    # a soft-edged ellipse (dx, y, rx, ry) and the puffs that mottle it (offsets in radii, widths)
    return dict(dx=_u(rng, 0.0, 0.05), y=_ZONE_Y[a["zone"]] + _u(rng, -0.04, 0.04),
                rx=_u(rng, 0.22, 0.28), ry=_u(rng, 0.13, 0.16),
                px=rng.uniform(-0.85, 0.85, 16), py=rng.uniform(-0.85, 0.85, 16),
                ps=rng.uniform(0.035, 0.055, 16))


_PLEURAL_TH = {None: (0.035, 0.045), "small": (0.022, 0.030), "large": (0.055, 0.070)}


def _pleural_other(rng, a) -> dict:
    # pleural thickening: th = thickness; upper: an apical cap reaching h below the apex;
    # mid/lower: a band along the lateral wall centred at y, half length hl
    th = _u(rng, *_PLEURAL_TH[a.get("size")])
    if a["zone"] == "upper":
        return dict(th=th, h=_u(rng, 0.18, 0.24))
    return dict(th=th, y=_ZONE_Y[a["zone"]] + _u(rng, -0.04, 0.04), hl=_u(rng, 0.10, 0.14))


def _fracture(rng, a) -> dict:
    # a rib segment crossing the lateral wall at height y: length, where the break is (inward of
    # the wall), the gap's width and the step (lateral fragment displaced down)
    return dict(y=_ZONE_Y[a["zone"]] + _u(rng, -0.04, 0.04), length=_u(rng, 0.22, 0.28),
                brk=_u(rng, 0.06, 0.10), gap=_u(rng, 0.035, 0.05), step=_u(rng, 0.03, 0.045))


def _cardiomediastinum(rng, a) -> dict:
    # the widened superior mediastinum: half width (normal: ~0.06, the spine), top, midline shift
    return dict(hw=_u(rng, 0.17, 0.21), top=_u(rng, -0.55, -0.48), dx=_u(rng, -0.02, 0.02))


# findings placed in a lung; cardiomegaly and edema are whole-chest states of the nuisance dict
GEOMETRY = {
    "pleural effusion": _effusion, "consolidation": _consolidation, "lung opacity": _opacity,
    "lung lesion": _lesion, "pneumothorax": _pneumothorax, "atelectasis": _atelectasis,
    "pneumonia": _pneumonia, "pleural other": _pleural_other, "fracture": _fracture,
    "enlarged cardiomediastinum": _cardiomediastinum,
}


def _sample_instances(rng: np.random.Generator, attributes: dict) -> list[dict]:
    """One geometry instance per finding, lung and zone (a bilateral finding has two, a tuple
    of zones one per zone); a finding without a side (the whole chest) has one, without "sgn"."""
    inst = []
    for disease, a in attributes.items():
        if disease not in GEOMETRY:
            continue
        if a.get("side") is None:
            inst.append({"kind": disease, **GEOMETRY[disease](rng, a)})
            continue
        sides = ("right", "left") if a["side"] == "bilateral" else (a["side"],)
        zone = a.get("zone")
        for side in sides:
            if isinstance(zone, tuple):
                for z in zone:
                    inst.append({"kind": disease, "sgn": _SIGN[side], **GEOMETRY[disease](rng, {**a, "zone": z})})
            else:
                inst.append({"kind": disease, "sgn": _SIGN[side], **GEOMETRY[disease](rng, a)})
    return inst


def sample_scene(rng: np.random.Generator, frng: np.random.Generator, attributes: dict) -> dict:
    """Nuisance (from ``rng``) and finding geometry (``"instances"``, from ``frng``) of one
    image."""
    s = _sample_nuisance(rng, attributes)
    s["instances"] = _sample_instances(frng, attributes)
    return s
