// CPU kernels: the materialized score matrix and the fused score + mining pass.
#include <ATen/Parallel.h>

#include "checks.h"
#include "meta_entity.h"
#include "meta_entity_ops.h"

namespace medtrim {
namespace {

// Raw views of one contiguous entity set.
struct EntityArrays {
  const uint32_t* dis;
  const uint32_t* adj;
  const uint32_t* dir;
  int64_t n;
  int64_t adj_stride;  // classes * wa
  int64_t dir_stride;  // classes * wr
  uint32_t classes_mask;

  EntityArrays(const at::Tensor& dis_t, const at::Tensor& adj_t, const at::Tensor& dir_t)
      : dis(reinterpret_cast<const uint32_t*>(dis_t.data_ptr<int32_t>())),
        adj(reinterpret_cast<const uint32_t*>(adj_t.data_ptr<int32_t>())),
        dir(reinterpret_cast<const uint32_t*>(dir_t.data_ptr<int32_t>())),
        n(dis_t.size(0)),
        adj_stride(adj_t.size(1) * adj_t.size(2)),
        dir_stride(dir_t.size(1) * dir_t.size(2)),
        classes_mask(class_mask(adj_t.size(1))) {}

  SampleView view(int64_t i) const {
    return SampleView{dis[i] & classes_mask, adj + i * adj_stride, dir + i * dir_stride};
  }
};

// Rows per parallel task: enough pairs per task (~64k) to amortize scheduling.
int64_t row_grain(int64_t m) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(m, 1)); }

ScoreWeights to_float_weights(double w_dis, double w_adj, double w_dir) {
  return ScoreWeights{w_dis, w_adj, w_dir};
}

}  // namespace

at::Tensor score_matrix_cpu(const at::Tensor& a_dis, const at::Tensor& a_adj,
                            const at::Tensor& a_dir, const at::Tensor& b_dis,
                            const at::Tensor& b_adj, const at::Tensor& b_dir, double w_dis,
                            double w_adj, double w_dir) {
  check_entities("anchor", a_dis, a_adj, a_dir);
  check_entities("candidate", b_dis, b_adj, b_dir);
  check_pair(a_adj, a_dir, b_adj, b_dir);
  check_weights(w_dis, w_adj, w_dir);
  TORCH_CHECK(a_dis.device().is_cpu(), "score_matrix_cpu called with tensors on ", a_dis.device());

  const auto ad = a_dis.contiguous(), aa = a_adj.contiguous(), ar = a_dir.contiguous();
  const auto bd = b_dis.contiguous(), ba = b_adj.contiguous(), br = b_dir.contiguous();
  const EntityArrays A(ad, aa, ar), B(bd, ba, br);
  const int wa = static_cast<int>(a_adj.size(2)), wr = static_cast<int>(a_dir.size(2));
  const ScoreWeights w = to_float_weights(w_dis, w_adj, w_dir);

  auto out = at::empty({A.n, B.n}, a_dis.options().dtype(at::kFloat));
  float* S = out.data_ptr<float>();
  const int64_t m = B.n;
  at::parallel_for(0, A.n, row_grain(m), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const SampleView a = A.view(i);
      float* row = S + i * m;
      for (int64_t j = 0; j < m; ++j) row[j] = pair_score(a, B.view(j), wa, wr, w);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> mine_triplets_cpu(
    const at::Tensor& a_dis, const at::Tensor& a_adj, const at::Tensor& a_dir,
    const at::Tensor& a_ids, const at::Tensor& b_dis, const at::Tensor& b_adj,
    const at::Tensor& b_dir, const at::Tensor& b_ids, const at::Tensor& semi_hard, double w_dis,
    double w_adj, double w_dir, double threshold, double upper) {
  check_entities("anchor", a_dis, a_adj, a_dir);
  check_entities("candidate", b_dis, b_adj, b_dir);
  check_pair(a_adj, a_dir, b_adj, b_dir);
  check_weights(w_dis, w_adj, w_dir);
  check_mining(a_dis, a_ids, b_dis, b_ids, semi_hard, threshold, upper);
  TORCH_CHECK(a_dis.device().is_cpu(), "mine_triplets_cpu called with tensors on ", a_dis.device());

  const auto ad = a_dis.contiguous(), aa = a_adj.contiguous(), ar = a_dir.contiguous();
  const auto bd = b_dis.contiguous(), ba = b_adj.contiguous(), br = b_dir.contiguous();
  const auto aid = a_ids.contiguous(), bid = b_ids.contiguous(), semi = semi_hard.contiguous();
  const EntityArrays A(ad, aa, ar), B(bd, ba, br);
  const int wa = static_cast<int>(a_adj.size(2)), wr = static_cast<int>(a_dir.size(2));
  const ScoreWeights w = to_float_weights(w_dis, w_adj, w_dir);
  // Comparisons happen in float32, like comparing a float32 score tensor with a Python float.
  const float thr = static_cast<float>(threshold), up = static_cast<float>(upper);

  auto positive = at::empty({A.n}, a_ids.options());
  auto negative = at::empty({A.n}, a_ids.options());
  int64_t* pos = positive.data_ptr<int64_t>();
  int64_t* neg = negative.data_ptr<int64_t>();
  const int64_t* anchor_id = aid.data_ptr<int64_t>();
  const int64_t* cand_id = bid.data_ptr<int64_t>();
  const bool* use_semi = semi.data_ptr<bool>();
  const int64_t m = B.n;

  at::parallel_for(0, A.n, row_grain(m), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const SampleView a = A.view(i);
      const int64_t self = anchor_id[i];
      MineState state;
      for (int64_t j = 0; j < m; ++j) {
        if (cand_id[j] == self) continue;
        state.push(pair_score(a, B.view(j), wa, wr, w), static_cast<uint32_t>(j), thr, up);
      }
      pos[i] = state.positive_index();
      neg[i] = state.negative_index(use_semi[i]);
    }
  });
  return {positive, negative};
}

}  // namespace medtrim
