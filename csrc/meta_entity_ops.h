// Entry points of the meta-entity kernels; registered as torch ops in python/ops_registration*.cpp.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace medtrim {

// (N, M) float32 score matrix, S[a, b] = score of anchor a against candidate b.
at::Tensor score_matrix_cpu(const at::Tensor& a_dis, const at::Tensor& a_adj,
                            const at::Tensor& a_dir, const at::Tensor& b_dis,
                            const at::Tensor& b_adj, const at::Tensor& b_dir, double w_dis,
                            double w_adj, double w_dir);

// Fused score + mining: (positive, negative) int64 (N,), -1 where there is none. Never builds N x M.
// tie_seed: an int64 CPU tensor of one element (a tensor, so that torch.compile can trace its draw);
// equal scores go to the smallest tie key of (tie_seed, anchor id, candidate id), then the lowest
// index (meta_entity.h); without it, to the lowest index.
std::tuple<at::Tensor, at::Tensor> mine_triplets_cpu(
    const at::Tensor& a_dis, const at::Tensor& a_adj, const at::Tensor& a_dir,
    const at::Tensor& a_ids, const at::Tensor& b_dis, const at::Tensor& b_adj,
    const at::Tensor& b_dir, const at::Tensor& b_ids, const at::Tensor& semi_hard, double w_dis,
    double w_adj, double w_dir, double threshold, double upper, const std::optional<at::Tensor>& tie_seed);

// Scores of listed pairs: out[k] = S(anchor_index[k], candidate_index[k]), NaN where an index is -1.
at::Tensor pair_scores_cpu(const at::Tensor& a_dis, const at::Tensor& a_adj, const at::Tensor& a_dir,
                           const at::Tensor& b_dis, const at::Tensor& b_adj, const at::Tensor& b_dir,
                           const at::Tensor& anchor_index, const at::Tensor& candidate_index,
                           double w_dis, double w_adj, double w_dir);

#ifdef MEDTRIM_WITH_CUDA
at::Tensor pair_scores_cuda(const at::Tensor& a_dis, const at::Tensor& a_adj, const at::Tensor& a_dir,
                            const at::Tensor& b_dis, const at::Tensor& b_adj, const at::Tensor& b_dir,
                            const at::Tensor& anchor_index, const at::Tensor& candidate_index,
                            double w_dis, double w_adj, double w_dir);

at::Tensor score_matrix_cuda(const at::Tensor& a_dis, const at::Tensor& a_adj,
                             const at::Tensor& a_dir, const at::Tensor& b_dis,
                             const at::Tensor& b_adj, const at::Tensor& b_dir, double w_dis,
                             double w_adj, double w_dir);

std::tuple<at::Tensor, at::Tensor> mine_triplets_cuda(
    const at::Tensor& a_dis, const at::Tensor& a_adj, const at::Tensor& a_dir,
    const at::Tensor& a_ids, const at::Tensor& b_dis, const at::Tensor& b_adj,
    const at::Tensor& b_dir, const at::Tensor& b_ids, const at::Tensor& semi_hard, double w_dis,
    double w_adj, double w_dir, double threshold, double upper, const std::optional<at::Tensor>& tie_seed);
#endif

}  // namespace medtrim
