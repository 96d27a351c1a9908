// What the CPU kernels prepare before their hot loops (cpu/hot_loops.cpp): the quotient table,
// candidates grouped by disease mask, views of the anchors, the parameters and the hot-loop build
// for this CPU. Shared by the in-batch kernels (meta_entity_cpu.cpp) and the folded collection
// kernel (folded_cpu.cpp).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "cpu/hot_loops.h"
#include "meta_entity.h"

namespace medtrim {
namespace cpu_prep {

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

inline cpu::Anchors anchor_view(const at::Tensor& dis, const at::Tensor& adj, const at::Tensor& dir) {
  return cpu::Anchors{reinterpret_cast<const uint32_t*>(dis.data_ptr<int32_t>()),
                      reinterpret_cast<const uint32_t*>(adj.data_ptr<int32_t>()),
                      reinterpret_cast<const uint32_t*>(dir.data_ptr<int32_t>()),
                      adj.size(1) * adj.size(2), dir.size(1) * dir.size(2),
                      class_mask(adj.size(1)), nullptr, nullptr};
}

inline cpu::Params params(const at::Tensor& adj, const at::Tensor& dir, double w_dis, double w_adj,
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
  decltype(&cpu::baseline::score_group) score_group;
};

inline const HotLoops& hot_loops() {
#if defined(MEDTRIM_HAVE_POPCNT_BUILD)
  static const HotLoops loops = __builtin_cpu_supports("popcnt")
      ? HotLoops{&cpu::popcnt::score_rows, &cpu::popcnt::mine_rows, &cpu::popcnt::score_group}
      : HotLoops{&cpu::baseline::score_rows, &cpu::baseline::mine_rows,
                 &cpu::baseline::score_group};
#else
  static const HotLoops loops{&cpu::baseline::score_rows, &cpu::baseline::mine_rows,
                              &cpu::baseline::score_group};
#endif
  return loops;
}

// Rows per parallel task: enough pairs per task (~64k) to amortize scheduling.
inline int64_t row_grain(int64_t m) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(m, 1)); }

}  // namespace cpu_prep
}  // namespace medtrim
