"""The descriptor table: what the extractor read in a report -> what the phantom renderer draws.

Every finding of a record is ``{"adjs": [...], "dirs": [...]}`` in the packaged vocabulary's
canonical words (:mod:`medtrim_ext.entities.vocabulary`). :func:`map_finding` turns it into the
renderer's attributes, by these rules:

==========================================  ===================  ==========================================
descriptor (canonical, as the extractor     attribute            note
returns it)
==========================================  ===================  ==========================================
left / right                                side                 both sides named -> bilateral
bilateral (also from bibasilar, biapical,   side = bilateral
both, each)
small (tiny, minimal, trace, subtle, ...)   size = small
mild                                        size = mild
moderate, moderately, moderate sized,       size = moderate
small moderate, mild to moderate
large (massive, huge), moderate to large,   size = large
substantial, widespread
severe, moderate severe, moderately severe  size = severe
upper, apex, biapical                       zone = upper
mid                                         zone = mid
lower, basal, basilar (bibasilar)           zone = lower
mid to lower                                zone = mid + lower   one region in each zone
calcified                                   form = calcified     lung lesion only (a granuloma)
==========================================  ===================  ==========================================

Each disease then keeps the attributes its picture has (:data:`APPLIES`), and folds the size
grades onto its own scale (:data:`SIZE_SCALES`): an effusion is small / moderate / large, so a
"mild" effusion is drawn small; a heart is mildly / moderately / severely enlarged, so a "large"
heart is drawn severe. Several sizes of one finding: the largest is drawn. Several zones: a region
in each.

A descriptor with no picture is never dropped silently: :func:`map_finding` returns it, with the
reason, and the dataset counts it (``IUPhantomDataset.coverage``). The reasons are
:data:`NO_PICTURE` (appearance, time course, cause or judgement, a place the renderer has no
region for, other anatomy) and, per disease, an attribute its picture does not have (e.g. the zone
of an effusion, which always rises from the base). A word in none of these tables (a custom
vocabulary) is reported as ``unknown``.
"""

from __future__ import annotations

# canonical adjective -> (attribute, value); zone values are tuples (a finding may span zones)
ADJECTIVES = {
    "small": ("size", "small"), "mild": ("size", "mild"),
    "moderate": ("size", "moderate"), "moderately": ("size", "moderate"),
    "moderate sized": ("size", "moderate"), "small moderate": ("size", "moderate"),
    "mild to moderate": ("size", "moderate"),
    "large": ("size", "large"), "moderate to large": ("size", "large"),
    "substantial": ("size", "large"), "widespread": ("size", "large"),
    "severe": ("size", "severe"), "moderate severe": ("size", "severe"),
    "moderately severe": ("size", "severe"),
    "upper": ("zone", ("upper",)), "apex": ("zone", ("upper",)), "biapical": ("zone", ("upper",)),
    "mid": ("zone", ("mid",)),
    "lower": ("zone", ("lower",)), "basal": ("zone", ("lower",)), "basilar": ("zone", ("lower",)),
    "mid to lower": ("zone", ("mid", "lower")),
    "calcified": ("form", "calcified"),
}
DIRECTIONS = ("left", "right", "bilateral")

# canonical adjective -> why it has no picture (the renderer draws one look per finding)
_REASONS = {
    "appearance": ("amorphous", "confluent", "dense", "faint", "heterogeneous", "homogeneous",
                   "linear", "loculated", "patchy", "rounded", "sharp", "smooth", "streaky",
                   "thickened", "vague", "wide", "multifocal", "symmetric", "asymmetric", "strong"),
    "time course": ("acute", "corticated", "interval worsening", "persistent", "residual",
                    "posttraumatic"),
    "cause or judgement": ("compressive", "congested", "congestive", "equivocal", "infectious",
                           "obstructive", "peculiar", "remarkable", "superimposed", "suspicious",
                           "unusual", "worrisome"),
    "place without a region": ("bronchial", "distal", "dorsal", "extrathoracic", "fissural",
                               "intrafissural", "lateral", "peribronchial", "subcutaneous",
                               "unilateral"),
    "other anatomy": ("airless", "aneurysmal", "crowded", "deformed", "degenerative",
                      "demineralized", "depressed", "dilated", "distended", "ectatic", "elongated",
                      "engorged", "flattened", "hypoinflated", "inflated", "ingested", "nondistended",
                      "osseous", "osteopenic", "overinflated", "rightward deviation", "sclerotic",
                      "scoliotic", "subluxed", "tortuous", "unfolded", "ventilated"),
}
NO_PICTURE = {word: reason for reason, words in _REASONS.items() for word in words}

# disease -> the attributes its picture has (medtrim_ext.datasets.phantoms.RENDER_SPACE)
APPLIES = {
    "pleural effusion": ("side", "size"),
    "consolidation": ("side", "zone"),
    "lung opacity": ("side", "zone", "size"),
    "cardiomegaly": ("size",),
    "lung lesion": ("side", "zone", "size", "form"),
    "pneumothorax": ("side", "size"),
    "atelectasis": ("side", "zone"),
    "edema": ("size",),
    "pneumonia": ("side", "zone"),
    "pleural other": ("side", "zone", "size"),
    "fracture": ("side", "zone"),
    "enlarged cardiomediastinum": (),
}
_GRADES = ("small", "mild", "moderate", "large", "severe")   # the order "largest" follows
# disease -> grade -> the size drawn (each disease's own scale)
_THREE_SIZES = {"small": "small", "mild": "small", "moderate": "moderate", "large": "large",
                "severe": "large"}
_THREE_GRADES = {"small": "mild", "mild": "mild", "moderate": "moderate", "large": "severe",
                 "severe": "severe"}
_TWO_SIZES = {"small": "small", "mild": "small", "moderate": "large", "large": "large",
              "severe": "large"}
SIZE_SCALES = {
    "pleural effusion": _THREE_SIZES, "pneumothorax": _THREE_SIZES,
    "cardiomegaly": _THREE_GRADES, "edema": _THREE_GRADES, "lung opacity": _THREE_SIZES,
    "lung lesion": _TWO_SIZES, "pleural other": _TWO_SIZES,
}
# a moderate lung opacity is drawn with the medium look (size None), which is also the look of
# an opacity whose report gives no size: the ground truth keeps "moderate" apart from unspecified
_MEDIUM = "moderate"
# edema is drawn on both sides whatever the report says (it is a whole-chest finding)
ALWAYS_BILATERAL = ("edema",)


def _side(dirs) -> str | None:
    dirs = set(dirs)
    if not dirs:
        return None
    if "bilateral" in dirs or {"left", "right"} <= dirs:
        return "bilateral"
    return next(iter(dirs))


def map_finding(disease: str, adjs, dirs) -> tuple[dict, list[tuple[str, str]]]:
    """One finding of a record -> ``(truth, unused)``.

    ``truth``: ``{"side", "size", "zone", "form"}`` as the report gives them, on the disease's
    scale (None where the report is silent or the attribute does not apply); ``zone`` is a sorted
    tuple of zones. ``unused``: ``(descriptor, reason)`` for each descriptor that is not drawn.
    """
    if disease not in APPLIES:
        raise ValueError(f"no picture is defined for disease {disease!r}; known: {sorted(APPLIES)}")
    applies = APPLIES[disease]
    truth = {"side": None, "size": None, "zone": None, "form": None}
    unused, grades, zones = [], [], set()
    for adj in adjs:
        if adj in ADJECTIVES:
            kind, value = ADJECTIVES[adj]
            if kind not in applies:
                unused.append((adj, f"{disease} is drawn without a {kind}"))
            elif kind == "size":
                grades.append(value)
            elif kind == "zone":
                zones.update(value)
            else:
                truth[kind] = value
        else:
            unused.append((adj, NO_PICTURE.get(adj, "unknown")))
    bad_dirs = [d for d in dirs if d not in DIRECTIONS]
    unused += [(d, "unknown") for d in bad_dirs]
    dirs = [d for d in dirs if d in DIRECTIONS]
    if "side" in applies:
        truth["side"] = _side(dirs)
    else:
        why = ("always drawn on both sides" if disease in ALWAYS_BILATERAL
               else f"{disease} is drawn without a side")
        unused += [(d, why) for d in dirs]
    if grades:
        top = max(grades, key=_GRADES.index)
        truth["size"] = SIZE_SCALES[disease][top]
    if zones:
        truth["zone"] = tuple(sorted(zones))
    return truth, unused


def render_size(disease: str, size: str | None) -> str | None:
    """The renderer's size of a truth size (a moderate lung opacity has the medium look, None)."""
    if disease == "lung opacity" and size == _MEDIUM:
        return None
    return size
