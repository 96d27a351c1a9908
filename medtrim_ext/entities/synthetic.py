"""Seeded synthetic meta-entity records with realistic chest X-ray statistics.

Used by the demo and the benchmarks when no extracted reports are at hand. Disease prevalences
follow the CheXpert-style labels of MIMIC-CXR (about a third of studies have no finding; the
others have 1.8 findings on average); each finding gets 0-2 adjectives and usually a side.
"""

from __future__ import annotations

import random

import torch

from .meta_entities import MetaEntities
from .vocabulary import Vocabulary

# approximate share of studies with each finding, given that the study is abnormal
ABNORMAL_PREVALENCE = {
    "pleural effusion": 0.34, "lung opacity": 0.33, "atelectasis": 0.29, "cardiomegaly": 0.28,
    "edema": 0.17, "pneumonia": 0.10, "consolidation": 0.07, "pneumothorax": 0.06,
    "lung lesion": 0.05, "enlarged cardiomediastinum": 0.04, "fracture": 0.03,
    "pleural other": 0.02,
}
NO_FINDING_SHARE = 0.32
# descriptors come from different groups (no "mild, severe"); earlier entries are more common
ADJECTIVE_GROUPS = (
    ("small", "mild", "moderate", "large", "severe"),            # size / severity
    ("patchy", "linear", "streaky", "dense", "loculated", "multifocal"),  # morphology
    ("persistent", "residual"),                                  # course
    ("basilar", "lower", "upper"),                               # zone
)
SIDES = (("left", 0.3), ("right", 0.3), ("bilateral", 0.2), (None, 0.2))
# findings without a side (the heart, the mediastinum), and edema, which is bilateral or unsided
UNSIDED = {"cardiomegaly", "enlarged cardiomediastinum"}
BILATERAL_ONLY = {"edema"}


def synthetic_records(n: int, seed: int = 0) -> list[dict]:
    """``n`` records ``{disease: {"adjs": [...], "dirs": [...]}}`` from a seeded generator."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        record: dict = {}
        if rng.random() >= NO_FINDING_SHARE:
            while not record:  # an abnormal study has at least one finding
                for disease, p in ABNORMAL_PREVALENCE.items():
                    if rng.random() < p:
                        n_adj = rng.choices((0, 1, 2), weights=(0.5, 0.35, 0.15))[0]
                        groups = rng.sample(ADJECTIVE_GROUPS, k=n_adj) if n_adj else []
                        adjs = sorted(rng.choices(g, weights=[1 / (r + 1) for r in range(len(g))])[0]
                                      for g in groups)
                        side = rng.choices([s for s, _ in SIDES], weights=[w for _, w in SIDES])[0]
                        if disease in UNSIDED:
                            side = None
                        elif disease in BILATERAL_ONLY and side is not None:
                            side = "bilateral"
                        record[disease] = {"adjs": adjs, "dirs": [side] if side else []}
        records.append(record)
    return records


def synthetic_entities(n: int, seed: int = 0, vocabulary: Vocabulary | None = None,
                       device: torch.device | str | None = None) -> MetaEntities:
    """:func:`synthetic_records` packed as :class:`MetaEntities` (default vocabulary)."""
    return MetaEntities.from_records(synthetic_records(n, seed), vocabulary=vocabulary, device=device)
