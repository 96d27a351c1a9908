"""IUPhantomDataset: the real IU reports, each with a phantom image rendered from its own findings.

Each study is one of the 3,955 Indiana University chest X-ray reports that the ``torchxrayvision``
package ships (``torchxrayvision/data/NLMCXR_reports.tgz``), read at run time: nothing of them is
in this repository. The text is the report's FINDINGS and IMPRESSION (the sections the extractor
reads). The image is a phantom (:mod:`medtrim_ext.datasets.phantoms`) rendered from the
meta-entities the project's extractor reads in that report, through the descriptor table of
:mod:`.descriptors`: the findings, sides, sizes and zones follow the report; the patient, anatomy,
exposure and noise vary per study as in the phantoms.

Ground truth (``attributes``, which the fine-grained metrics score) is what was rendered *from
the report*. Where the report is silent (an opacity without a side), the renderer draws the value
at random, like the patient's position, and the ground truth leaves it out (None): the report
cannot tell it, so a retrieval must not be scored on it.

What this benchmark can show: real report language (hedges, negations, comparisons, dictation
noise), a real label distribution (two thirds normal, findings that occur together) and real
duplication (many studies share one record). What it cannot: the disagreement between what an
image shows and what its report says. Every image shows exactly what its report's extraction says,
including the extractor's own mistakes.

Splits: a deterministic 80 / 10 / 10 hash of the report id (as the ``iu`` kind). Study ``CXR<n>``
of a seed is the same image whatever the split sizes or the other reports.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ...utils.checks import check_int
from ..base import ReportImageDataset, hash_split, image_text, normalize_split, resolve_records
from ..phantoms.attributes import _choice, seed_from_text
from ..phantoms.reports import _pick
from .descriptors import ALWAYS_BILATERAL, APPLIES, SIZE_SCALES, map_finding, render_size

SPLIT_SHARES = (0.8, 0.1, 0.1)
_ARCHIVE = ("data", "NLMCXR_reports.tgz")
# the values drawn where a report is silent: sides as the phantoms' lung opacity, zones evenly
_SIDES = (("left", "right", "bilateral"), (0.4, 0.4, 0.2))
_ZONES = ("upper", "mid", "lower")
# findings whose unspecified size keeps the renderer's medium look rather than a drawn grade
_MEDIUM_LOOK = ("lung opacity", "pleural other")


def find_iu_reports(reports=None) -> Path:
    """The IU report archive: ``reports`` if given, else the copy inside the installed
    ``torchxrayvision`` package. ``ValueError`` names the package or the path when it is missing."""
    if reports is not None:
        path = Path(reports)
        if not path.exists():
            raise ValueError(f"reports path {str(path)!r} does not exist")
        return path
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the iu_phantoms dataset reads the IU reports from the torchxrayvision "
                         "package, which is not installed: pip install torchxrayvision (make setup "
                         "installs it), or pass reports=<NLMCXR_reports.tgz>")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*_ARCHIVE)
    if not path.exists():
        raise ValueError(f"torchxrayvision is installed but has no {'/'.join(_ARCHIVE)} ({path}); "
                         "pass reports=<NLMCXR_reports.tgz>")
    return path


def stream_seed(seed: int) -> int:
    """The phantom stream seed of a dataset seed (apart from the built-in phantoms' seeds)."""
    return seed_from_text(f"medtrim-iu-phantoms/{int(seed)}")


def study_index(study_id: str) -> int:
    """The stream index of a study: from its id alone, so its image never depends on the others."""
    return seed_from_text(str(study_id))


def truth_of(record: dict) -> tuple[dict, list]:
    """The ground truth of one record (``{disease: {side, size, zone, form}}``, None where the
    report is silent) and its undrawn descriptors ``[(disease, descriptor, reason)]``."""
    truth, unused = {}, []
    for disease, ent in record.items():
        t, u = map_finding(disease, ent.get("adjs", ()), ent.get("dirs", ()))
        truth[disease] = t
        unused += [(disease, word, why) for word, why in u]
    return truth, unused


def rendered_attributes(truth: dict, rng: np.random.Generator) -> dict:
    """The renderer's attributes of a ground truth: values the report leaves open drawn from
    ``rng`` (sides 40 / 40 / 20 left / right / bilateral, zones evenly, sizes evenly on the
    disease's scale; the medium look for opacities and pleural thickening), edema on both sides."""
    out = {}
    for disease, t in truth.items():
        applies = APPLIES[disease]
        a = {"side": None, "size": None, "zone": None, "form": t["form"]}
        if "side" in applies:
            a["side"] = t["side"] or _choice(rng, *_SIDES)
        elif disease in ALWAYS_BILATERAL:
            a["side"] = "bilateral"
        if "zone" in applies:
            a["zone"] = t["zone"] or (_pick(rng, _ZONES),)
        if "size" in applies:
            if t["size"] is not None:
                a["size"] = render_size(disease, t["size"])
            elif disease not in _MEDIUM_LOOK:
                a["size"] = _pick(rng, sorted(set(SIZE_SCALES[disease].values())))
        out[disease] = a
    return out


def render_studies(truths: list, study_ids: list, seed: int, image_size: int,
                   progress: bool = False) -> tuple[torch.Tensor, list]:
    """uint8 ``(N, H, W)`` images of the studies and the attributes each was rendered with; study
    ``i``'s nuisance, geometry and noise come from the streams of ``(seed, study id)``."""
    from ..phantoms.attributes import _streams, validate_render_attributes
    from ..phantoms.generate import render_chunks
    from ..phantoms.scene import sample_scene

    base = stream_seed(seed)
    rendered = []

    def sample(i: int):
        r_attr, r_scene, r_find, r_noise, _ = _streams(base, study_index(study_ids[i]))
        attrs = validate_render_attributes(rendered_attributes(truths[i], r_attr),
                                           f"study {study_ids[i]}")
        rendered.append(attrs)
        noise = r_noise.standard_normal((image_size, image_size), dtype=np.float32)
        return sample_scene(r_scene, r_find, attrs), noise

    images = render_chunks(len(truths), image_size, sample, progress=progress, desc="IU phantoms")
    return images, rendered


def coverage_of(records: list, unused: list, skipped_empty: list) -> dict:
    """What the renderer drew and what it could not, counted in studies."""
    findings = Counter(d for r in records for d in r)
    not_drawn: dict[str, dict] = {}
    for per_study in unused:
        for disease, word, why in set(per_study):
            row = not_drawn.setdefault(f"{disease}: {word}", {"reason": why, "studies": 0})
            row["studies"] += 1
    return {"studies": len(records), "normal": sum(1 for r in records if not r),
            "skipped_without_findings_or_impression": len(skipped_empty),
            "findings": dict(findings.most_common()),
            "studies_with_an_undrawn_descriptor": sum(1 for u in unused if u),
            "undrawn_descriptors": dict(sorted(not_drawn.items(), key=lambda kv: -kv[1]["studies"]))}


class IUPhantomDataset(ReportImageDataset):
    """Real IU reports with phantom images of their findings (see the module docstring).

    Args:
        split: "train", "validate" or "test" (80 / 10 / 10 by a hash of the report id).
        seed: the patients, exposures and noise of the images (and the draws of values the
            reports leave open); the reports and splits do not depend on it.
        n: at most this many studies of the split (the first in natural id order); None: all.
        reports: the IU report archive or XML folder (default: torchxrayvision's copy).
        image_size, in_chans, train, normalize, transform, sections, aug_seed: as the phantoms.
        phantom_size: resolution the phantoms are rendered at (default ``image_size``).
        entities: both modes give the extracted records, which are this dataset's ground truth
            (the images are drawn from them); ``cache_dir`` caches the extraction.

    ``attributes``: the ground truth per study; ``rendered``: the attributes each image was drawn
    with (with the values the report leaves open); ``coverage``: counts of what was drawn and
    what was not (undrawn descriptors with their reasons).
    """

    kind = "iu_phantoms"

    def __init__(self, split: str = "train", seed: int = 0, *, n: int | None = None, reports=None,
                 image_size: int = 64, in_chans: int = 1, train: bool = False, normalize: str = "half",
                 transform: Callable | None = None, phantom_size: int | None = None,
                 entities: str = "extracted", cache_dir=None, progress: bool = False,
                 sections: bool = True, aug_seed: int | None = None, extractor=None):
        from ...extraction.readers import read_reports
        from ..openi import _natural_key

        if entities not in ("extracted", "ground_truth"):
            raise ValueError(f"entities must be 'extracted' or 'ground_truth', got {entities!r}")
        self.split = normalize_split(split)
        self.base_seed = check_int("seed", seed, minimum=0)
        n = None if n is None else check_int("n", n, minimum=0)
        source = read_reports(find_iu_reports(reports))
        order = sorted(range(len(source.ids)), key=lambda k: _natural_key(str(source.ids[k])))
        ids, texts, skipped = [], [], []
        for k in order:
            rid = str(source.ids[k])
            if hash_split(rid, SPLIT_SHARES) != self.split:
                continue
            if not image_text(source.texts[k]).strip():
                skipped.append(rid)     # nothing in FINDINGS / IMPRESSION: no text to align
                continue
            ids.append(rid)
            texts.append(source.texts[k])
        if n is not None:
            ids, texts = ids[:n], texts[:n]
        records = resolve_records("extracted", ids, texts, cache_dir=cache_dir, progress=progress,
                                  extractor=extractor, where=f"IU phantoms {self.split}")
        truths, unused = zip(*(truth_of(r) for r in records)) if records else ((), ())
        self.coverage = coverage_of(records, list(unused), skipped)
        size = phantom_size or image_size
        self.phantom_images, self.rendered = render_studies(list(truths), ids, self.base_seed,
                                                            size, progress=progress)
        self._setup(reports=texts, study_ids=ids, records=records, transform=transform,
                    image_size=image_size, in_chans=in_chans, train=train, sections=sections,
                    attributes=[_plain(t) for t in truths], seed=aug_seed, normalize=normalize)

    @property
    def images(self) -> torch.Tensor:
        """uint8 ``(N, H, W)`` phantom images before the transform."""
        return self.phantom_images

    def load_image(self, i: int):
        return self.phantom_images[i]


def _plain(truth: dict) -> dict:
    """A ground truth for the metrics: zones as lists (a set, in the keys' canonical form)."""
    return {d: {k: (list(v) if isinstance(v, tuple) else v) for k, v in t.items()}
            for d, t in truth.items()}
