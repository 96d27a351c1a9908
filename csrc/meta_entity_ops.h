// Entry points of the meta-entity kernels; registered as torch ops in python/ops_registration*.cpp.
//
// score_matrix:  (N, M) float32 score matrix, S[a, b] = score of anchor a against candidate b.
// mine_triplets: fused score + mining: (positive, negative) int64 (N,), -1 where there is none;
//                never builds N x M. tie_seed: an int64 CPU tensor of one element (a tensor, so
//                that torch.compile can trace its draw); equal scores go to the smallest tie key of
//                (tie_seed, anchor id, candidate id), then the lowest index (meta_entity.h);
//                without it, to the lowest index.
// pair_scores:   scores of listed pairs: out[k] = S(anchor_index[k], candidate_index[k]), NaN
//                where an index is -1.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace medtrim {

#define MEDTRIM_DECLARE_META_ENTITY_OPS(suffix)                                                   \
  at::Tensor score_matrix_##suffix(const at::Tensor& a_dis, const at::Tensor& a_adj,              \
                                   const at::Tensor& a_dir, const at::Tensor& b_dis,              \
                                   const at::Tensor& b_adj, const at::Tensor& b_dir, double w_dis, \
                                   double w_adj, double w_dir);                                   \
  std::tuple<at::Tensor, at::Tensor> mine_triplets_##suffix(                                      \
      const at::Tensor& a_dis, const at::Tensor& a_adj, const at::Tensor& a_dir,                  \
      const at::Tensor& a_ids, const at::Tensor& b_dis, const at::Tensor& b_adj,                  \
      const at::Tensor& b_dir, const at::Tensor& b_ids, const at::Tensor& semi_hard, double w_dis, \
      double w_adj, double w_dir, double threshold, double upper,                                 \
      const std::optional<at::Tensor>& tie_seed);                                                 \
  at::Tensor pair_scores_##suffix(const at::Tensor& a_dis, const at::Tensor& a_adj,               \
                                  const at::Tensor& a_dir, const at::Tensor& b_dis,               \
                                  const at::Tensor& b_adj, const at::Tensor& b_dir,               \
                                  const at::Tensor& anchor_index,                                 \
                                  const at::Tensor& candidate_index, double w_dis, double w_adj,  \
                                  double w_dir);

MEDTRIM_DECLARE_META_ENTITY_OPS(cpu)

// mine_folded: K triplets (negatives=true) or the K best candidates (negatives=false) per anchor
// sample of a whole collection, from distinct records (anchor_* / candidate_* bits: U rows) and
// each sample's record (inverse) and id; the choices equal mine_triplets' (K = 1) and the
// reference's exactly. Returns (positive, negative, positive_score, negative_score): int64 and
// float32 (N, K) (negatives (N, 0) when not asked for), -1 / NaN where none. CPU only
// (cpu/folded_cpu.cpp); the Python wrapper runs it for CUDA tensors too.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mine_folded_cpu(
    const at::Tensor& a_dis, const at::Tensor& a_adj, const at::Tensor& a_dir,
    const at::Tensor& a_inverse, const at::Tensor& a_ids, const at::Tensor& semi_hard,
    const at::Tensor& b_dis, const at::Tensor& b_adj, const at::Tensor& b_dir,
    const at::Tensor& b_inverse, const at::Tensor& b_ids, double w_dis, double w_adj, double w_dir,
    double threshold, double upper, double min_positive_score,
    const std::optional<at::Tensor>& tie_seed, int64_t k, bool negatives);
#ifdef MEDTRIM_WITH_CUDA
MEDTRIM_DECLARE_META_ENTITY_OPS(cuda)
#endif

#undef MEDTRIM_DECLARE_META_ENTITY_OPS

}  // namespace medtrim
