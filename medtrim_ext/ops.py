"""Thin wrappers over the ``torch.ops.medtrim`` kernels, plus their fake (meta) implementations.

The fake kernels give output shapes without running anything, which is what ``torch.compile`` and
``torch.library.opcheck`` need. Argument checking for users lives in :mod:`medtrim_ext.mining`;
the C++ side re-checks so the raw ops are safe on their own.
"""

from __future__ import annotations

import torch

from . import _build_config
from .entities import MetaEntities


def _require_backend(ents: MetaEntities) -> None:
    if ents.device.type == "cuda" and not _build_config.WITH_CUDA:
        raise RuntimeError(
            "medtrim_ext was built without its CUDA kernels (no CUDA torch or nvcc at build time), "
            "so it cannot run on cuda tensors: rebuild with MEDTRIM_CUDA=ON, or use .cpu()")


@torch.library.register_fake("medtrim::score_matrix")
def _score_matrix_fake(anchor_dis, anchor_adj, anchor_dir, candidate_dis, candidate_adj,
                       candidate_dir, w_dis, w_adj, w_dir):
    return anchor_dis.new_empty((anchor_dis.shape[0], candidate_dis.shape[0]), dtype=torch.float32)


@torch.library.register_fake("medtrim::mine_triplets")
def _mine_triplets_fake(anchor_dis, anchor_adj, anchor_dir, anchor_ids, candidate_dis,
                        candidate_adj, candidate_dir, candidate_ids, semi_hard, w_dis, w_adj,
                        w_dir, threshold, upper):
    n = anchor_dis.shape[0]
    return anchor_ids.new_empty((n,)), anchor_ids.new_empty((n,))


@torch.library.register_fake("medtrim::pair_scores")
def _pair_scores_fake(anchor_dis, anchor_adj, anchor_dir, candidate_dis, candidate_adj,
                      candidate_dir, anchor_index, candidate_index, w_dis, w_adj, w_dir):
    return anchor_dis.new_empty(anchor_index.shape, dtype=torch.float32)


def score_matrix(anchors: MetaEntities, candidates: MetaEntities, w_dis: float, w_adj: float,
                 w_dir: float) -> torch.Tensor:
    _require_backend(anchors)
    return torch.ops.medtrim.score_matrix(
        anchors.disease_bits, anchors.adjective_bits, anchors.direction_bits,
        candidates.disease_bits, candidates.adjective_bits, candidates.direction_bits,
        float(w_dis), float(w_adj), float(w_dir))


def mine_triplets(anchors: MetaEntities, candidates: MetaEntities, anchor_ids: torch.Tensor,
                  candidate_ids: torch.Tensor, semi_hard: torch.Tensor, w_dis: float, w_adj: float,
                  w_dir: float, threshold: float, upper: float) -> tuple[torch.Tensor, torch.Tensor]:
    _require_backend(anchors)
    return torch.ops.medtrim.mine_triplets(
        anchors.disease_bits, anchors.adjective_bits, anchors.direction_bits, anchor_ids,
        candidates.disease_bits, candidates.adjective_bits, candidates.direction_bits,
        candidate_ids, semi_hard, float(w_dis), float(w_adj), float(w_dir), float(threshold),
        float(upper))


def pair_scores(anchors: MetaEntities, candidates: MetaEntities, anchor_index: torch.Tensor,
                candidate_index: torch.Tensor, w_dis: float, w_adj: float, w_dir: float) -> torch.Tensor:
    _require_backend(anchors)
    return torch.ops.medtrim.pair_scores(
        anchors.disease_bits, anchors.adjective_bits, anchors.direction_bits,
        candidates.disease_bits, candidates.adjective_bits, candidates.direction_bits,
        anchor_index, candidate_index, float(w_dis), float(w_adj), float(w_dir))
