"""Scenes (:mod:`.scene`) -> pixels: the anatomy, one painter per finding, then the exposure.

Each image is an additive density map ``D`` in "anatomical" coordinates ``x, y`` in ``[-1, 1]``
(``y`` down), which a per-sample affine (patient position, rotation, size) maps to pixels.
Bright = dense (bone, fluid, soft tissue), dark = air; the patient's left lung is on the image's
right. A batch of scenes is painted at once, as float32 ``(B, H, W)`` arrays.

The order of the additions to ``D`` is part of the output: float32 sums are not associative, so
reordering two terms changes pixels (the phantoms are reproducible bit for bit).

Besides the built-in findings, the painters draw everything of
:data:`.attributes.RENDER_SPACE` (new values only add branches, so the built-in images stay the
same): lung opacity small (fewer, fainter puffs) or large (more, wider puffs); calcified lung
lesions (1-3 small, very dense, sharp-edged granulomas); atelectasis bands at the upper or mid
zone; and four more findings:

- pneumonia: an ill-defined, mottled airspace region: a soft-edged ellipse modulated by puffs
  (unlike the dense homogeneous, sharp-edged consolidation);
- pleural other (thickening): an apical pleural cap over the lung apex (zone upper) or a band
  along the lateral chest wall at the zone's height (mid / lower), thicker when "large";
- fracture (rib): a short bright rib segment crossing the lateral chest wall at the zone's
  height, broken by a gap with the lateral fragment stepped down (its own rib, since the
  random rib strength may hide the ribs);
- enlarged cardiomediastinum: a dense band about the midline above the heart, much wider
  than the normal mediastinum (the spine).
"""

from __future__ import annotations

import math

import numpy as np

f32 = np.float32


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


def _painted(scene: dict) -> list[dict]:
    """The findings of one scene that painters draw: edema (a whole-chest haze, when present)
    and the per-lung instances. Cardiomegaly has no painter: it is the heart's width."""
    edema = [{"kind": "edema", "grade": scene["edema"]}] if scene["edema"] > 0 else []
    return edema + scene["instances"]


class _Canvas:
    """A batch being painted: pixel (``u, v``) and anatomical (``x, y``) coordinates, the
    anatomy masks the painters need, the density map ``D`` and the pneumothorax ``rim``."""

    def __init__(self, scenes: list[dict], size: int):
        self.scenes, self.size, self.B = scenes, size, len(scenes)
        self.k = f32(0.9 * size)  # edge sharpness: about one pixel
        g = (np.arange(size, dtype=f32) + f32(0.5)) * f32(2.0 / size) - f32(1.0)
        self.u, self.v = g[None, None, :], g[None, :, None]
        th, sc = self.col("theta"), self.col("scale")
        c, s = np.cos(th), np.sin(th)
        du, dv = self.u - self.col("tx"), self.v - self.col("ty")
        self.x = (c * du + s * dv) / sc
        self.y = (-s * du + c * dv) / sc
        self._body()
        self._lungs()
        self._heart()
        self.rim = np.zeros((self.B, size, size), f32)
        self.instances = [(b, g_) for b, scene in enumerate(scenes) for g_ in _painted(scene)]

    def col(self, name: str) -> np.ndarray:
        """One scene value of every sample, float32 ``(B, 1, 1)``."""
        return np.array([s[name] for s in self.scenes], dtype=f32).reshape(self.B, 1, 1)

    def _body(self) -> None:
        bx, by = self.x / self.col("body_w"), self.y / f32(1.25)
        bx, by = bx * bx, by * by  # integer powers by products: ndarray ** 4 takes the slow pow path
        self.body = _sig(self.k * 0.3 * (1 - bx * bx - by * by * by))
        self.D = f32(0.5) * self.body

    def _lungs(self) -> None:
        """``lungs`` (index 0: patient right = image left; 1: patient left) and ``geo``: lung
        side -> (centre x, dome base y)."""
        spread = self.col("spread")
        self.hw = f32(0.28) * self.col("lung_w")
        self.apex, self.dome_h, base = self.col("apex"), self.col("dome_h"), self.col("base")
        self.geo, lungs = {}, []
        for sgn in (-1.0, 1.0):
            cx = f32(sgn * 0.40) * spread
            base_j = base - f32(0.04) if sgn < 0 else base  # the right dome sits higher (liver)
            self.geo[sgn] = (cx, base_j)
            lungs.append(_lung(self.x, self.y, cx, self.hw, self.apex, base_j, self.dome_h, f32(sgn), self.k))
        self.lungs = np.stack(lungs)  # (2, B, H, W)

    def _heart(self) -> None:
        # width = cardiothoracic ratio x inner thorax width; two thirds left of the midline
        x, y, k = self.x, self.y, self.k
        thorax = 2 * (f32(0.40) * self.col("spread") + self.hw)
        hwid = self.col("ctr") * thorax / 2
        hhei = f32(0.25) + f32(0.3) * (self.col("ctr") - f32(0.44))
        ehx, ehy = (x - hwid / 3) / hwid, (y - self.col("heart_y")) / hhei
        self.heart = _sig(k * (1 - ehx * ehx - ehy * ehy) * 0.5 * np.minimum(hwid, hhei))
        self.air = (self.lungs[0] + self.lungs[1]) * (1 - self.heart)

    def lung_of(self, b: int, g: dict):
        """(centre x, dome base y, lung mask) of the lung that instance ``g`` of sample ``b`` is in."""
        cx, base_j = self.geo[g["sgn"]]
        return f32(cx[b, 0, 0]), f32(base_j[b, 0, 0]), self.lungs[0 if g["sgn"] < 0 else 1, b]


# -- anatomy painted after the lung air is known ---------------------------------------------------
def _lung_markings(c: _Canvas) -> None:
    """Dark lung air and the vascular markings radiating from the hila, stronger with edema
    (vascular congestion) and absent where a pneumothorax left no lung."""
    x, y = c.x, c.y
    c.D -= f32(0.36) * c.air
    marks = np.zeros_like(c.D)
    ph = c.col("mark_phase")
    for sgn in (-1.0, 1.0):
        dx, dy = x - f32(sgn * 0.14), y + f32(0.02)
        r = np.sqrt(dx * dx + dy * dy)
        ang = np.arctan2(dy, f32(sgn) * dx)
        m = f32(0.5) + f32(0.5) * np.cos(f32(11) * ang + f32(7) * r + ph)
        m *= m
        marks += m * m * m * np.exp(-r / f32(0.45))
    c.D += f32(0.09) * (1 + f32(0.25) * c.col("edema")) * marks * c.air * (1 - c.rim)


def _mediastinum_and_bones(c: _Canvas) -> None:
    """Heart density, spine, trachea (dark), clavicles and rib arcs of a random strength."""
    x, y, k, body = c.x, c.y, c.k, c.body
    c.D += f32(0.06) * c.heart
    spine = _sig(k * (f32(0.055) - np.abs(x))) * (f32(0.8) + f32(0.2) * np.cos(f32(2 * math.pi / 0.11) * y))
    c.D += f32(0.10) * spine * body
    c.D -= f32(0.10) * _sig(k * (f32(0.028) - np.abs(x))) * _sig(k * (f32(-0.28) - y)) * body
    ax_ = np.abs(x)
    clav_y = c.col("clav_y") - f32(0.12) * (ax_ - f32(0.06))
    c.D += f32(0.10) * _sig(k * (f32(0.03) - np.abs(y - clav_y))) * _sig(k * (ax_ - f32(0.06))) * _sig(k * (f32(0.72) - ax_))
    phase = (y - f32(0.25) * x * x) / c.col("rib_spacing") + c.col("rib_phase")
    ribs = np.clip((np.cos(f32(2 * math.pi) * phase) - f32(0.55)) / f32(0.45), 0, 1)
    ribs *= _sig(k * (y + f32(0.75))) * _sig(k * (f32(0.5) - y)) * _sig(k * (ax_ - f32(0.06))) * _sig(k * (f32(0.8) - ax_))
    c.D += f32(0.06) * c.col("rib_strength") * ribs * body


# -- one painter per finding: (canvas, sample b, instance g) -> adds to c.D[b] ---------------------
def _paint_pneumothorax(c: _Canvas, b: int, g: dict) -> None:
    """Lucent rim without markings at the apex and lateral wall, a thin visceral pleural line."""
    sgn = g["sgn"]
    cx, base_j, lung_j = c.lung_of(b, g)
    ax, ay = cx - f32(sgn) * c.hw[b] * f32(0.7), base_j - f32(0.05)  # collapse toward the hilum / base
    fct = f32(g["f"])
    xs, ys = ax + (c.x[b] - ax) / fct, ay + (c.y[b] - ay) / fct
    collapsed = _lung(xs, ys, cx, c.hw[b], c.apex[b], base_j, c.dome_h[b], f32(sgn), c.k)
    r = lung_j * (1 - collapsed)
    c.rim[b] += r
    c.D[b] += f32(0.14) * 4 * collapsed * (1 - collapsed) * lung_j * (1 - c.heart[b])  # the visceral pleural line
    c.D[b] -= f32(0.07) * r  # no lung tissue: darker
    c.D[b] += f32(0.05) * collapsed * lung_j * f32(g["f"] < 0.8)


def _paint_edema(c: _Canvas, b: int, g: dict) -> None:
    """Perihilar haze on both sides, larger and denser with the grade."""
    grade = int(g["grade"]) - 1
    amp, spread_ = f32((0.08, 0.14, 0.21)[grade]), f32((1.0, 1.2, 1.4)[grade])
    haze = np.zeros((c.size, c.size), f32)
    for sgn in (-1.0, 1.0):
        gx, gy = (c.x[b] - f32(sgn * 0.22)) / (f32(0.17) * spread_), c.y[b] / (f32(0.30) * spread_)
        haze += np.exp(-gx * gx - gy * gy)
    c.D[b] += amp * haze * c.air[b]


def _paint_effusion(c: _Canvas, b: int, g: dict) -> None:
    """Fluid from the costophrenic angle up, its meniscus rising laterally."""
    sgn = g["sgn"]
    cx, base_j, lung_j = c.lung_of(b, g)
    t = np.clip(f32(sgn) * (c.x[b] - cx) / c.hw[b], -1, 1)  # +1 at the lateral wall
    level = base_j - f32(g["rise"]) + f32(0.16) * (1 - t) / 2  # meniscus: higher laterally
    c.D[b] += f32(0.40) * _sig(c.k * 0.6 * (c.y[b] - level)) * lung_j * (1 - c.heart[b])


def _paint_consolidation(c: _Canvas, b: int, g: dict) -> None:
    """A dense homogeneous ellipse."""
    cx, _, lung_j = c.lung_of(b, g)
    ex_ = (c.x[b] - (cx + f32(g["sgn"] * g["dx"]))) / f32(g["rx"])
    ey_ = (c.y[b] - f32(g["y"])) / f32(g["ry"])
    m = _sig(c.k * (1 - ex_ * ex_ - ey_ * ey_) * f32(0.5 * g["ry"]))
    c.D[b] += f32(0.34) * m * lung_j * (1 - c.heart[b])


def _paint_opacity(c: _Canvas, b: int, g: dict) -> None:
    """Faint patchy puffs (fewer and fainter, or more and wider, by size: ``amp``)."""
    cx, _, lung_j = c.lung_of(b, g)
    px = (cx + f32(g["sgn"]) * g["px"].astype(f32))[:, None, None]
    py = g["py"].astype(f32)[:, None, None]
    ps = g["ps"].astype(f32)[:, None, None]
    puffs = np.exp(-((c.x[b] - px) ** 2 + (c.y[b] - py) ** 2) / (ps * ps)).sum(0)
    c.D[b] += f32(g.get("amp", 0.26)) * np.tanh(f32(0.7) * puffs) * lung_j * (1 - c.heart[b])


def _paint_lesion(c: _Canvas, b: int, g: dict) -> None:
    """A round nodule or mass, drawn whole (not masked by the lung or the heart); calcified:
    1-3 small nodules, much denser and with a sharper edge than soft tissue."""
    cx, _, _ = c.lung_of(b, g)
    if g.get("form") == "calcified":
        for dx, y, r in zip(g["dxs"], g["ys"], g["rs"]):
            d = np.sqrt((c.x[b] - (cx + f32(g["sgn"] * dx))) ** 2 + (c.y[b] - f32(y)) ** 2)
            c.D[b] += f32(0.70) * _sig(f32(2) * c.k * (f32(r) - d))
        return
    d = np.sqrt((c.x[b] - (cx + f32(g["sgn"] * g["dx"]))) ** 2 + (c.y[b] - f32(g["y"])) ** 2)
    c.D[b] += f32(g["amp"]) * _sig(c.k * (f32(g["r"]) - d))


def _paint_atelectasis(c: _Canvas, b: int, g: dict) -> None:
    """A thin linear band above the dome."""
    sgn = g["sgn"]
    cx, base_j, lung_j = c.lung_of(b, g)
    xb, yb, k = c.x[b], c.y[b], c.k
    if "y" in g:  # upper / mid zone: the band at the zone's height
        yl = f32(g["y"]) + f32(g["slope"] * sgn) * (xb - cx)
    else:
        yl = base_j - f32(g["rise"]) + f32(g["slope"] * sgn) * (xb - cx)
    band = _sig(k * (f32(g["th"]) - np.abs(yb - yl)))
    band *= _sig(k * (f32(0.75) * c.hw[b] - np.abs(xb - cx - f32(sgn * 0.05))))
    c.D[b] += f32(0.30) * band * lung_j * (1 - c.heart[b])


def _paint_pneumonia(c: _Canvas, b: int, g: dict) -> None:
    """An ill-defined mottled airspace region: a soft-edged ellipse times a puff texture."""
    cx, _, lung_j = c.lung_of(b, g)
    x0, y0, rx, ry = cx + f32(g["sgn"] * g["dx"]), f32(g["y"]), f32(g["rx"]), f32(g["ry"])
    ex_, ey_ = (c.x[b] - x0) / rx, (c.y[b] - y0) / ry
    env = _sig(f32(4) * (1 - ex_ * ex_ - ey_ * ey_))  # fades over ~half a radius: no sharp edge
    px = (x0 + f32(g["sgn"]) * rx * g["px"].astype(f32))[:, None, None]
    py = (y0 + ry * g["py"].astype(f32))[:, None, None]
    ps = g["ps"].astype(f32)[:, None, None]
    puffs = np.exp(-((c.x[b] - px) ** 2 + (c.y[b] - py) ** 2) / (ps * ps)).sum(0)
    mottle = f32(0.25) + f32(0.75) * np.tanh(f32(0.8) * puffs)
    c.D[b] += f32(0.36) * env * mottle * lung_j * (1 - c.heart[b])


def _paint_pleural_other(c: _Canvas, b: int, g: dict) -> None:
    """Pleural thickening: an apical cap (the lung's top rim, ``th`` thick, down to ``h`` below
    the apex) or a band of thickness ``th`` inside the lateral wall around height ``y``."""
    sgn = g["sgn"]
    cx, base_j, lung_j = c.lung_of(b, g)
    xb, yb, k, th = c.x[b], c.y[b], c.k, f32(g["th"])
    apex = c.apex[b]
    if "h" in g:
        # the lung moved down by th no longer covers its own top rim
        below = _lung(xb, yb - th, cx, c.hw[b], apex, base_j, c.dome_h[b], f32(sgn), k)
        band = lung_j * (1 - below) * _sig(k * (apex + f32(g["h"]) - yb))
    else:
        # the lateral wall's distance from the lung centre: the apex ellipse above cy, then straight
        cy = f32(0.05)
        ey_ = (yb - cy) / (cy - apex)
        wall = np.where(yb < cy, c.hw[b] * np.sqrt(np.clip(1 - ey_ * ey_, 0, 1)),
                        c.hw[b] * (1 + f32(0.1) * np.clip(yb - cy, 0, 1)))
        band = lung_j * _sig(k * (f32(sgn) * (xb - cx) - (wall - th)))
        band *= _sig(k * (f32(g["hl"]) - np.abs(yb - f32(g["y"]))))
    c.D[b] += f32(0.36) * band  # soft tissue: about as dense as the chest wall


def _paint_fracture(c: _Canvas, b: int, g: dict) -> None:
    """A bright rib segment crossing the lateral chest wall, curved like the rib arcs, broken
    ``brk`` inward of the wall by a gap, its lateral fragment stepped down."""
    cx, _, _ = c.lung_of(b, g)
    k = c.k
    ax_ = f32(g["sgn"]) * c.x[b]  # distance from the midline toward the finding's side
    xw = f32(g["sgn"]) * cx + c.hw[b, 0, 0]  # the lateral wall
    xg = xw - f32(g["brk"])
    lateral = _sig(k * (ax_ - xg))
    yc = f32(g["y"]) + f32(0.25) * (ax_ * ax_ - xw * xw) + f32(g["step"]) * lateral
    rib = _sig(k * (f32(0.028) - np.abs(c.y[b] - yc)))
    rib *= _sig(k * (ax_ - (xw - f32(g["length"])))) * _sig(k * (xw + f32(0.05) - ax_))
    rib *= _sig(k * (np.abs(ax_ - xg) - f32(0.5 * g["gap"])))
    c.D[b] += f32(0.35) * rib * c.body[b]


def _paint_cardiomediastinum(c: _Canvas, b: int, g: dict) -> None:
    """A widened superior mediastinum: a dense band about the midline from ``top`` down to the
    heart, a little wider at its base."""
    k, xb, yb = c.k, c.x[b], c.y[b]
    hy = c.col("heart_y")[b]
    hw = f32(g["hw"]) * (f32(0.85) + f32(0.15) * np.clip((yb - f32(g["top"])) / (hy - f32(g["top"])), 0, 1))
    band = _sig(k * (hw - np.abs(xb - f32(g["dx"])))) * _sig(k * (yb - f32(g["top"]))) * _sig(k * (hy - yb))
    c.D[b] += f32(0.26) * band * (1 - c.heart[b]) * c.body[b]


# finding -> (pass, painter). The "air" pass runs before the vascular markings, because a
# pneumothorax changes the lung air itself (no markings in its rim); "overlay" painters add
# density on top of the finished anatomy.
PAINTERS = {
    "pneumothorax": ("air", _paint_pneumothorax),
    "edema": ("overlay", _paint_edema),
    "pleural effusion": ("overlay", _paint_effusion),
    "consolidation": ("overlay", _paint_consolidation),
    "lung opacity": ("overlay", _paint_opacity),
    "lung lesion": ("overlay", _paint_lesion),
    "atelectasis": ("overlay", _paint_atelectasis),
    "pneumonia": ("overlay", _paint_pneumonia),
    "pleural other": ("overlay", _paint_pleural_other),
    "fracture": ("overlay", _paint_fracture),
    "enlarged cardiomediastinum": ("overlay", _paint_cardiomediastinum),
}


def _paint(c: _Canvas, which: str) -> None:
    """Run the painters of pass ``which`` over every finding instance, in scene order."""
    for b, g in c.instances:
        phase, painter = PAINTERS[g["kind"]]
        if phase == which:
            painter(c, b, g)


def _expose(c: _Canvas, noises: list[np.ndarray]) -> np.ndarray:
    """Density -> image: exposure, contrast, gamma, a smooth gradient, the marker, noise."""
    k, u, v, col = c.k, c.u, c.v, c.col
    # an exposure marker in a top corner (either side: it must not give the laterality away)
    mx = col("marker_x")
    marker = _sig(k * (f32(0.05) - np.abs(u - mx))) * _sig(k * (f32(0.04) - np.abs(v + f32(0.86))))
    img = col("bias") + col("gain") * c.D
    img = np.clip(img, 0, 1) ** col("gamma")
    ga = col("grad_angle")
    img += col("grad") * (np.cos(ga) * u + np.sin(ga) * v)
    img = np.maximum(img, col("marker") * f32(0.95) * marker)
    img += np.stack(noises) * col("noise")
    return np.clip(img, 0, 1)


def render(scenes: list[dict], noises: list[np.ndarray], size: int) -> np.ndarray:
    """Images in [0, 1], float32 ``(B, size, size)``, of the given scenes and noise fields."""
    c = _Canvas(scenes, size)
    _paint(c, "air")
    c.rim = np.clip(c.rim, 0, 1)
    _lung_markings(c)
    _mediastinum_and_bones(c)
    _paint(c, "overlay")
    return _expose(c, noises)
