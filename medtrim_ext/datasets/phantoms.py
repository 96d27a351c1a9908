"""Synthetic chest-radiograph phantoms with known findings and matching reports.

The built-in data of the demo: a seeded generator of frontal (PA) chest "radiographs" with known
pathology attributes, so that fine-grained retrieval (disease + side + size/severity + zone) can
be scored exactly from the ground truth.

Image convention: radiological, the patient faces the viewer, so the patient's **left** lung is
on the image's **right**. Bright = dense (bone, fluid, soft tissue), dark = air.

Each image is rendered from an additive density map in "anatomical" coordinates ``x, y`` in
``[-1, 1]`` (``y`` down), which a per-sample affine (patient position, rotation, size) maps to
pixels; then exposure, contrast, gamma, a smooth exposure gradient and noise are applied:

- anatomy: body outline, two lung fields with diaphragm domes and costophrenic angles, heart
  (its width is the cardiothoracic ratio), mediastinum, trachea, spine, clavicles, rib arcs of a
  random strength, vascular markings radiating from the hila, an optional corner marker;
- findings (about 30% of studies are normal, the others have 1-2 findings):

  ==================  ==========================  =======================================
  disease             attributes                  what it looks like
  ==================  ==========================  =======================================
  pleural effusion    side, size (small/moderate  fluid level from the costophrenic angle
                      /large)                     up, meniscus rising laterally
  consolidation       side, zone (upper/mid/      dense homogeneous region ("dense")
                      lower)
  lung opacity        side (also bilateral), zone  faint patchy puffs ("patchy")
  cardiomegaly        severity (mild/moderate/    a wider heart
                      severe)
  lung lesion         side, zone, size (small/    a round nodule or mass
                      large)
  pneumothorax        side, size (small/large)    lucent rim without markings at the apex
                                                  and lateral wall, a thin pleural line
  atelectasis         side (also bilateral),      a thin linear band above the dome
                      zone lower ("linear")
  edema               bilateral, severity         perihilar haze on both sides
  ==================  ==========================  =======================================

Sample ``i`` depends only on ``(seed, i)``: a larger ``n`` gives the same first samples.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .phantom_reports import attributes_to_record, compose_report

# -- the ground-truth model ----------------------------------------------------------------------
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
# cardiothoracic ratio per heart state
CTR_RANGES = {None: (0.40, 0.48), "mild": (0.53, 0.57), "moderate": (0.59, 0.63),
              "severe": (0.66, 0.71)}
_ZONE_Y = {"upper": -0.42, "mid": -0.08, "lower": 0.18}  # zone centres, anatomical y
_SIGN = {"right": -1.0, "left": 1.0}  # patient's right is on the image's left
# per-sample random streams: attributes, nuisance, finding geometry, noise, report. Separate
# streams keep the patient, exposure and noise of (seed, i) the same whatever its findings, so
# images of one (seed, i) with different forced attributes differ only by the findings.
_STREAMS = 5
_TAG = 0x50484E54  # keeps phantom streams apart from other users of (seed, i)


@dataclass
class PhantomSet:
    """``n`` phantoms: ``images`` uint8 ``(N, H, W)``; per sample a report, the ground-truth
    ``attributes`` (``{disease: {"side", "size", "zone"}}``), the ideal meta-entity ``records``
    and a ``study_id`` (``"phantom-s{seed}-{i:06d}"``)."""

    images: torch.Tensor
    reports: list
    attributes: list
    records: list
    study_ids: list
    seed: int = 0
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.reports)


# -- argument checks -------------------------------------------------------------------------------
def _check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def validate_attributes(attributes, where: str = "attributes") -> dict:
    """Check one ground-truth dict against :data:`ATTRIBUTE_SPACE`; returns a normalised copy
    with all three keys (None where not applicable). ``ValueError`` names the bad entry."""
    if not isinstance(attributes, dict):
        raise TypeError(f"{where} must be a dict, got {type(attributes).__name__}")
    if len(attributes) > 2:
        raise ValueError(f"{where}: a phantom has at most 2 findings, got {len(attributes)}")
    out = {}
    for disease, attrs in attributes.items():
        if disease not in ATTRIBUTE_SPACE:
            raise ValueError(f"{where}: unknown disease {disease!r}; known: {list(ATTRIBUTE_SPACE)}")
        attrs = {} if attrs is None else attrs
        if not isinstance(attrs, dict):
            raise TypeError(f"{where}[{disease!r}] must be a dict, got {type(attrs).__name__}")
        unknown = set(attrs) - set(ATTRIBUTE_KEYS)
        if unknown:
            raise ValueError(f"{where}[{disease!r}]: unknown keys {sorted(unknown)}")
        space = ATTRIBUTE_SPACE[disease]
        clean = {}
        for key in ATTRIBUTE_KEYS:
            value = attrs.get(key)
            if key not in space:
                if value is not None:
                    raise ValueError(f"{where}[{disease!r}]: {key!r} does not apply, got {value!r}")
                clean[key] = None
            elif value not in space[key][0]:
                raise ValueError(f"{where}[{disease!r}][{key!r}] must be one of {space[key][0]}, "
                                 f"got {value!r}")
            else:
                clean[key] = value
        out[disease] = clean
    return out


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


def _u(rng, lo, hi) -> float:
    return float(rng.uniform(lo, hi))


def _sample_scene(rng: np.random.Generator, frng: np.random.Generator, attributes: dict) -> dict:
    """Nuisance (patient, exposure; from ``rng``) and finding geometry (from ``frng``) of one
    image. Every nuisance draw happens whatever the attributes, so the nuisance of a stream does
    not depend on them."""
    heart = attributes.get("cardiomegaly", {}).get("size") if "cardiomegaly" in attributes else None
    s = {
        "theta": math.radians(_u(rng, -4.0, 4.0)), "scale": _u(rng, 0.90, 1.06),
        "tx": _u(rng, -0.05, 0.05), "ty": _u(rng, -0.05, 0.05),
        "body_w": _u(rng, 0.80, 0.95), "spread": _u(rng, 0.95, 1.05), "lung_w": _u(rng, 0.92, 1.08),
        "apex": _u(rng, -0.76, -0.66), "base": _u(rng, 0.46, 0.58), "dome_h": _u(rng, 0.15, 0.24),
        "ctr": _u(rng, *CTR_RANGES[heart]), "heart_y": _u(rng, 0.15, 0.21),
        "clav_y": _u(rng, -0.66, -0.58), "rib_strength": _u(rng, 0.0, 1.0),
        "rib_spacing": _u(rng, 0.15, 0.19), "rib_phase": _u(rng, 0.0, 1.0),
        "mark_phase": _u(rng, 0.0, 2 * math.pi),
        "bias": _u(rng, 0.0, 0.08), "gain": _u(rng, 0.85, 1.15), "gamma": _u(rng, 0.8, 1.25),
        "noise": _u(rng, 0.008, 0.03), "grad": _u(rng, -0.06, 0.06),
        "grad_angle": _u(rng, 0.0, 2 * math.pi),
        "marker": float(rng.random() < 0.5), "marker_x": float(rng.choice([-0.8, 0.8])),
    }
    s["edema"] = {"mild": 1.0, "moderate": 2.0, "severe": 3.0}.get(
        attributes.get("edema", {}).get("size") if "edema" in attributes else None, 0.0)
    # one geometry instance per finding and lung (a bilateral finding has two)
    rng = frng
    inst = []
    for disease, a in attributes.items():
        if disease in ("cardiomegaly", "edema"):
            continue
        sides = ("right", "left") if a["side"] == "bilateral" else (a["side"],)
        for side in sides:
            g = {"kind": disease, "sgn": _SIGN[side]}
            if disease == "pleural effusion":
                g["rise"] = {"small": 0.22, "moderate": 0.42, "large": 0.70}[a["size"]] + _u(rng, -0.03, 0.03)
            elif disease == "consolidation":
                g.update(dx=_u(rng, 0.0, 0.05), y=_ZONE_Y[a["zone"]] + _u(rng, -0.04, 0.04),
                         rx=_u(rng, 0.24, 0.30), ry=_u(rng, 0.12, 0.15))
            elif disease == "lung opacity":
                g.update(px=rng.uniform(-0.13, 0.13, 7), py=_ZONE_Y[a["zone"]] + rng.uniform(-0.1, 0.1, 7),
                         ps=rng.uniform(0.035, 0.06, 7))
            elif disease == "lung lesion":
                r = (0.055, 0.07) if a["size"] == "small" else (0.12, 0.15)
                g.update(dx=_u(rng, 0.02, 0.12), y=_ZONE_Y[a["zone"]] + _u(rng, -0.05, 0.05),
                         r=_u(rng, *r), amp=0.30 if a["size"] == "small" else 0.36)
            elif disease == "pneumothorax":
                g["f"] = _u(rng, 0.83, 0.88) if a["size"] == "small" else _u(rng, 0.60, 0.68)
            elif disease == "atelectasis":
                g.update(rise=_u(rng, 0.20, 0.30), slope=_u(rng, -0.25, 0.10), th=_u(rng, 0.028, 0.036))
            inst.append(g)
    s["instances"] = inst
    return s


# -- rendering -------------------------------------------------------------------------------------
def _sig(z):
    return 0.5 + 0.5 * np.tanh(0.5 * z)


def _lung(x, y, cx, hw, apex, base, dome_h, sgn, k):
    """Soft mask of one lung field: an elliptic apex, a straight lateral wall, and a diaphragm
    dome whose ends are the costophrenic (lateral) and cardiophrenic (medial) angles."""
    cy = np.float32(0.05)
    ry = cy - apex
    ex, ey = (x - cx) / hw, (y - cy) / ry
    top = (1 - ex * ex - ey * ey) * (0.5 * np.minimum(hw, ry))  # ~ signed distance to the edge
    wall = hw * (1 + 0.1 * np.clip(y - cy, 0, 1)) - np.abs(x - cx)
    m1 = np.where(y < cy, top, wall)
    q = np.clip(1 - ((x - (cx - sgn * 0.03)) / hw) ** 2, 0, 1)
    m2 = base - dome_h * q - y
    return _sig(k * m1) * _sig(k * m2)


def _render(scenes: list[dict], noises: list[np.ndarray], size: int) -> np.ndarray:
    """Images in [0, 1], float32 ``(B, size, size)``, of the given scenes."""
    B = len(scenes)
    f32 = np.float32

    def col(name):
        return np.array([s[name] for s in scenes], dtype=f32).reshape(B, 1, 1)

    k = f32(0.9 * size)  # edge sharpness: about one pixel
    g = (np.arange(size, dtype=f32) + f32(0.5)) * f32(2.0 / size) - f32(1.0)
    u, v = g[None, None, :], g[None, :, None]
    th, sc = col("theta"), col("scale")
    c, s = np.cos(th), np.sin(th)
    du, dv = u - col("tx"), v - col("ty")
    x = (c * du + s * dv) / sc
    y = (-s * du + c * dv) / sc

    body_w = col("body_w")
    bx, by = x / body_w, y / f32(1.25)
    bx, by = bx * bx, by * by  # integer powers by products: ndarray ** 4 takes the slow pow path
    body = _sig(k * 0.3 * (1 - bx * bx - by * by * by))
    D = f32(0.5) * body

    # lungs (index 0: patient right = image left; 1: patient left)
    spread, lung_w = col("spread"), col("lung_w")
    hw = f32(0.28) * lung_w
    apex, dome_h, base = col("apex"), col("dome_h"), col("base")
    geo = {}
    lungs = []
    for j, sgn in enumerate((-1.0, 1.0)):
        cx = f32(sgn * 0.40) * spread
        base_j = base - f32(0.04) if sgn < 0 else base  # the right dome sits higher (liver)
        geo[sgn] = (cx, base_j)
        lungs.append(_lung(x, y, cx, hw, apex, base_j, dome_h, f32(sgn), k))
    lungs = np.stack(lungs)  # (2, B, H, W)

    # heart: width = cardiothoracic ratio x inner thorax width; two thirds left of the midline
    thorax = 2 * (f32(0.40) * spread + hw)
    hwid = col("ctr") * thorax / 2
    hhei = f32(0.25) + f32(0.3) * (col("ctr") - f32(0.44))
    ehx, ehy = (x - hwid / 3) / hwid, (y - col("heart_y")) / hhei
    heart = _sig(k * (1 - ehx * ehx - ehy * ehy) * 0.5 * np.minimum(hwid, hhei))
    air = (lungs[0] + lungs[1]) * (1 - heart)

    # findings that change the lung air itself (pneumothorax) are needed before the markings
    rim = np.zeros((B, size, size), f32)
    inst = [(b, g_) for b, scene in enumerate(scenes) for g_ in scene["instances"]]

    def side_of(g_):
        return 0 if g_["sgn"] < 0 else 1

    for b, g_ in inst:
        if g_["kind"] != "pneumothorax":
            continue
        sgn = g_["sgn"]
        cx, base_j = geo[sgn]
        cx, base_j = f32(cx[b, 0, 0]), f32(base_j[b, 0, 0])
        ax, ay = cx - f32(sgn) * hw[b] * f32(0.7), base_j - f32(0.05)  # collapse toward the hilum / base
        fct = f32(g_["f"])
        xs, ys = ax + (x[b] - ax) / fct, ay + (y[b] - ay) / fct
        collapsed = _lung(xs, ys, cx, hw[b], apex[b], base_j, dome_h[b], f32(sgn), k)
        lung_j = lungs[side_of(g_), b]
        r = lung_j * (1 - collapsed)
        rim[b] += r
        D[b] += f32(0.14) * 4 * collapsed * (1 - collapsed) * lung_j * (1 - heart[b])  # the visceral pleural line
        D[b] -= f32(0.07) * r  # no lung tissue: darker
        D[b] += f32(0.05) * collapsed * lung_j * f32(g_["f"] < 0.8)
    rim = np.clip(rim, 0, 1)

    D -= f32(0.36) * air
    # vascular markings radiating from the hila, stronger with edema (vascular congestion)
    marks = np.zeros_like(D)
    ph = col("mark_phase")
    for sgn in (-1.0, 1.0):
        dx, dy = x - f32(sgn * 0.14), y + f32(0.02)
        r = np.sqrt(dx * dx + dy * dy)
        ang = np.arctan2(dy, f32(sgn) * dx)
        m = f32(0.5) + f32(0.5) * np.cos(f32(11) * ang + f32(7) * r + ph)
        m *= m
        marks += m * m * m * np.exp(-r / f32(0.45))
    edema = col("edema")
    D += f32(0.09) * (1 + f32(0.25) * edema) * marks * air * (1 - rim)

    D += f32(0.06) * heart
    spine = _sig(k * (f32(0.055) - np.abs(x))) * (f32(0.8) + f32(0.2) * np.cos(f32(2 * math.pi / 0.11) * y))
    D += f32(0.10) * spine * body
    D -= f32(0.10) * _sig(k * (f32(0.028) - np.abs(x))) * _sig(k * (f32(-0.28) - y)) * body
    ax_ = np.abs(x)
    clav_y = col("clav_y") - f32(0.12) * (ax_ - f32(0.06))
    D += f32(0.10) * _sig(k * (f32(0.03) - np.abs(y - clav_y))) * _sig(k * (ax_ - f32(0.06))) * _sig(k * (f32(0.72) - ax_))
    phase = (y - f32(0.25) * x * x) / col("rib_spacing") + col("rib_phase")
    ribs = np.clip((np.cos(f32(2 * math.pi) * phase) - f32(0.55)) / f32(0.45), 0, 1)
    ribs *= _sig(k * (y + f32(0.75))) * _sig(k * (f32(0.5) - y)) * _sig(k * (ax_ - f32(0.06))) * _sig(k * (f32(0.8) - ax_))
    D += f32(0.06) * col("rib_strength") * ribs * body

    # edema: perihilar haze on both sides
    for b in np.flatnonzero(edema.reshape(-1) > 0):
        sev = float(edema[b, 0, 0])
        amp, spread_ = f32((0.08, 0.14, 0.21)[int(sev) - 1]), f32((1.0, 1.2, 1.4)[int(sev) - 1])
        haze = np.zeros((size, size), f32)
        for sgn in (-1.0, 1.0):
            gx, gy = (x[b] - f32(sgn * 0.22)) / (f32(0.17) * spread_), y[b] / (f32(0.30) * spread_)
            haze += np.exp(-gx * gx - gy * gy)
        D[b] += amp * haze * air[b]

    for b, g_ in inst:
        kind, sgn = g_["kind"], g_["sgn"]
        cx, base_j = geo[sgn]
        cx, base_j = f32(cx[b, 0, 0]), f32(base_j[b, 0, 0])
        lung_j = lungs[side_of(g_), b]
        xb, yb = x[b], y[b]
        if kind == "pleural effusion":
            t = np.clip(f32(sgn) * (xb - cx) / hw[b], -1, 1)  # +1 at the lateral wall
            level = base_j - f32(g_["rise"]) + f32(0.16) * (1 - t) / 2  # meniscus: higher laterally
            D[b] += f32(0.40) * _sig(k * 0.6 * (yb - level)) * lung_j * (1 - heart[b])
        elif kind == "consolidation":
            ex_ = (xb - (cx + f32(sgn * g_["dx"]))) / f32(g_["rx"])
            ey_ = (yb - f32(g_["y"])) / f32(g_["ry"])
            m = _sig(k * (1 - ex_ * ex_ - ey_ * ey_) * f32(0.5 * g_["ry"]))
            D[b] += f32(0.34) * m * lung_j * (1 - heart[b])
        elif kind == "lung opacity":
            px = (cx + f32(sgn) * g_["px"].astype(f32))[:, None, None]
            py = g_["py"].astype(f32)[:, None, None]
            ps = g_["ps"].astype(f32)[:, None, None]
            puffs = np.exp(-((xb - px) ** 2 + (yb - py) ** 2) / (ps * ps)).sum(0)
            D[b] += f32(0.26) * np.tanh(f32(0.7) * puffs) * lung_j * (1 - heart[b])
        elif kind == "lung lesion":
            d = np.sqrt((xb - (cx + f32(sgn * g_["dx"]))) ** 2 + (yb - f32(g_["y"])) ** 2)
            D[b] += f32(g_["amp"]) * _sig(k * (f32(g_["r"]) - d))
        elif kind == "atelectasis":
            yl = base_j - f32(g_["rise"]) + f32(g_["slope"] * sgn) * (xb - cx)
            band = _sig(k * (f32(g_["th"]) - np.abs(yb - yl)))
            band *= _sig(k * (f32(0.75) * hw[b] - np.abs(xb - cx - f32(sgn * 0.05))))
            D[b] += f32(0.30) * band * lung_j * (1 - heart[b])

    # an exposure marker in a top corner (either side: it must not give the laterality away)
    mx = col("marker_x")
    marker = _sig(k * (f32(0.05) - np.abs(u - mx))) * _sig(k * (f32(0.04) - np.abs(v + f32(0.86))))
    img = col("bias") + col("gain") * D
    img = np.clip(img, 0, 1) ** col("gamma")
    ga = col("grad_angle")
    img += col("grad") * (np.cos(ga) * u + np.sin(ga) * v)
    img = np.maximum(img, col("marker") * f32(0.95) * marker)
    img += np.stack(noises) * col("noise")
    return np.clip(img, 0, 1)


# -- public API ------------------------------------------------------------------------------------
def _streams(seed: int, i: int) -> list[np.random.Generator]:
    ss = np.random.SeedSequence([_TAG, seed, i])
    return [np.random.default_rng(s) for s in ss.spawn(_STREAMS)]


def generate_phantoms(n: int, seed: int = 0, image_size: int = 64, progress: bool = False, *,
                      attributes: list | None = None) -> PhantomSet:
    """Generate ``n`` phantoms (images, reports, ground truth) from ``seed``.

    Sample ``i`` depends only on ``(seed, i)``. ``attributes``: optional list of ``n``
    ground-truth dicts to render instead of sampled ones (nuisance and phrasing stay random);
    useful to show or test one finding. ``progress``: a tqdm bar over chunks.
    """
    n = _check_int("n", n, 0)
    seed = _check_int("seed", seed, 0, 2**63 - 1)
    image_size = _check_int("image_size", image_size, 16, 1024)
    if attributes is not None:
        if not isinstance(attributes, (list, tuple)) or len(attributes) != n:
            raise ValueError(f"attributes must be a list of n={n} dicts, got "
                             f"{type(attributes).__name__} of length {len(attributes) if hasattr(attributes, '__len__') else '?'}")
        attributes = [validate_attributes(a, f"attributes[{i}]") for i, a in enumerate(attributes)]

    chunk = max(1, (1 << 17) // (image_size * image_size))
    images = np.empty((n, image_size, image_size), dtype=np.uint8)
    reports, all_attrs, records, ids = [], [], [], []
    from tqdm import tqdm

    for start in tqdm(range(0, n, chunk), desc="phantoms", unit="chunk", disable=not progress):
        scenes, noises = [], []
        for i in range(start, min(n, start + chunk)):
            r_attr, r_scene, r_find, r_noise, r_txt = _streams(seed, i)
            attrs = sample_attributes(r_attr)
            if attributes is not None:
                attrs = attributes[i]
            scenes.append(_sample_scene(r_scene, r_find, attrs))
            noises.append(r_noise.standard_normal((image_size, image_size), dtype=np.float32))
            reports.append(compose_report(attrs, r_txt))
            all_attrs.append(attrs)
            records.append(attributes_to_record(attrs))
            ids.append(f"phantom-s{seed}-{i:06d}")
        img = _render(scenes, noises, image_size)
        images[start:start + len(scenes)] = np.rint(img * 255).astype(np.uint8)
    return PhantomSet(images=torch.from_numpy(images), reports=reports, attributes=all_attrs,
                      records=records, study_ids=ids, seed=seed,
                      meta={"image_size": image_size, "generator": "medtrim_ext.datasets.phantoms"})


def split_seed(seed: int, split: str) -> int:
    """The generator seed of one split: disjoint, reproducible streams per (seed, split)."""
    import hashlib

    digest = hashlib.sha256(f"medtrim-phantoms/{int(seed)}/{split}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def write_phantom_dataset(out_dir, n: int, seed: int = 0, image_size: int = 64, *,
                          fractions=(0.8, 0.1, 0.1), progress: bool = False) -> Path:
    """Write ``n`` phantoms as a manifest dataset and return the manifest's path.

    ``out_dir/images/<study_id>.png``, ``out_dir/manifest.csv`` (``image_path`` relative to
    ``out_dir``, ``report``, ``study_id``, ``split`` in train / validate / test by
    ``fractions``; ``fractions=None``: no split column, the manifest then splits by a hash of the
    study id) and ``out_dir/attributes.jsonl`` (``study_id``, ``attributes``, ``records``)
    for :class:`~medtrim_ext.datasets.ManifestDataset` (``entities="ground_truth"``). Every file
    is written atomically; the manifest is written last, so a crash leaves no manifest that
    points at missing images.
    """
    import csv
    import io

    from PIL import Image

    from ..utils.io import atomic_write
    from .base import check_split_fractions

    n = _check_int("n", n, 1)
    if fractions is not None:
        check_split_fractions(fractions, "fractions")
    ph = generate_phantoms(n, seed=seed, image_size=image_size, progress=progress)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    header = ["image_path", "report", "study_id"]
    splits = [[]] * n
    if fractions is not None:
        header.append("split")
        n_train = int(round(fractions[0] * n))
        n_val = int(round(fractions[1] * n))
        splits = [["train"]] * n_train + [["validate"]] * n_val + [["test"]] * (n - n_train - n_val)
    rows = []
    for i in range(n):
        rel = f"images/{ph.study_ids[i]}.png"
        with atomic_write(out / rel, "wb") as f:
            Image.fromarray(ph.images[i].numpy()).save(f, format="PNG")
        rows.append([rel, ph.reports[i], ph.study_ids[i], *splits[i]])
    with atomic_write(out / "attributes.jsonl", "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"study_id": ph.study_ids[i], "attributes": ph.attributes[i],
                                "records": ph.records[i]}) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    manifest = out / "manifest.csv"
    with atomic_write(manifest, "w", encoding="utf-8", newline="") as f:
        f.write(buf.getvalue())
    return manifest


def describe(attributes: dict) -> str:
    """A one-line caption: 'L eff small; cardiomegaly mild' ('normal' when empty)."""
    if not attributes:
        return "normal"
    short = {"pleural effusion": "eff", "lung opacity": "opac", "atelectasis": "atel",
             "cardiomegaly": "cardio", "edema": "edema", "consolidation": "consol",
             "pneumothorax": "ptx", "lung lesion": "lesion"}
    sides = {"left": "L", "right": "R", "bilateral": "B"}
    parts = []
    for d, a in attributes.items():
        words = [sides.get(a.get("side"), "")] if a.get("side") and d != "edema" else []
        words.append(short[d])
        words += [a[k] for k in ("size", "zone") if a.get(k) and not (d == "atelectasis" and k == "zone")]
        parts.append(" ".join(w for w in words if w))
    return "; ".join(parts)


def save_montage(phantoms: PhantomSet, path, n: int = 16, columns: int | None = None,
                 dpi: int = 100) -> Path:
    """Save the first ``n`` phantoms as a captioned PNG grid (written atomically)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ..utils.io import atomic_write

    if not isinstance(phantoms, PhantomSet):
        raise TypeError(f"phantoms must be a PhantomSet, got {type(phantoms).__name__}")
    n = min(_check_int("n", n, 1), len(phantoms))
    if n == 0:
        raise ValueError("phantoms is empty: nothing to draw")
    columns = columns or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.5 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(phantoms.images[k].numpy(), cmap="gray", vmin=0, vmax=255)
            ax.set_title(describe(phantoms.attributes[k]), fontsize=7)
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    plt.close(fig)
    return path
