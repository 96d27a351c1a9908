"""Thin wrappers over the ``torch.ops.medtrim`` kernels, plus their fake (meta) implementations.

The fake kernels give output shapes without running anything, which is what ``torch.compile`` and
``torch.library.opcheck`` need. Argument checking for users lives in :mod:`medtrim_ext.mining`;
the C++ side re-checks so the raw ops are safe on their own.
"""

from __future__ import annotations

import torch

from .. import _C
from ..entities.meta_entities import MetaEntities


# what the compiled module says it holds (the one source of build information)
_HAS_CUDA_KERNELS = bool(_C.build_info()["cuda"])


def _require_backend(device: torch.device) -> None:
    if device.type == "cuda" and not _HAS_CUDA_KERNELS:
        raise RuntimeError(
            "medtrim_ext was built without its CUDA kernels (no CUDA torch or nvcc at build time), "
            "so it cannot run on cuda tensors: rebuild with MEDTRIM_CUDA=ON, or use .cpu()")


def _check_one_device(op: str, **tensors) -> None:
    """The device check of the real kernels, for the fake ones.

    A call that mixes meta tensors with real ones dispatches to the fake kernel, not to a real
    kernel's checks: without this it returned uninitialised memory on the first argument's device.
    The first named tensor sets the device; ``None`` (an absent optional) is skipped.
    """
    items = [(name, t) for name, t in tensors.items() if t is not None]
    first, ref = items[0]
    for name, t in items[1:]:
        if t.device != ref.device:
            raise RuntimeError(f"medtrim::{op}: {name} is on {t.device} but {first} is on "
                               f"{ref.device}; all tensors must be on one device")


@torch.library.register_fake("medtrim::score_matrix")
def _score_matrix_fake(anchor_dis, anchor_adj, anchor_dir, candidate_dis, candidate_adj,
                       candidate_dir, w_dis, w_adj, w_dir):
    _check_one_device("score_matrix", anchor_dis=anchor_dis, anchor_adj=anchor_adj,
                      anchor_dir=anchor_dir, candidate_dis=candidate_dis,
                      candidate_adj=candidate_adj, candidate_dir=candidate_dir)
    return anchor_dis.new_empty((anchor_dis.shape[0], candidate_dis.shape[0]), dtype=torch.float32)


@torch.library.register_fake("medtrim::mine_triplets")
def _mine_triplets_fake(anchor_dis, anchor_adj, anchor_dir, anchor_ids, candidate_dis,
                        candidate_adj, candidate_dir, candidate_ids, semi_hard, w_dis, w_adj,
                        w_dir, threshold, upper, tie_seed=None):
    _check_one_device("mine_triplets", anchor_dis=anchor_dis, anchor_adj=anchor_adj,
                      anchor_dir=anchor_dir, anchor_ids=anchor_ids, candidate_dis=candidate_dis,
                      candidate_adj=candidate_adj, candidate_dir=candidate_dir,
                      candidate_ids=candidate_ids, semi_hard=semi_hard)
    if tie_seed is not None and tie_seed.device.type != "cpu":  # read on the host, as in C++
        raise RuntimeError(f"medtrim::mine_triplets: tie_seed must be an int64 CPU tensor with one "
                           f"element, got one on {tie_seed.device}")
    n = anchor_dis.shape[0]
    return anchor_ids.new_empty((n,)), anchor_ids.new_empty((n,))


@torch.library.register_fake("medtrim::pair_scores")
def _pair_scores_fake(anchor_dis, anchor_adj, anchor_dir, candidate_dis, candidate_adj,
                      candidate_dir, anchor_index, candidate_index, w_dis, w_adj, w_dir):
    _check_one_device("pair_scores", anchor_dis=anchor_dis, anchor_adj=anchor_adj,
                      anchor_dir=anchor_dir, candidate_dis=candidate_dis,
                      candidate_adj=candidate_adj, candidate_dir=candidate_dir,
                      anchor_index=anchor_index, candidate_index=candidate_index)
    return anchor_dis.new_empty(anchor_index.shape, dtype=torch.float32)


def score_matrix(anchors: MetaEntities, candidates: MetaEntities, w_dis: float, w_adj: float,
                 w_dir: float) -> torch.Tensor:
    _require_backend(anchors.device)
    return torch.ops.medtrim.score_matrix(
        anchors.disease_bits, anchors.adjective_bits, anchors.direction_bits,
        candidates.disease_bits, candidates.adjective_bits, candidates.direction_bits,
        float(w_dis), float(w_adj), float(w_dir))


def mine_triplets(anchors: MetaEntities, candidates: MetaEntities, anchor_ids: torch.Tensor,
                  candidate_ids: torch.Tensor, semi_hard: torch.Tensor, w_dis: float, w_adj: float,
                  w_dir: float, threshold: float, upper: float,
                  tie_seed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    _require_backend(anchors.device)
    return torch.ops.medtrim.mine_triplets(
        anchors.disease_bits, anchors.adjective_bits, anchors.direction_bits, anchor_ids,
        candidates.disease_bits, candidates.adjective_bits, candidates.direction_bits,
        candidate_ids, semi_hard, float(w_dis), float(w_adj), float(w_dir), float(threshold),
        float(upper), tie_seed)


@torch.library.register_fake("medtrim::mine_folded")
def _mine_folded_fake(anchor_dis, anchor_adj, anchor_dir, anchor_inverse, anchor_ids, semi_hard,
                      candidate_dis, candidate_adj, candidate_dir, candidate_inverse, candidate_ids,
                      w_dis, w_adj, w_dir, threshold, upper, min_positive_score, tie_seed, k, negatives):
    _check_one_device("mine_folded", anchor_dis=anchor_dis, anchor_inverse=anchor_inverse,
                      anchor_ids=anchor_ids, semi_hard=semi_hard, candidate_dis=candidate_dis,
                      candidate_inverse=candidate_inverse, candidate_ids=candidate_ids)
    n, width = anchor_ids.shape[0], k if negatives else 0
    return (anchor_ids.new_empty((n, k)), anchor_ids.new_empty((n, width)),
            anchor_dis.new_empty((n, k), dtype=torch.float32), anchor_dis.new_empty((n, width), dtype=torch.float32))


def mine_folded(anchors: MetaEntities, anchor_inverse: torch.Tensor, anchor_ids: torch.Tensor,
                semi_hard: torch.Tensor, candidates: MetaEntities, candidate_inverse: torch.Tensor,
                candidate_ids: torch.Tensor, w_dis: float, w_adj: float, w_dir: float,
                threshold: float, upper: float, min_positive_score: float,
                tie_seed: torch.Tensor | None, k: int, negatives: bool):
    """The folded collection kernel (``csrc/cpu/folded_cpu.cpp``) on distinct records
    (``anchors``/``candidates``: U rows each) and per-sample inverse indices and ids.

    It runs on the CPU. Tensors on a GPU are copied to the CPU and the results back: what the
    kernel does past the ``U_a x U_c`` scores is a walk over sorted sample lists, and the
    distinct records of a collection are few (:meth:`MetaEntities.unique` itself runs on the GPU)."""
    device = anchors.device
    args = [anchors.disease_bits, anchors.adjective_bits, anchors.direction_bits, anchor_inverse,
            anchor_ids, semi_hard, candidates.disease_bits, candidates.adjective_bits,
            candidates.direction_bits, candidate_inverse, candidate_ids]
    out = torch.ops.medtrim.mine_folded(
        *(t.cpu() for t in args), float(w_dis), float(w_adj), float(w_dir), float(threshold),
        float(upper), float(min_positive_score), tie_seed, int(k), bool(negatives))
    return tuple(t.to(device) for t in out)


def pair_scores(anchors: MetaEntities, candidates: MetaEntities, anchor_index: torch.Tensor,
                candidate_index: torch.Tensor, w_dis: float, w_adj: float, w_dir: float) -> torch.Tensor:
    _require_backend(anchors.device)
    return torch.ops.medtrim.pair_scores(
        anchors.disease_bits, anchors.adjective_bits, anchors.direction_bits,
        candidates.disease_bits, candidates.adjective_bits, candidates.direction_bits,
        anchor_index, candidate_index, float(w_dis), float(w_adj), float(w_dir))


# ---- fused multimodal triplet loss ------------------------------------------------------------

def _loss_acc_dtype(img: torch.Tensor) -> torch.dtype:
    return torch.float64 if img.dtype == torch.float64 else torch.float32


@torch.library.register_fake("medtrim::triplet_loss_forward")
def _triplet_loss_forward_fake(img, txt, cand_img, cand_txt, anchor, positive, negative, margin):
    _check_one_device("triplet_loss_forward", img=img, txt=txt, cand_img=cand_img,
                      cand_txt=cand_txt, anchor=anchor, positive=positive, negative=negative)
    t = anchor.shape[0]
    rows = 2 * img.shape[0] + (0 if cand_img is None else 2 * cand_img.shape[0])
    acc = _loss_acc_dtype(img)
    return (img.new_empty((t,), dtype=acc), img.new_empty((t,), dtype=acc),
            anchor.new_empty((t,), dtype=torch.uint8), img.new_empty((rows,), dtype=acc))


@torch.library.register_fake("medtrim::triplet_loss_backward")
def _triplet_loss_backward_fake(grad_loss_img, grad_loss_txt, img, txt, cand_img, cand_txt, anchor,
                                positive, negative, active, inv_norms):
    _check_one_device("triplet_loss_backward", img=img, txt=txt, cand_img=cand_img,
                      cand_txt=cand_txt, grad_loss_img=grad_loss_img, grad_loss_txt=grad_loss_txt,
                      anchor=anchor, positive=positive, negative=negative, active=active,
                      inv_norms=inv_norms)

    def like(x, other):
        return torch.empty_like(x) if x is not None else other.new_empty((0, other.shape[1]))

    return (torch.empty_like(img), torch.empty_like(txt), like(cand_img, img), like(cand_txt, txt))


def _triplet_loss_setup_context(ctx, inputs, output):
    img, txt, cand_img, cand_txt, anchor, positive, negative, _margin = inputs
    _loss_img, _loss_txt, active, inv_norms = output
    ctx.has_candidates = cand_img is not None
    ctx.save_for_backward(img, txt, cand_img, cand_txt, anchor, positive, negative, active, inv_norms)
    ctx.mark_non_differentiable(active, inv_norms)


def _triplet_loss_backward(ctx, grad_loss_img, grad_loss_txt, _grad_active, _grad_inv_norms):
    img, txt, cand_img, cand_txt, anchor, positive, negative, active, inv_norms = ctx.saved_tensors
    acc = inv_norms.dtype
    zeros = anchor.new_zeros(anchor.shape, dtype=acc)
    grad_loss_img = zeros if grad_loss_img is None else grad_loss_img.to(acc).contiguous()
    grad_loss_txt = zeros if grad_loss_txt is None else grad_loss_txt.to(acc).contiguous()
    g_img, g_txt, g_cimg, g_ctxt = torch.ops.medtrim.triplet_loss_backward(
        grad_loss_img, grad_loss_txt, img, txt, cand_img, cand_txt, anchor, positive, negative,
        active, inv_norms)
    if not ctx.has_candidates:
        g_cimg = g_ctxt = None
    return g_img, g_txt, g_cimg, g_ctxt, None, None, None, None


torch.library.register_autograd("medtrim::triplet_loss_forward", _triplet_loss_backward,
                                setup_context=_triplet_loss_setup_context)


# The loss has no second derivative here: the backward kernel is not differentiable. Gradients
# taken with create_graph=True are right to first order, but differentiating them again must not
# silently treat the loss's part as zero (gradgradcheck, gradient penalties): it raises instead.
_NO_DOUBLE_BACKWARD = (
    "MultimodalTripletLoss (medtrim::triplet_loss_forward) has no second derivative: its gradients "
    "can be taken with create_graph=True, but not differentiated again (double backward, "
    "gradient penalties through this loss). Use medtrim_ext.ops.reference.multimodal_triplet_loss, "
    "pure PyTorch, where second-order gradients are needed.")


def _triplet_loss_backward_setup_context(ctx, inputs, output):
    pass


def _triplet_loss_double_backward(ctx, *grads):
    raise RuntimeError(_NO_DOUBLE_BACKWARD)


torch.library.register_autograd("medtrim::triplet_loss_backward", _triplet_loss_double_backward,
                                setup_context=_triplet_loss_backward_setup_context)


# Forward-mode AD has no rule here (register_autograd is reverse mode only): torch.func.jvp saw a
# tangent of 0 and torch.autograd.forward_ad none at all. torch.func's reverse transforms (grad,
# vjp, jacrev) fail inside torch with a message about setup_context. Both raise this instead.
_NO_FORWARD_AD = (
    "MultimodalTripletLoss (medtrim::triplet_loss_forward) has no forward-mode AD rule: "
    "torch.func.jvp/jacfwd and torch.autograd.forward_ad would silently see a zero tangent. Use "
    "medtrim_ext.ops.reference.multimodal_triplet_loss, pure PyTorch, for forward-mode AD.")
_NO_FUNC_TRANSFORMS = (
    "MultimodalTripletLoss (medtrim::triplet_loss_forward) cannot run under torch.func's grad, "
    "vjp or jacrev: it supports reverse-mode autograd through loss.backward() or "
    "torch.autograd.grad. Use those, or medtrim_ext.ops.reference.multimodal_triplet_loss, pure "
    "PyTorch, inside torch.func transforms.")


def _refuse_unsupported_autodiff(*tensors) -> None:
    if torch.compiler.is_compiling():  # traced graphs carry no functorch levels or dual tensors
        return
    if torch._C._functorch.peek_interpreter_stack() is not None:
        from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

        keys = {i.key() for i in retrieve_all_functorch_interpreters()}
        TransformType = torch._C._functorch.TransformType
        if TransformType.Jvp in keys:
            raise RuntimeError(_NO_FORWARD_AD)
        if TransformType.Grad in keys:
            raise RuntimeError(_NO_FUNC_TRANSFORMS)
    if torch.autograd.forward_ad._current_level >= 0 and any(
            t is not None and torch.autograd.forward_ad.unpack_dual(t).tangent is not None
            for t in tensors):
        raise RuntimeError(_NO_FORWARD_AD)


def triplet_loss(img: torch.Tensor, txt: torch.Tensor, anchor: torch.Tensor,
                 positive: torch.Tensor, negative: torch.Tensor, margin: float,
                 cand_img: torch.Tensor | None = None,
                 cand_txt: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-triplet (image loss, text loss), float32 (float64 for float64 input), differentiable."""
    _require_backend(img.device)
    _refuse_unsupported_autodiff(img, txt, cand_img, cand_txt)
    loss_img, loss_txt, _active, _inv_norms = torch.ops.medtrim.triplet_loss_forward(
        img, txt, cand_img, cand_txt, anchor, positive, negative, float(margin))
    return loss_img, loss_txt
