// The CPU hot loops over (anchor row, candidate group). Compiled as medtrim::cpu::baseline here and,
// on x86-64, again as medtrim::cpu::popcnt with -mpopcnt (hot_loops_popcnt.cpp).
#ifndef MEDTRIM_CPU_VARIANT
#define MEDTRIM_CPU_VARIANT baseline
#endif

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/hot_loops.h"
#include "meta_entity.h"

namespace medtrim::cpu::MEDTRIM_CPU_VARIANT {
namespace {

// Quotient: TableQuotient when the table covers every count of the layout, else
// CappedTableQuotient (meta_entity.h); both give the same bits.
template <class Quotient>
struct RowContext {
  const Anchors& a;
  const GroupedCandidates& c;
  const Params& p;
  Quotient q;
  ScoreWeights w;
};

// Calls emit_constant(g, s) for a group whose members all score s, and emit(k, s) per member
// otherwise (k: grouped position). Scores equal pair_score's bit for bit: same pieces, same order.
// WordsA / WordsR: mask words per class, compile-time for common vocabularies (loops unroll).
template <class Quotient, class WordsA, class WordsR, class EmitConstant, class Emit>
inline void score_row(const RowContext<Quotient>& ctx, int64_t i, WordsA wa, WordsR wr,
                      EmitConstant&& emit_constant, Emit&& emit) {
  const Anchors& A = ctx.a;
  const GroupedCandidates& C = ctx.c;
  const SampleView anchor{A.dis[i] & A.classes_mask, A.adj + i * A.adj_stride,
                          A.dir + i * A.dir_stride};
  for (int64_t g = 0; g < C.groups; ++g) {
    const uint32_t b_dis = C.mask[g];
    const uint32_t shared = anchor.dis & b_dis;
    if (anchor.dis == 0 || shared == 0) {
      emit_constant(g, anchor.dis == 0 ? empty_anchor_score(b_dis, ctx.w) : 0.0f);
      continue;
    }
    const double jaccard = ctx.q(popcount32(shared), popcount32(anchor.dis | b_dis));
    const double inv_count = ctx.q(1, popcount32(anchor.dis));
    for (int64_t k = C.start[g]; k < C.start[g + 1]; ++k) {
      const SampleView cand{b_dis, C.adj + k * C.adj_stride, C.dir + k * C.dir_stride};
      const double desc = descriptor_term(anchor, cand, shared, wa, wr, ctx.w, ctx.q);
      emit(k, combine_score(jaccard, desc, inv_count, ctx.w));
    }
  }
}

template <int N>
using Words = std::integral_constant<int, N>;

// Runs body(context, wa, wr) with compile-time word counts for the common layouts (up to 128
// adjectives and 32 directions per class, whose counts the table always covers), with run-time
// counts otherwise, and the lookup-only quotient wherever the table covers every count.
template <class Body>
void with_layout(const Anchors& a, const GroupedCandidates& c, const Params& p, Body&& body) {
  const ScoreWeights w{p.w_dis, p.w_adj, p.w_dir};
  const RowContext<TableQuotient> table{a, c, p, TableQuotient{p.quotients, p.quotient_stride}, w};
  static_assert(32 * 4 <= kMaxTableCount, "the compile-time layouts must fit the quotient table");
  if (p.wr == 1) {
    switch (p.wa) {
      case 1: return body(table, Words<1>{}, Words<1>{});
      case 2: return body(table, Words<2>{}, Words<1>{});
      case 3: return body(table, Words<3>{}, Words<1>{});
      case 4: return body(table, Words<4>{}, Words<1>{});
      default: break;
    }
  }
  const int64_t max_count = 32 * static_cast<int64_t>(std::max({1, p.wa, p.wr}));
  if (max_count < p.quotient_stride) return body(table, p.wa, p.wr);
  const RowContext<CappedTableQuotient> capped{
      a, c, p, CappedTableQuotient{p.quotients, p.quotient_stride}, w};
  body(capped, p.wa, p.wr);
}

template <class Quotient, class WordsA, class WordsR>
void score_rows_impl(const RowContext<Quotient>& ctx, int64_t begin, int64_t end, float* out,
                     WordsA wa, WordsR wr) {
  const GroupedCandidates& c = ctx.c;
  for (int64_t i = begin; i < end; ++i) {
    float* row = out + i * c.m;
    // Most groups score 0 against a given anchor (no shared disease): clear the row in one sweep
    // and write only the groups that score something.
    std::fill(row, row + c.m, 0.0f);
    score_row(
        ctx, i, wa, wr,
        [&](int64_t g, float s) {
          if (s == 0.0f) return;
          for (int64_t k = c.start[g]; k < c.start[g + 1]; ++k) row[c.order[k]] = s;
        },
        [&](int64_t k, float s) { row[c.order[k]] = s; });
  }
}

// The two best admissible members of a group whose members all score the same, by (tie key,
// index): for every ranking of the mining state they are the group's best two, and the state keeps
// only two per ranking, so they stand for the whole group.
struct GroupBest {
  int count = 0;
  uint32_t tie[2] = {0, 0};
  uint32_t index[2] = {0, 0};
};

inline GroupBest group_best_two(const GroupedCandidates& c, int64_t g, int64_t self, uint32_t anchor_key) {
  GroupBest best;
  if (c.tie == nullptr) {  // lowest-index ties: the first two admissible members
    for (int64_t k = c.start[g]; k < c.start[g + 1] && best.count < 2; ++k) {
      if (c.ids[k] == self) continue;
      best.index[best.count++] = static_cast<uint32_t>(c.order[k]);
    }
    return best;
  }
  // (tie key, index) packed in 64 bits: one comparison per member
  uint64_t k1 = ~uint64_t(0), k2 = ~uint64_t(0);
  for (int64_t k = c.start[g]; k < c.start[g + 1]; ++k) {
    if (c.ids[k] == self) continue;
    const uint64_t key = (static_cast<uint64_t>(tie_key(anchor_key, c.tie[k])) << 32) |
                         static_cast<uint32_t>(c.order[k]);
    if (key < k1) { k2 = k1; k1 = key; } else if (key < k2) { k2 = key; }
  }
  for (const uint64_t key : {k1, k2}) {
    if (key == ~uint64_t(0)) break;
    best.tie[best.count] = static_cast<uint32_t>(key >> 32);
    best.index[best.count++] = static_cast<uint32_t>(key);
  }
  return best;
}

template <class Quotient, class WordsA, class WordsR>
void mine_rows_impl(const RowContext<Quotient>& ctx, int64_t begin, int64_t end,
                    int64_t* positive, int64_t* negative, WordsA wa, WordsR wr) {
  const Anchors& a = ctx.a;
  const GroupedCandidates& c = ctx.c;
  const Params& p = ctx.p;
  // groups whose members all score the same, handled after the others (random ties): by then the
  // state usually shows that they cannot win, and their members' tie keys need not be computed
  std::vector<std::pair<int64_t, float>> constant_groups;
  if (p.random_ties) constant_groups.reserve(static_cast<size_t>(c.groups));
  for (int64_t i = begin; i < end; ++i) {
    const int64_t self = a.ids[i];
    const uint32_t anchor_key = p.random_ties ? sample_tie_hash(p.tie_seed, self) : 0u;
    const bool semi_hard = a.semi_hard[i];
    MineState state;
    auto push_group = [&](int64_t g, float s) {
      const GroupBest best = group_best_two(c, g, self, anchor_key);
      for (int t = 0; t < best.count; ++t) state.push(s, best.tie[t], best.index[t], p.threshold, p.upper);
    };
    constant_groups.clear();
    score_row(
        ctx, i, wa, wr,
        [&](int64_t g, float s) {
          if (p.random_ties) constant_groups.emplace_back(g, s);
          else push_group(g, s);
        },
        [&](int64_t k, float s) {
          if (c.ids[k] == self) return;
          const uint32_t tie = p.random_ties ? tie_key(anchor_key, c.tie[k]) : 0u;
          state.push(s, tie, static_cast<uint32_t>(c.order[k]), p.threshold, p.upper);
        });
    for (const auto& [g, s] : constant_groups) {
      if (state.could_take(s, semi_hard, p.threshold, p.upper)) push_group(g, s);
    }
    positive[i] = state.positive_index();
    negative[i] = state.negative_index(semi_hard);
  }
}

}  // namespace

void score_rows(const Anchors& a, const GroupedCandidates& c, const Params& p, int64_t begin,
                int64_t end, float* out) {
  with_layout(a, c, p, [&](const auto& ctx, auto wa, auto wr) {
    score_rows_impl(ctx, begin, end, out, wa, wr);
  });
}

void score_group(const Anchors& a, const GroupedCandidates& c, const Params& p, int64_t i, int64_t g,
                 float* member_score) {
  with_layout(a, c, p, [&](const auto& ctx, auto wa, auto wr) {
    const SampleView anchor{a.dis[i] & a.classes_mask, a.adj + i * a.adj_stride, a.dir + i * a.dir_stride};
    const uint32_t b_dis = c.mask[g];
    const uint32_t shared = anchor.dis & b_dis;
    // the pieces of score_row, in its order: bit-identical scores
    const double jaccard = ctx.q(popcount32(shared), popcount32(anchor.dis | b_dis));
    const double inv_count = ctx.q(1, popcount32(anchor.dis));
    for (int64_t k = c.start[g]; k < c.start[g + 1]; ++k) {
      const SampleView cand{b_dis, c.adj + k * c.adj_stride, c.dir + k * c.dir_stride};
      member_score[k - c.start[g]] = combine_score(jaccard, descriptor_term(anchor, cand, shared, wa, wr, ctx.w, ctx.q),
                                                   inv_count, ctx.w);
    }
  });
}

void mine_rows(const Anchors& a, const GroupedCandidates& c, const Params& p, int64_t begin,
               int64_t end, int64_t* positive, int64_t* negative) {
  with_layout(a, c, p, [&](const auto& ctx, auto wa, auto wr) {
    mine_rows_impl(ctx, begin, end, positive, negative, wa, wr);
  });
}

}  // namespace medtrim::cpu::MEDTRIM_CPU_VARIANT
