// Declares the medtrim:: torch ops and registers their CPU kernels. Importing medtrim_ext._C runs
// these static registrations; Python adds fake (meta) kernels in medtrim_ext/ops/torch_ops.py.
#include <torch/library.h>

#include "kernel_impls.h"
#include "triplet_loss_plan.h"

TORCH_LIBRARY(medtrim, m) {
  m.def(
      "score_matrix(Tensor anchor_dis, Tensor anchor_adj, Tensor anchor_dir, "
      "Tensor candidate_dis, Tensor candidate_adj, Tensor candidate_dir, "
      "float w_dis, float w_adj, float w_dir) -> Tensor");
  m.def(
      "mine_triplets(Tensor anchor_dis, Tensor anchor_adj, Tensor anchor_dir, Tensor anchor_ids, "
      "Tensor candidate_dis, Tensor candidate_adj, Tensor candidate_dir, Tensor candidate_ids, "
      "Tensor semi_hard, float w_dis, float w_adj, float w_dir, float threshold, float upper, "
      "Tensor? tie_seed=None) "
      "-> (Tensor, Tensor)");
  m.def(
      "mine_folded(Tensor anchor_dis, Tensor anchor_adj, Tensor anchor_dir, Tensor anchor_inverse, "
      "Tensor anchor_ids, Tensor semi_hard, Tensor candidate_dis, Tensor candidate_adj, "
      "Tensor candidate_dir, Tensor candidate_inverse, Tensor candidate_ids, float w_dis, "
      "float w_adj, float w_dir, float threshold, float upper, float min_positive_score, "
      "Tensor? tie_seed, int k, bool negatives) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "pair_scores(Tensor anchor_dis, Tensor anchor_adj, Tensor anchor_dir, "
      "Tensor candidate_dis, Tensor candidate_adj, Tensor candidate_dir, "
      "Tensor anchor_index, Tensor candidate_index, float w_dis, float w_adj, float w_dir) -> Tensor");
  // Fused multimodal triplet loss, per triplet; autograd is attached in medtrim_ext/ops/torch_ops.py.
  m.def(
      "triplet_loss_forward(Tensor img, Tensor txt, Tensor? cand_img, Tensor? cand_txt, "
      "Tensor anchor, Tensor positive, Tensor negative, float margin) "
      "-> (Tensor loss_img, Tensor loss_txt, Tensor active, Tensor inv_norms)");
  m.def(
      "triplet_loss_backward(Tensor grad_loss_img, Tensor grad_loss_txt, Tensor img, Tensor txt, "
      "Tensor? cand_img, Tensor? cand_txt, Tensor anchor, Tensor positive, Tensor negative, "
      "Tensor active, Tensor inv_norms) "
      "-> (Tensor grad_img, Tensor grad_txt, Tensor grad_cand_img, Tensor grad_cand_txt)");
  // Internal, for tests: the backward's gradient plan (CSR of triplet entries per row).
  m.def(
      "_triplet_loss_plan(Tensor img, Tensor txt, Tensor? cand_img, Tensor? cand_txt, "
      "Tensor anchor, Tensor positive, Tensor negative, bool counting) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(medtrim, CPU, m) {
  MEDTRIM_IMPL_KERNELS(m, cpu);
  m.impl("mine_folded", &medtrim::mine_folded_cpu);  // CPU only: see medtrim_ext/ops/torch_ops.py
}

// Runs on any device (ATen ops only), so it is registered once for all backends.
TORCH_LIBRARY_IMPL(medtrim, CompositeExplicitAutograd, m) {
  m.impl("_triplet_loss_plan", &medtrim::loss::gradient_plan_op);
}
