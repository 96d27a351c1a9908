"""Phantoms to files: a manifest dataset on disk (:func:`write_phantom_dataset`) and a captioned
montage PNG (:func:`save_montage`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ...utils.checks import check_int
from .attributes import describe
from .generate import PhantomSet, _int_arg, generate_phantoms


def _split_column(n: int, fractions) -> list[list[str]]:
    """Per row the ``split`` cell (a one-item list) in train / validate / test order by
    ``fractions``, or no cell at all (empty lists) without fractions."""
    if fractions is None:
        return [[]] * n
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    return [["train"]] * n_train + [["validate"]] * n_val + [["test"]] * (n - n_train - n_val)


def _write_images(out: Path, ph: PhantomSet, splits: list) -> list[list]:
    """One PNG per phantom under ``out/images``; returns the manifest rows."""
    from PIL import Image

    from ...utils.io import atomic_write

    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(len(ph)):
        rel = f"images/{ph.study_ids[i]}.png"
        with atomic_write(out / rel, "wb") as f:
            Image.fromarray(ph.images[i].numpy()).save(f, format="PNG")
        rows.append([rel, ph.reports[i], ph.study_ids[i], *splits[i]])
    return rows


def _write_attributes(path: Path, ph: PhantomSet) -> None:
    """The ground truth as JSON lines of ``study_id``, ``attributes`` and ``records``."""
    from ...utils.io import atomic_write

    with atomic_write(path, "w", encoding="utf-8") as f:
        for i in range(len(ph)):
            f.write(json.dumps({"study_id": ph.study_ids[i], "attributes": ph.attributes[i],
                                "records": ph.records[i]}) + "\n")


def _write_csv(path: Path, header: list, rows: list) -> None:
    import csv
    import io

    from ...utils.io import atomic_write

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        f.write(buf.getvalue())


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
    from ..base import check_split_fractions

    n = _int_arg("n", n, 1)
    if fractions is not None:
        check_split_fractions(fractions, "fractions")
    ph = generate_phantoms(n, seed=seed, image_size=image_size, progress=progress)
    out = Path(out_dir)
    header = ["image_path", "report", "study_id"] + ([] if fractions is None else ["split"])
    rows = _write_images(out, ph, _split_column(n, fractions))
    _write_attributes(out / "attributes.jsonl", ph)
    manifest = out / "manifest.csv"
    _write_csv(manifest, header, rows)
    return manifest


def save_montage(phantoms: PhantomSet, path, n: int = 16, columns: int | None = None,
                 dpi: int = 100) -> Path:
    """Save the first ``n`` phantoms as a captioned PNG grid (written atomically)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ...utils.io import atomic_write

    if not isinstance(phantoms, PhantomSet):
        raise TypeError(f"phantoms must be a PhantomSet, got {type(phantoms).__name__}")
    n = min(check_int("n", n), len(phantoms))
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
