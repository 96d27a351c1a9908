"""Free-text radiology reports for the synthetic phantoms, from a seeded choice of templates.

Every report names each present finding with all of its attributes (side, size / severity,
zone, morphology) in words that the packaged extraction ontology maps to the canonical names of
:func:`attributes_to_record`, so that an ideal extractor recovers the ground-truth record
exactly. The phrasing varies (word order, synonyms, sections, negations of absent findings) so
that a text encoder cannot key on one fixed sentence per finding.

Phrasing rules that keep the reports extractable (checked by ``tests/test_phantoms.py``):

- one finding per sentence, or two joined by a clause break ("and") in the impression;
- no hedging ("may represent", "compatible with") and no negation in a sentence with a finding;
- no descriptor words that the ontology maps elsewhere: "moderately" (canonical "moderately"),
  "base" ("basal"), "apical" ("apex"), "bibasilar" ("basilar"), "hazy" ("vague"),
  "moderate-sized" ("moderate sized"), "blunting" ("smooth"), "elevated" ("upper").
"""

from __future__ import annotations

import numpy as np

# -- what a finding looks like in the ground truth ---------------------------------------------
# disease -> the morphology adjective every mention carries (visible in the image as well)
MORPHOLOGY = {"consolidation": "dense", "lung opacity": "patchy", "atelectasis": "linear"}


def attributes_to_record(attributes: dict, vocabulary=None) -> dict:
    """The ideal meta-entity record of a phantom's attributes.

    ``attributes``: ``{disease: {"side": ..., "size": ..., "zone": ...}}`` (None where not
    applicable). Side -> ``dirs``; size / severity, zone and the disease's morphology word ->
    ``adjs``. Diseases come in vocabulary order and descriptor lists are sorted, as
    :class:`~medtrim_ext.extraction.EntityExtractor` returns them.
    """
    from ...entities.vocabulary import Vocabulary

    vocab = vocabulary if vocabulary is not None else Vocabulary.default()
    record = {}
    for disease in sorted(attributes, key=vocab.disease_index):
        a = attributes[disease]
        adjs = {a[k] for k in ("size", "zone") if a.get(k) is not None}
        if disease in MORPHOLOGY:
            adjs.add(MORPHOLOGY[disease])
        dirs = [a["side"]] if a.get("side") is not None else []
        record[disease] = {"adjs": sorted(adjs), "dirs": dirs}
    return record


# -- small helpers -------------------------------------------------------------------------------
def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


_SIZE_WORDS = {"small": ("small", "small", "tiny"), "moderate": ("moderate",),
               "large": ("large", "large", "massive")}
# adverbs for "the heart is ... enlarged"; "moderately" is its own canonical adjective, so a
# moderate finding never uses an adverb
_SEVERITY_ADVERBS = {"mild": "mildly", "severe": "severely"}


def _side_adj(rng, side: str) -> str:
    """'left' / 'left-sided' (attributive)."""
    return _pick(rng, (side, side, f"{side}-sided"))


def _region(rng, side: str, zone: str) -> str:
    """'right upper lobe', 'left mid lung', ... (one side)."""
    if zone == "mid":
        nouns = ("middle lobe", "mid lung", "mid lung zone") if side == "right" else ("mid lung", "mid lung zone")
    else:
        nouns = (f"{zone} lobe", f"{zone} lung", f"{zone} lung zone")
    return f"{side} {_pick(rng, nouns)}"


def _both_region(rng, zone: str) -> str:
    """'both lower lungs', 'bilateral upper lobes', ..."""
    noun = _pick(rng, ("lungs", "lobes", "lung zones") if zone != "mid" else ("lungs", "lung zones"))
    return _pick(rng, (f"both {zone} {noun}", f"the bilateral {zone} {noun}"))


# -- one sentence per finding ---------------------------------------------------------------------
def _effusion(rng, a) -> str:
    z, side = _pick(rng, _SIZE_WORDS[a["size"]]), a["side"]
    if side == "bilateral":
        return _pick(rng, (
            f"{_cap(z)} bilateral pleural effusions.",
            f"Bilateral {z} pleural effusions.",
            f"There are {z} pleural effusions bilaterally.",
            f"{_cap(z)} pleural effusions on both sides.",
            f"Bilateral effusions, {z}.",
        ))
    return _pick(rng, (
        f"{_cap(z)} {_side_adj(rng, side)} pleural effusion.",
        f"There is a {z} pleural effusion on the {side}.",
        f"{_cap(side)} effusion, {z}.",
        f"A {z} {side} pleural effusion is present.",
        f"The {side} pleural effusion is {z}.",
        f"{_cap(z)} {side} pleural effusion with a meniscus.",
    ))


def _cardiomegaly(rng, a) -> str:
    sev = a["size"]
    options = [f"{_cap(sev)} cardiomegaly.", f"There is {sev} cardiomegaly.",
               f"{_cap(sev)} enlargement of the cardiac silhouette.", f"Cardiomegaly, {sev}."]
    if sev in _SEVERITY_ADVERBS:
        adv = _SEVERITY_ADVERBS[sev]
        options += [f"The heart is {adv} enlarged.", f"The cardiac silhouette is {adv} enlarged."]
    else:
        options += [f"The heart is enlarged to a {sev} degree."]
    return _pick(rng, options)


def _edema(rng, a) -> str:
    sev = a["size"]
    return _pick(rng, (
        f"{_cap(sev)} bilateral pulmonary edema.",
        f"{_cap(sev)} pulmonary edema in both lungs.",
        f"There is {sev} interstitial edema bilaterally.",
        f"{_cap(sev)} perihilar pulmonary edema, bilateral.",
        f"Bilateral perihilar haziness from {sev} pulmonary edema.",
    ))


def _regional(rng, side: str, zone: str, templates, **words) -> str:
    """One of ``templates`` (``str.format`` patterns) about the region of one side and zone,
    ``{r}``, and the given ``words``; the region is drawn before the template."""
    r = _region(rng, side, zone)
    return _pick(rng, templates).format(r=r, **words)


_CONSOLIDATION = (
    "Dense consolidation in the {r}.",
    "Dense {r} consolidation.",
    "There is dense consolidation of the {r}.",
    "Dense airspace consolidation in the {r}.",
    "The {r} shows dense consolidation.",
)
_OPACITY = (
    "Patchy opacity in the {r}.",
    "Patchy {r} opacity.",
    "There are patchy opacities in the {r}.",
    "Patchy airspace opacity in the {r}.",
    "Patchy {r} airspace disease.",
)
_LESION = (
    "A {z} {noun} in the {r}.",
    "{Z} {r} {noun}.",
    "There is a {z} {noun} in the {r}.",
    "A {z} {noun} is seen in the {r}.",
)


def _consolidation(rng, a) -> str:
    return _regional(rng, a["side"], a["zone"], _CONSOLIDATION)


def _opacity(rng, a) -> str:
    side, zone = a["side"], a["zone"]
    if side == "bilateral":
        r = _both_region(rng, zone)
        return _pick(rng, (
            f"Patchy opacities in {r}.",
            f"There are patchy airspace opacities in {r}.",
            f"Patchy bilateral {zone} lung opacities.",
        ))
    return _regional(rng, side, zone, _OPACITY)


def _lesion(rng, a) -> str:
    z = "small" if a["size"] == "small" else _pick(rng, ("large", "large", "massive"))
    noun = _pick(rng, ("nodule", "nodular opacity", "nodular density") if a["size"] == "small"
                 else ("mass", "mass", "nodule"))
    return _regional(rng, a["side"], a["zone"], _LESION, z=z, Z=_cap(z), noun=noun)


def _pneumothorax(rng, a) -> str:
    z, side = _pick(rng, _SIZE_WORDS[a["size"]]), a["side"]
    return _pick(rng, (
        f"{_cap(z)} {_side_adj(rng, side)} pneumothorax.",
        f"There is a {z} {side} pneumothorax.",
        f"A {z} pneumothorax is present on the {side}.",
        f"{_cap(side)} pneumothorax, {z}.",
        f"{_cap(z)} {side} pneumothorax and a visible pleural line.",
    ))


def _atelectasis(rng, a) -> str:
    lin = _pick(rng, ("linear", "linear", "plate-like", "platelike"))
    side = a["side"]
    if side == "bilateral":
        return _pick(rng, (
            f"{_cap(lin)} atelectasis in both lower lobes.",
            f"{_cap(lin)} bilateral lower lobe atelectasis.",
            f"Bilateral {lin} atelectasis in the lower lungs.",
        ))
    return _pick(rng, (
        f"{_cap(lin)} atelectasis in the {side} lower lobe.",
        f"{_cap(lin)} {side} lower lobe atelectasis.",
        f"There is {lin} atelectasis in the {side} lower lung.",
        f"{_cap(side)} lower lung {lin} atelectasis.",
    ))


SENTENCES = {
    "pleural effusion": _effusion, "cardiomegaly": _cardiomegaly, "edema": _edema,
    "consolidation": _consolidation, "lung opacity": _opacity, "lung lesion": _lesion,
    "pneumothorax": _pneumothorax, "atelectasis": _atelectasis,
}

# -- statements about what is absent ---------------------------------------------------------------
_LUNG_FINDINGS = {"consolidation", "lung opacity", "lung lesion", "atelectasis", "edema"}
_EXAMS = ("Chest radiograph, PA view.", "CHEST (PA AND LAT).", "Chest, single frontal view.",
          "Portable chest radiograph.")
_INDICATIONS = ("Cough.", "Shortness of breath.", "Fever and cough.", "Chest pain.",
                "Preoperative evaluation.", "Dyspnea on exertion.", "Follow-up.")
_COMPARISONS = ("None.", "Prior study from last year.", "None available.")


def _normal_statements(rng, present: set) -> list[str]:
    out = []
    if "cardiomegaly" not in present:
        out.append(_pick(rng, ("Heart size is normal.", "The heart is normal in size.",
                               "The cardiac silhouette is within normal limits.",
                               "Normal heart size.", "The cardiomediastinal silhouette is normal.")))
    if rng.random() < 0.5:
        out.append(_pick(rng, ("The mediastinal contours are normal.",
                               "Mediastinal contours are unremarkable.")))
    if not present & _LUNG_FINDINGS:
        out.append(_pick(rng, ("The lungs are clear.", "Lungs are clear.",
                               "The lungs are well expanded and clear.")))
    elif "consolidation" not in present and rng.random() < 0.6:
        out.append(_pick(rng, ("No focal consolidation.", "There is no focal consolidation.")))
    effusion, ptx = "pleural effusion" in present, "pneumothorax" in present
    if not effusion and not ptx:
        out.append(_pick(rng, ("No pleural effusion or pneumothorax.",
                               "There is no pleural effusion or pneumothorax.",
                               "No effusion or pneumothorax is seen.")))
    elif not effusion:
        out.append(_pick(rng, ("No pleural effusion.", "There is no pleural effusion.")))
    elif not ptx:
        out.append(_pick(rng, ("No pneumothorax.", "There is no pneumothorax.",
                               "No pneumothorax is seen.")))
    if "edema" not in present and present and rng.random() < 0.4:
        out.append(_pick(rng, ("No pulmonary edema.", "There is no pulmonary edema.")))
    if rng.random() < 0.4:
        out.append(_pick(rng, ("No acute osseous abnormality.", "The osseous structures are intact.")))
    return out


def compose_report(attributes: dict, rng: np.random.Generator) -> str:
    """A report for one phantom: optional EXAMINATION / INDICATION / COMPARISON (sections the
    extractor ignores), FINDINGS (the findings in random order with normal statements about the
    rest) and IMPRESSION (the findings again, or a normal impression)."""
    present = set(attributes)
    parts = []
    if rng.random() < 0.4:
        parts.append(f"EXAMINATION: {_pick(rng, _EXAMS)}")
    if rng.random() < 0.5:
        parts.append(f"INDICATION: {_pick(rng, _INDICATIONS)}")
    if rng.random() < 0.3:
        parts.append(f"COMPARISON: {_pick(rng, _COMPARISONS)}")

    findings = [SENTENCES[d](rng, attributes[d]) for d in attributes]
    findings = [findings[k] for k in rng.permutation(len(findings))]
    normals = _normal_statements(rng, present)
    # findings first, as radiologists tend to write, with the normal statements after them
    parts.append("FINDINGS: " + " ".join(findings + normals))

    if not present:
        impression = _pick(rng, ("No acute cardiopulmonary process.",
                                 "No acute cardiopulmonary abnormality.",
                                 "Normal chest radiograph.", "No acute intrathoracic process."))
    else:
        diseases = list(attributes)
        lines = [SENTENCES[d](rng, attributes[d]) for d in diseases]
        if len(lines) == 2 and "," not in lines[0] and rng.random() < 0.3:
            # (a trailing ", small" would otherwise attach to the second finding)
            # "Small left pleural effusion and mild cardiomegaly." - 'and' ends the first clause
            first, second = lines[0].rstrip("."), lines[1].rstrip(".")
            lines = [f"{first} and {second[:1].lower() + second[1:]}."]
        impression = " ".join(lines)
    parts.append(f"IMPRESSION: {impression}")
    sep = _pick(rng, ("\n", "\n\n", " "))
    return sep.join(parts)
