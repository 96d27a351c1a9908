// CPU kernels: argument checks, candidate grouping and parallel dispatch of the hot loops
// (cpu/hot_loops.cpp) for the materialized score matrix and the fused score + mining pass.
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <vector>

#include "checks.h"
#include "cpu/cpu_prep.h"
#include "cpu/hot_loops.h"
#include "meta_entity.h"
#include "meta_entity_ops.h"

namespace medtrim {
using namespace cpu_prep;

at::Tensor score_matrix_cpu(const at::Tensor& a_dis, const at::Tensor& a_adj,
                            const at::Tensor& a_dir, const at::Tensor& b_dis,
                            const at::Tensor& b_adj, const at::Tensor& b_dir, double w_dis,
                            double w_adj, double w_dir) {
  check_score_inputs(a_dis, a_adj, a_dir, b_dis, b_adj, b_dir, w_dis, w_adj, w_dir);
  TORCH_CHECK(a_dis.device().is_cpu(), "score_matrix_cpu called with tensors on ", a_dis.device());

  const auto ad = a_dis.contiguous(), aa = a_adj.contiguous(), ar = a_dir.contiguous();
  const auto bd = b_dis.contiguous(), ba = b_adj.contiguous(), br = b_dir.contiguous();
  const QuotientTable table(a_adj.size(2), a_dir.size(2));
  const cpu::Params p = params(aa, ar, w_dis, w_adj, w_dir, table, 0.0, 0.0);
  const cpu::Anchors anchors = anchor_view(ad, aa, ar);
  const CandidateGrouping grouping(bd, ba, br, nullptr);

  auto out = at::empty({a_dis.size(0), b_dis.size(0)}, a_dis.options().dtype(at::kFloat));
  float* S = out.data_ptr<float>();
  const auto rows = hot_loops().score_rows;
  at::parallel_for(0, a_dis.size(0), row_grain(b_dis.size(0)), [&](int64_t begin, int64_t end) {
    rows(anchors, grouping.view, p, begin, end, S);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> mine_triplets_cpu(
    const at::Tensor& a_dis, const at::Tensor& a_adj, const at::Tensor& a_dir,
    const at::Tensor& a_ids, const at::Tensor& b_dis, const at::Tensor& b_adj,
    const at::Tensor& b_dir, const at::Tensor& b_ids, const at::Tensor& semi_hard, double w_dis,
    double w_adj, double w_dir, double threshold, double upper,
    const std::optional<at::Tensor>& tie_seed_tensor) {
  check_score_inputs(a_dis, a_adj, a_dir, b_dis, b_adj, b_dir, w_dis, w_adj, w_dir);
  check_mining(a_dis, a_ids, b_dis, b_ids, semi_hard, threshold, upper);
  TORCH_CHECK(a_dis.device().is_cpu(), "mine_triplets_cpu called with tensors on ", a_dis.device());
  const std::optional<uint64_t> tie_seed = read_tie_seed(tie_seed_tensor);

  const auto ad = a_dis.contiguous(), aa = a_adj.contiguous(), ar = a_dir.contiguous();
  const auto bd = b_dis.contiguous(), ba = b_adj.contiguous(), br = b_dir.contiguous();
  const auto aid = a_ids.contiguous(), bid = b_ids.contiguous(), semi = semi_hard.contiguous();
  const QuotientTable table(a_adj.size(2), a_dir.size(2));
  const cpu::Params p = params(aa, ar, w_dis, w_adj, w_dir, table, threshold, upper, tie_seed);
  cpu::Anchors anchors = anchor_view(ad, aa, ar);
  anchors.ids = aid.data_ptr<int64_t>();
  anchors.semi_hard = semi.data_ptr<bool>();
  const CandidateGrouping grouping(bd, ba, br, bid.data_ptr<int64_t>(), tie_seed);

  auto positive = at::empty({a_dis.size(0)}, a_ids.options());
  auto negative = at::empty({a_dis.size(0)}, a_ids.options());
  int64_t* pos = positive.data_ptr<int64_t>();
  int64_t* neg = negative.data_ptr<int64_t>();
  const auto rows = hot_loops().mine_rows;
  at::parallel_for(0, a_dis.size(0), row_grain(b_dis.size(0)), [&](int64_t begin, int64_t end) {
    rows(anchors, grouping.view, p, begin, end, pos, neg);
  });
  return {positive, negative};
}

at::Tensor pair_scores_cpu(const at::Tensor& a_dis, const at::Tensor& a_adj, const at::Tensor& a_dir,
                           const at::Tensor& b_dis, const at::Tensor& b_adj, const at::Tensor& b_dir,
                           const at::Tensor& anchor_index, const at::Tensor& candidate_index,
                           double w_dis, double w_adj, double w_dir) {
  check_score_inputs(a_dis, a_adj, a_dir, b_dis, b_adj, b_dir, w_dis, w_adj, w_dir);
  TORCH_CHECK(a_dis.device().is_cpu(), "pair_scores_cpu called with tensors on ", a_dis.device());
  check_pair_indices(anchor_index, candidate_index, a_dis.size(0), b_dis.size(0), a_dis.device());

  const auto ad = a_dis.contiguous(), aa = a_adj.contiguous(), ar = a_dir.contiguous();
  const auto bd = b_dis.contiguous(), ba = b_adj.contiguous(), br = b_dir.contiguous();
  const auto ai = anchor_index.contiguous(), bi = candidate_index.contiguous();
  const cpu::Anchors A = anchor_view(ad, aa, ar), B = anchor_view(bd, ba, br);
  const int wa = static_cast<int>(a_adj.size(2)), wr = static_cast<int>(a_dir.size(2));
  const ScoreWeights w{w_dis, w_adj, w_dir};
  const int64_t* ia = ai.data_ptr<int64_t>();
  const int64_t* ib = bi.data_ptr<int64_t>();
  auto out = at::empty({ai.size(0)}, a_dis.options().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  at::parallel_for(0, ai.size(0), 4096, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      if (ia[k] < 0 || ib[k] < 0) {
        o[k] = std::numeric_limits<float>::quiet_NaN();
        continue;
      }
      const SampleView a{A.dis[ia[k]] & A.classes_mask, A.adj + ia[k] * A.adj_stride,
                         A.dir + ia[k] * A.dir_stride};
      const SampleView b{B.dis[ib[k]] & B.classes_mask, B.adj + ib[k] * B.adj_stride,
                         B.dir + ib[k] * B.dir_stride};
      o[k] = pair_score(a, b, wa, wr, w, DivideQuotient{});
    }
  });
  return out;
}

}  // namespace medtrim
