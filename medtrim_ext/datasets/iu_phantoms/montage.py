"""Pictures and tables of the IU phantoms: report text beside its image, and the coverage table."""

from __future__ import annotations

import textwrap
from pathlib import Path

from ...utils.checks import check_int

_SIDE_LETTERS = {"left": "L", "right": "R", "bilateral": "B"}


def caption(truth: dict) -> str:
    """One line of a ground truth: 'B pleural effusion small; cardiomegaly mild' ('normal' when
    empty); values the report leaves open are not shown."""
    if not truth:
        return "normal"
    parts = []
    for disease, a in truth.items():
        words = [_SIDE_LETTERS.get(a.get("side") or "", ""), disease, a.get("size") or ""]
        zone = a.get("zone")
        words.append("+".join(zone) if isinstance(zone, (list, tuple)) else (zone or ""))
        words.append(a.get("form") or "")
        parts.append(" ".join(w for w in words if w))
    return "; ".join(parts)


def save_report_montage(dataset, path, n: int = 6, width: int = 70) -> Path:
    """A PNG of ``n`` studies, each its rendered image beside its report text (FINDINGS /
    IMPRESSION) and the ground truth drawn; abnormal studies first, so the findings show.
    Written atomically."""
    from matplotlib.figure import Figure

    from ...evaluation.plots import _save as save_png

    n = check_int("n", n)
    order = sorted(range(len(dataset)), key=lambda i: (not dataset.attributes[i], i))
    # a few abnormal studies and one normal one (the normal share is the largest)
    abnormal = [i for i in order if dataset.attributes[i]][:max(1, n - 1)]
    normal = [i for i in order if not dataset.attributes[i]][:n - len(abnormal)]
    picks = abnormal + normal
    if not picks:
        raise ValueError("the dataset is empty: nothing to draw")
    fig = Figure(figsize=(9.5, 2.1 * len(picks)))
    axes = fig.subplots(len(picks), 2, squeeze=False, gridspec_kw={"width_ratios": [1, 3.4]})
    for row, i in zip(axes, picks):
        row[0].imshow(dataset.images[i].numpy(), cmap="gray", vmin=0, vmax=255)
        row[0].axis("off")
        row[0].set_title(dataset.study_ids[i], fontsize=8)
        text = textwrap.fill(dataset.texts[i], width=width, max_lines=7, placeholder=" ...")
        row[1].axis("off")
        row[1].text(0.0, 1.0, text, va="top", ha="left", fontsize=7.5, family="monospace",
                    transform=row[1].transAxes)
        row[1].text(0.0, 0.02, "drawn: " + caption(dataset.attributes[i]), va="bottom",
                    ha="left", fontsize=8, color="tab:blue", transform=row[1].transAxes)
    fig.tight_layout()
    return save_png(fig, path)


def coverage_markdown(coverage: dict, split: str = "") -> str:
    """Markdown of ``IUPhantomDataset.coverage``: findings drawn, and every descriptor not drawn
    with its reason and the number of studies it occurs in."""
    c = coverage
    lines = [f"# IU phantoms{f' ({split} split)' if split else ''}: what was drawn\n",
             f"{c['studies']} studies ({c['normal']} with no finding); "
             f"{c['skipped_without_findings_or_impression']} reports skipped for an empty FINDINGS "
             f"and IMPRESSION. Every finding of the vocabulary has a picture.\n",
             "| finding | studies |", "|---|---:|"]
    lines += [f"| {d} | {k} |" for d, k in c["findings"].items()]
    lines += ["", f"{c['studies_with_an_undrawn_descriptor']} studies have a descriptor that is "
              "not drawn (it stays in the report and the meta-entities, not in the image or the "
              "ground truth):\n", "| finding: descriptor | reason | studies |", "|---|---|---:|"]
    lines += [f"| {k} | {v['reason']} | {v['studies']} |" for k, v in c["undrawn_descriptors"].items()]
    return "\n".join(lines) + "\n"
