"""The renderer beyond the built-in phantoms: every finding and value of RENDER_SPACE appears
where its attributes say, looks as described, and the validator names what it rejects."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from medtrim_ext.datasets import generate_phantoms
from medtrim_ext.datasets.phantoms.attributes import (RENDER_KEYS, RENDER_SPACE, _streams,
                                                      validate_render_attributes)
from medtrim_ext.datasets.phantoms.render import render
from medtrim_ext.datasets.phantoms.scene import sample_scene

N, SIZE, SEED = 12, 64, 2


def _scenes(attrs, n=N, seed=SEED):
    a = validate_render_attributes(attrs)
    return [sample_scene(*_streams(seed, i)[1:3], a) for i in range(n)]


def _images(attrs, n=N, seed=SEED, size=SIZE):
    """Float images of ``attrs`` for samples 0..n-1 of ``seed``, built like generate.py's
    ``_sample`` (same streams), so that ``{}`` gives the same patients without findings."""
    scenes, noises = [], []
    for i in range(n):
        _, r_scene, r_find, r_noise, _ = _streams(seed, i)
        scenes.append(sample_scene(r_scene, r_find, validate_render_attributes(attrs)))
        noises.append(r_noise.standard_normal((size, size), dtype=np.float32))
    return render(scenes, noises, size)


@functools.lru_cache(maxsize=None)
def _normal(n=N, seed=SEED, size=SIZE):
    return _images({}, n, seed, size)


def _diff(attrs, n=N, seed=SEED, size=SIZE):
    """Images with the finding minus the same patients without it."""
    return _images(attrs, n, seed, size) - _normal(n, seed, size)


def _centroid(diff):
    """Mean (column, row) in [0, 1] of the changed pixels of each image."""
    w = np.abs(diff) * (np.abs(diff) > 0.03)
    cols = (np.arange(diff.shape[2]) + 0.5) / diff.shape[2]
    rows = (np.arange(diff.shape[1]) + 0.5) / diff.shape[1]
    tot = w.sum((1, 2))
    assert (tot > 0).all(), "the finding changed no pixel"
    return (w.sum(1) * cols).sum(1) / tot, (w.sum(2) * rows).sum(1) / tot


def _changed(diff):
    return (np.abs(diff) > 0.03).sum((1, 2))


# -- where -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("attrs,col,row", [
    ({"pneumonia": {"side": "left", "zone": "lower"}}, (0.6, 1.0), (0.5, 0.75)),
    ({"pneumonia": {"side": "right", "zone": "upper"}}, (0.0, 0.4), (0.15, 0.4)),
    ({"lung opacity": {"side": "right", "zone": "lower", "size": "small"}}, (0.0, 0.4), (0.5, 0.7)),
    ({"lung opacity": {"side": "left", "zone": "upper", "size": "large"}}, (0.6, 1.0), (0.15, 0.4)),
    ({"lung lesion": {"side": "left", "zone": "mid", "size": "small", "form": "calcified"}},
     (0.6, 1.0), (0.35, 0.55)),
    ({"lung lesion": {"side": "right", "zone": "lower", "size": "large", "form": "calcified"}},
     (0.0, 0.4), (0.5, 0.7)),
    ({"atelectasis": {"side": "right", "zone": "upper"}}, (0.0, 0.4), (0.15, 0.4)),
    ({"atelectasis": {"side": "left", "zone": "mid"}}, (0.6, 1.0), (0.35, 0.55)),
    ({"pleural other": {"side": "right", "zone": "upper"}}, (0.0, 0.4), (0.1, 0.28)),
    ({"pleural other": {"side": "left", "zone": "lower", "size": "small"}}, (0.75, 1.0), (0.5, 0.7)),
    ({"pleural other": {"side": "right", "zone": "mid", "size": "large"}}, (0.0, 0.27), (0.38, 0.55)),
    ({"fracture": {"side": "left", "zone": "upper"}}, (0.7, 1.0), (0.2, 0.4)),
    ({"fracture": {"side": "right", "zone": "lower"}}, (0.0, 0.3), (0.5, 0.7)),
    ({"enlarged cardiomediastinum": {}}, (0.42, 0.58), (0.25, 0.45)),
    ({"pneumothorax": {"side": "left", "size": "moderate"}}, (0.6, 1.0), (0.2, 0.6)),
])
def test_new_finding_appears_where_the_attributes_say(attrs, col, row):
    """Patient's left = image right: the changed pixels lie on the named side and zone."""
    cx, cy = _centroid(_diff(attrs))
    assert ((cx > col[0]) & (cx < col[1])).all(), cx
    assert ((cy > row[0]) & (cy < row[1])).all(), cy


@pytest.mark.parametrize("attrs", [
    {"consolidation": {"side": "bilateral", "zone": "mid"}},
    {"pneumonia": {"side": "bilateral", "zone": "lower"}},
    {"pneumothorax": {"side": "bilateral", "size": "moderate"}},
    {"pleural other": {"side": "bilateral", "zone": "upper", "size": "large"}},
    {"fracture": {"side": "bilateral", "zone": "mid"}},
    {"lung lesion": {"side": "bilateral", "zone": "upper", "size": "large", "form": "calcified"}},
])
def test_bilateral_changes_both_sides(attrs):
    """Each image half changes, with its changes away from the midline (one instance a lung)."""
    d = _diff(attrs)
    half = SIZE // 2
    cx_r, _ = _centroid(d[:, :, :half])  # patient's right lung: image left
    cx_l, _ = _centroid(d[:, :, half:])
    assert (cx_r < 0.85).all() and (cx_l > 0.15).all(), (cx_r, cx_l)
    assert all(len(s["instances"]) == 2 for s in _scenes(attrs, n=2))


def test_zone_tuple_gives_one_instance_per_side_and_zone():
    two = {"lung lesion": {"side": "right", "zone": ("upper", "lower"), "size": "small"}}
    assert [len(s["instances"]) for s in _scenes(two, n=3)] == [2, 2, 2]
    four = {"pneumonia": {"side": "bilateral", "zone": ["lower", "upper", "lower"]}}
    assert validate_render_attributes(four)["pneumonia"]["zone"] == ("lower", "upper")
    assert [len(s["instances"]) for s in _scenes(four, n=3)] == [4, 4, 4]
    # the two nodules: changed pixels both above and below the lung's middle, on the right
    d = np.abs(_diff(two)) > 0.03
    rows = d.any(2)
    assert rows[:, : SIZE * 2 // 5].any(1).all() and rows[:, SIZE // 2:].any(1).all()
    cx, _ = _centroid(_diff(two))
    assert (cx < 0.4).all(), cx


# -- how -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", ["small", "large"])
def test_calcified_nodules_are_brighter_than_soft_tissue(size):
    """Per changed pixel, granulomas add more than a soft-tissue nodule of the same size, and
    there are 1-3 of them."""
    where = {"side": "left", "zone": "mid", "size": size}
    calc = _diff({"lung lesion": {**where, "form": "calcified"}})
    soft = _diff({"lung lesion": where})
    per_pixel = [(d * (d > 0.03)).sum((1, 2)) / _changed(d) for d in (calc, soft)]
    assert (per_pixel[0] > 1.25 * per_pixel[1]).all(), per_pixel
    assert (calc.max((1, 2)) > 1.5 * soft.max((1, 2))).all()  # the peak: far denser
    counts = [len(s["instances"][0]["dxs"]) for s in _scenes({"lung lesion": {**where, "form": "calcified"}})]
    assert set(counts) <= {1, 2, 3} and len(set(counts)) > 1, counts


def _roughness(d):
    """Mean |pixel - mean of its 4 neighbours| / mean, over pixels changed with their neighbours."""
    c = d[:, 1:-1, 1:-1]
    nbs = (d[:, :-2, 1:-1], d[:, 2:, 1:-1], d[:, 1:-1, :-2], d[:, 1:-1, 2:])
    inside = (c > 0.03) & np.logical_and.reduce([x > 0.03 for x in nbs])
    lap = np.abs(c - sum(nbs) / 4)
    return np.array([lap[i][inside[i]].mean() / c[i][inside[i]].mean() for i in range(len(d))])


@pytest.mark.parametrize("side,zone", [("left", "lower"), ("right", "mid")])
def test_pneumonia_is_mottled_and_ill_defined_unlike_consolidation(side, zone):
    pneu = _diff({"pneumonia": {"side": side, "zone": zone}})
    cons = _diff({"consolidation": {"side": side, "zone": zone}})
    assert (_roughness(pneu) > 1.5 * _roughness(cons)).all()  # internal texture

    def faint_share(d):  # changed pixels below half the peak: a soft edge has more of them
        return np.array([(x[x > 0.03] < 0.5 * x.max()).mean() for x in d])

    assert faint_share(pneu).mean() > faint_share(cons).mean() + 0.08


def test_pleural_other_upper_is_an_apical_cap_and_lower_lines_the_lateral_wall():
    for side in ("left", "right"):
        _, cap_row = _centroid(_diff({"pleural other": {"side": side, "zone": "upper"}}))
        _, cons_row = _centroid(_diff({"consolidation": {"side": side, "zone": "upper"}}))
        assert (cap_row < cons_row - 0.04).all(), (cap_row, cons_row)  # above the upper zone
        wall_col, _ = _centroid(_diff({"pleural other": {"side": side, "zone": "lower"}}))
        lung_col, _ = _centroid(_diff({"consolidation": {"side": side, "zone": "lower"}}))
        lateral = (wall_col - lung_col) * (1 if side == "left" else -1)
        assert (lateral > 0.06).all(), (side, wall_col, lung_col)
    thin = _changed(_diff({"pleural other": {"side": "left", "zone": "mid", "size": "small"}}))
    thick = _changed(_diff({"pleural other": {"side": "left", "zone": "mid", "size": "large"}}))
    assert (thick > thin).all()


def test_fracture_rib_has_a_gap():
    """Along the rib (column profile of the change), a dip below half the peak lies between
    bright fragments on both sides."""
    d = _diff({"fracture": {"side": "left", "zone": "mid"}}, n=6)
    for p in d.max(1):
        on = np.nonzero(p > 0.5 * p.max())[0]
        seg = p[on.min():on.max() + 1] / p.max()
        j = int(np.argmin(seg))
        assert seg[j] < 0.5 and seg[:j].max() > 0.7 and seg[j + 1:].max() > 0.7, np.round(seg, 2)


def test_enlarged_cardiomediastinum_widens_the_mediastinum_above_the_heart():
    d = _diff({"enlarged cardiomediastinum": {}})
    assert [s["instances"][0].get("sgn") for s in _scenes({"enlarged cardiomediastinum": {}}, n=2)] == [None, None]
    heart_rows = np.array([(s["heart_y"] * s["scale"] + s["ty"] + 1) / 2 for s in _scenes({}, N)])
    _, cy = _centroid(d)
    assert (cy < heart_rows - 0.1).all()
    # the changed band at its centroid row is much wider than the spine (~4 px at 64 px)
    widths = [(np.abs(x[int(r * SIZE)]) > 0.03).sum() for x, r in zip(d, cy)]
    assert min(widths) >= 9, widths


def test_sizes_order_the_changed_area():
    opac = [_changed(_diff({"lung opacity": {"side": "right", "zone": "mid", "size": s}}))
            for s in ("small", None, "large")]
    assert (opac[0] < opac[1]).all() and (opac[1] < opac[2]).all(), opac
    ptx = [_diff({"pneumothorax": {"side": "left", "size": s}}) for s in ("small", "moderate", "large")]
    rim = [(d < -0.03).sum((1, 2)) for d in ptx]  # the lucent rim
    assert (rim[0] < rim[1]).all() and (rim[1] < rim[2]).all(), rim
    total = [_changed(d) for d in ptx]
    assert (total[0] < total[1]).all() and (total[1] <= total[2]).all(), total


# -- the built-in phantoms and many findings -------------------------------------------------------
@pytest.mark.parametrize("attrs", [
    {"pleural effusion": {"side": "left", "size": "moderate"}, "lung lesion": {"side": "right", "zone": "upper", "size": "small"}},
    {"lung opacity": {"side": "bilateral", "zone": "mid"}, "atelectasis": {"side": "left", "zone": "lower"}},
    {"pneumothorax": {"side": "right", "size": "large"}, "cardiomegaly": {"size": "severe"}},
])
def test_built_in_values_render_the_same_through_the_render_validator(attrs):
    """A built-in dict validated for rendering (extra "form" key, None values) gives the
    generator's images."""
    ours = np.rint(_images(attrs, n=4, seed=7) * 255).astype(np.uint8)
    theirs = generate_phantoms(4, seed=7, attributes=[attrs] * 4).images.numpy()
    assert np.array_equal(ours, theirs)


def test_six_findings_render():
    attrs = {"cardiomegaly": {"size": "mild"}, "edema": {"side": "bilateral", "size": "mild"},
             "pneumonia": {"side": "left", "zone": "lower"}, "fracture": {"side": "right", "zone": "mid"},
             "pleural other": {"side": "left", "zone": "upper"}, "enlarged cardiomediastinum": None}
    img = _images(attrs, n=2)
    assert img.shape == (2, SIZE, SIZE) and np.isfinite(img).all()
    assert (_changed(img - _normal(2)) > 300).all()


# -- validation ------------------------------------------------------------------------------------
def test_validate_render_attributes_fills_keys():
    got = validate_render_attributes({"enlarged cardiomediastinum": {},
                                      "lung opacity": {"side": "left", "zone": "mid"}})
    assert got == {"enlarged cardiomediastinum": dict.fromkeys(RENDER_KEYS),
                   "lung opacity": {"side": "left", "size": None, "zone": "mid", "form": None}}
    assert set(RENDER_SPACE) >= {"pneumonia", "pleural other", "fracture", "enlarged cardiomediastinum"}


@pytest.mark.parametrize("attrs,named", [
    ({"hernia": {}}, "hernia"),
    ({"fracture": {"side": "left", "zone": "mid", "colour": "red"}}, "colour"),
    ({"fracture": {"side": "left", "zone": "basal"}}, "basal"),
    ({"pneumothorax": {"side": "left", "size": "tiny"}}, "tiny"),
    ({"edema": {"side": "left", "size": "mild"}}, "edema"),
    ({"cardiomegaly": {"size": "mild", "side": "left"}}, "side"),
    ({"lung lesion": {"side": "left", "zone": "mid", "size": "small", "form": "cavitary"}}, "cavitary"),
    ({"pneumonia": {"side": "left", "zone": ()}}, "pneumonia"),
    ({"pneumonia": {"side": "left", "zone": ("upper", "apical")}}, "apical"),
    ({"pneumonia": {"side": "left"}}, "zone"),
    ({"pneumothorax": {"side": "left", "size": "small", "zone": ("upper",)}}, "zone"),
])
def test_validate_render_attributes_names_what_it_rejects(attrs, named):
    with pytest.raises(ValueError, match=named):
        validate_render_attributes(attrs)


def test_validate_render_attributes_types():
    with pytest.raises(TypeError):
        validate_render_attributes(["pneumonia"])
    with pytest.raises(TypeError):
        validate_render_attributes({"pneumonia": "left"})
