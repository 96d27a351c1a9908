"""generate_phantoms: ``n`` phantoms of a seed, images and reports, in chunks of a bounded size."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ...utils.checks import check_int
from .attributes import _streams, sample_attributes, validate_attributes
from .render import render
from .reports import attributes_to_record, compose_report
from .scene import sample_scene

_CHUNK_PIXELS = 1 << 17  # pixels rendered at once: bounds the float32 temporaries of render


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


def _int_arg(name: str, value, minimum: int, maximum: int | None = None) -> int:
    """:func:`check_int`, also taking numpy integers (array elements often are), with an
    optional upper bound."""
    value = check_int(name, int(value) if isinstance(value, np.integer) else value, minimum)
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an int in [{minimum}, {maximum}], got {value!r}")
    return value


def _check_forced(attributes, n: int) -> list[dict]:
    """The ``attributes`` argument of :func:`generate_phantoms`: ``n`` checked dicts."""
    if not isinstance(attributes, (list, tuple)) or len(attributes) != n:
        length = len(attributes) if hasattr(attributes, "__len__") else "?"
        raise ValueError(f"attributes must be a list of n={n} dicts, got "
                         f"{type(attributes).__name__} of length {length}")
    return [validate_attributes(a, f"attributes[{i}]") for i, a in enumerate(attributes)]


def _sample(seed: int, i: int, image_size: int, forced: dict | None) -> tuple:
    """(scene, noise, attributes, report) of sample ``i``, each from its own stream."""
    r_attr, r_scene, r_find, r_noise, r_txt = _streams(seed, i)
    attrs = sample_attributes(r_attr) if forced is None else forced
    scene = sample_scene(r_scene, r_find, attrs)
    noise = r_noise.standard_normal((image_size, image_size), dtype=np.float32)
    return scene, noise, attrs, compose_report(attrs, r_txt)


def render_chunks(n: int, image_size: int, sample, progress: bool = False,
                  desc: str = "phantoms") -> torch.Tensor:
    """uint8 ``(n, H, W)`` images of ``sample(i) -> (scene, noise)`` for i in order, rendered in
    chunks of a bounded size; ``progress``: a tqdm bar over chunks."""
    from tqdm import tqdm

    chunk = max(1, _CHUNK_PIXELS // (image_size * image_size))
    images = np.empty((n, image_size, image_size), dtype=np.uint8)
    for start in tqdm(range(0, n, chunk), desc=desc, unit="chunk", disable=not progress):
        scenes, noises = zip(*(sample(i) for i in range(start, min(n, start + chunk))))
        img = render(list(scenes), list(noises), image_size)
        images[start:start + len(scenes)] = np.rint(img * 255).astype(np.uint8)
    return torch.from_numpy(images)


def generate_phantoms(n: int, seed: int = 0, image_size: int = 64, progress: bool = False, *,
                      attributes: list | None = None) -> PhantomSet:
    """Generate ``n`` phantoms (images, reports, ground truth) from ``seed``.

    Sample ``i`` depends only on ``(seed, i)``. ``attributes``: optional list of ``n``
    ground-truth dicts to render instead of sampled ones (nuisance and phrasing stay random);
    useful to show or test one finding. ``progress``: a tqdm bar over chunks.
    """
    n = _int_arg("n", n, 0)
    seed = _int_arg("seed", seed, 0, 2**63 - 1)
    image_size = _int_arg("image_size", image_size, 16, 1024)
    forced = None if attributes is None else _check_forced(attributes, n)

    reports, all_attrs = [], []

    def sample(i: int):
        scene, noise, attrs, text = _sample(seed, i, image_size, None if forced is None else forced[i])
        reports.append(text)
        all_attrs.append(attrs)
        return scene, noise

    images = render_chunks(n, image_size, sample, progress=progress, desc="phantoms")
    return PhantomSet(images=images, reports=reports, attributes=all_attrs,
                      records=[attributes_to_record(a) for a in all_attrs],
                      study_ids=[f"phantom-s{seed}-{i:06d}" for i in range(n)], seed=seed,
                      meta={"image_size": image_size, "generator": "medtrim_ext.datasets.phantoms"})
