// CPU kernels: argument checks, candidate grouping and parallel dispatch of the hot loops
// (cpu/hot_loops.cpp) for the materialized score matrix and the fused score + mining pass.
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <vector>

#include "checks.h"
#include "cpu/hot_loops.h"
#include "meta_entity.h"
#include "meta_entity_ops.h"

namespace medtrim {
namespace {

// Every i / u with i <= u <= max_count, where max_count is the largest count a pair score can
// divide by (32 disease bits, or all bits of an adjective or direction mask) capped at
// cpu::kMaxTableCount: the table stays small (<= 133 KB) for any vocabulary, and the hot loops divide
// on the spot above the cap (cpu/hot_loops.cpp). 0 / 0 is 1, the IoU of two empty sets.
struct QuotientTable {
  int64_t stride;
  std::vector<double> values;

  QuotientTable(int64_t wa, int64_t wr)
      : stride(std::min<int64_t>(32 * std::max<int64_t>({1, wa, wr}), cpu::kMaxTableCount) + 1) {
    values.assign(static_cast<size_t>(stride * stride), 0.0);
    values[0] = 1.0;
    for (int64_t u = 1; u < stride; ++u)
      for (int64_t i = 0; i <= u; ++i)
        values[u * stride + i] = static_cast<double>(i) / static_cast<double>(u);
  }
};

// Owns the grouped copies behind a cpu::GroupedCandidates view.
struct CandidateGrouping {
  std::vector<int64_t> order, start, ids;
  std::vector<uint32_t> mask, adj, dir, tie;
  cpu::GroupedCandidates view{};

  // cand_ids: for mining (null for the score matrix); tie_seed: also hash their ids (random ties)
  CandidateGrouping(const at::Tensor& dis_t, const at::Tensor& adj_t, const at::Tensor& dir_t,
                    const int64_t* cand_ids, std::optional<uint64_t> tie_seed = std::nullopt) {
    const bool random_ties = tie_seed.has_value();
    const auto* dis = reinterpret_cast<const uint32_t*>(dis_t.data_ptr<int32_t>());
    const auto* adj_src = reinterpret_cast<const uint32_t*>(adj_t.data_ptr<int32_t>());
    const auto* dir_src = reinterpret_cast<const uint32_t*>(dir_t.data_ptr<int32_t>());
    const int64_t m = dis_t.size(0);
    const int64_t as = adj_t.size(1) * adj_t.size(2), ds = dir_t.size(1) * dir_t.size(2);
    const uint32_t classes = class_mask(adj_t.size(1));

    order.resize(m);
    for (int64_t j = 0; j < m; ++j) order[j] = j;
    std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
      return (dis[x] & classes) < (dis[y] & classes);
    });
    adj.resize(m * as);
    dir.resize(m * ds);
    if (cand_ids != nullptr) ids.resize(m);
    if (random_ties) tie.resize(m);
    for (int64_t k = 0; k < m; ++k) {
      const int64_t j = order[k];
      std::copy_n(adj_src + j * as, as, adj.begin() + k * as);
      std::copy_n(dir_src + j * ds, ds, dir.begin() + k * ds);
      if (cand_ids != nullptr) ids[k] = cand_ids[j];
      if (random_ties) tie[k] = sample_tie_hash(*tie_seed, cand_ids[j]);
      const uint32_t mk = dis[j] & classes;
      if (k == 0 || mk != mask.back()) {
        start.push_back(k);
        mask.push_back(mk);
      }
    }
    start.push_back(m);
    view = cpu::GroupedCandidates{m, static_cast<int64_t>(mask.size()), order.data(), start.data(),
                                  mask.data(), adj.data(), dir.data(),
                                  cand_ids != nullptr ? ids.data() : nullptr,
                                  random_ties ? tie.data() : nullptr, as, ds};
  }
};

cpu::Anchors anchor_view(const at::Tensor& dis, const at::Tensor& adj, const at::Tensor& dir) {
  return cpu::Anchors{reinterpret_cast<const uint32_t*>(dis.data_ptr<int32_t>()),
                      reinterpret_cast<const uint32_t*>(adj.data_ptr<int32_t>()),
                      reinterpret_cast<const uint32_t*>(dir.data_ptr<int32_t>()),
                      adj.size(1) * adj.size(2), dir.size(1) * dir.size(2),
                      class_mask(adj.size(1)), nullptr, nullptr};
}

cpu::Params params(const at::Tensor& adj, const at::Tensor& dir, double w_dis, double w_adj,
                   double w_dir, const QuotientTable& table, double threshold, double upper,
                   std::optional<uint64_t> tie_seed = std::nullopt) {
  return cpu::Params{static_cast<int>(adj.size(2)), static_cast<int>(dir.size(2)), w_dis, w_adj,
                     w_dir, table.values.data(), table.stride,
                     // compared in float32, like a float32 score tensor with a Python float
                     static_cast<float>(threshold), static_cast<float>(upper),
                     tie_seed.has_value(), tie_seed.value_or(0)};
}

// The build of the hot loops this CPU can run: the POPCNT one where available.
struct HotLoops {
  decltype(&cpu::baseline::score_rows) score_rows;
  decltype(&cpu::baseline::mine_rows) mine_rows;
};

const HotLoops& hot_loops() {
#if defined(MEDTRIM_HAVE_POPCNT_BUILD)
  static const HotLoops loops = __builtin_cpu_supports("popcnt")
      ? HotLoops{&cpu::popcnt::score_rows, &cpu::popcnt::mine_rows}
      : HotLoops{&cpu::baseline::score_rows, &cpu::baseline::mine_rows};
#else
  static const HotLoops loops{&cpu::baseline::score_rows, &cpu::baseline::mine_rows};
#endif
  return loops;
}

// Rows per parallel task: enough pairs per task (~64k) to amortize scheduling.
int64_t row_grain(int64_t m) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(m, 1)); }

}  // namespace

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
