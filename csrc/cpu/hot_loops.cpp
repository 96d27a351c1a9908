// The CPU hot loops over (anchor row, candidate group). Compiled as medtrim::cpu::baseline here and,
// on x86-64, again as medtrim::cpu::popcnt with -mpopcnt (hot_loops_popcnt.cpp).
#ifndef MEDTRIM_CPU_VARIANT
#define MEDTRIM_CPU_VARIANT baseline
#endif

#include <algorithm>
#include <type_traits>

#include "cpu/hot_loops.h"
#include "meta_entity.h"

namespace medtrim::cpu::MEDTRIM_CPU_VARIANT {
namespace {

struct RowContext {
  const Anchors& a;
  const GroupedCandidates& c;
  const Params& p;
  TableQuotient q;
  ScoreWeights w;
};

// Calls emit_constant(g, s) for a group whose members all score s, and emit(k, s) per member
// otherwise (k: grouped position). Scores equal pair_score's bit for bit: same pieces, same order.
// WordsA / WordsR: mask words per class, compile-time for common vocabularies (loops unroll).
template <class WordsA, class WordsR, class EmitConstant, class Emit>
inline void score_row(const RowContext& ctx, int64_t i, WordsA wa, WordsR wr,
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

RowContext make_context(const Anchors& a, const GroupedCandidates& c, const Params& p) {
  return RowContext{a, c, p, TableQuotient{p.quotients, p.quotient_stride},
                    ScoreWeights{p.w_dis, p.w_adj, p.w_dir}};
}

template <int N>
using Words = std::integral_constant<int, N>;

// Runs body(wa, wr) with compile-time word counts for the common layouts (up to 128 adjectives and
// 32 directions per class), with run-time counts otherwise.
template <class Body>
void with_word_counts(int wa, int wr, Body&& body) {
  if (wr == 1) {
    switch (wa) {
      case 1: return body(Words<1>{}, Words<1>{});
      case 2: return body(Words<2>{}, Words<1>{});
      case 3: return body(Words<3>{}, Words<1>{});
      case 4: return body(Words<4>{}, Words<1>{});
      default: break;
    }
  }
  body(wa, wr);
}

template <class WordsA, class WordsR>
void score_rows_impl(const RowContext& ctx, int64_t begin, int64_t end, float* out, WordsA wa,
                     WordsR wr) {
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

template <class WordsA, class WordsR>
void mine_rows_impl(const RowContext& ctx, int64_t begin, int64_t end, int64_t* positive,
                    int64_t* negative, WordsA wa, WordsR wr) {
  const Anchors& a = ctx.a;
  const GroupedCandidates& c = ctx.c;
  const Params& p = ctx.p;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t self = a.ids[i];
    MineState state;
    score_row(
        ctx, i, wa, wr,
        [&](int64_t g, float s) {
          // Equal scores: in every ranking the best members are the lowest indices, and the state
          // keeps only the best two, so the first two admissible members stand for the group.
          int taken = 0;
          for (int64_t k = c.start[g]; k < c.start[g + 1] && taken < 2; ++k) {
            if (c.ids[k] == self) continue;
            state.push(s, static_cast<uint32_t>(c.order[k]), p.threshold, p.upper);
            ++taken;
          }
        },
        [&](int64_t k, float s) {
          if (c.ids[k] != self) state.push(s, static_cast<uint32_t>(c.order[k]), p.threshold, p.upper);
        });
    positive[i] = state.positive_index();
    negative[i] = state.negative_index(a.semi_hard[i]);
  }
}

}  // namespace

void score_rows(const Anchors& a, const GroupedCandidates& c, const Params& p, int64_t begin,
                int64_t end, float* out) {
  const RowContext ctx = make_context(a, c, p);
  with_word_counts(p.wa, p.wr, [&](auto wa, auto wr) { score_rows_impl(ctx, begin, end, out, wa, wr); });
}

void mine_rows(const Anchors& a, const GroupedCandidates& c, const Params& p, int64_t begin,
               int64_t end, int64_t* positive, int64_t* negative) {
  const RowContext ctx = make_context(a, c, p);
  with_word_counts(p.wa, p.wr, [&](auto wa, auto wr) {
    mine_rows_impl(ctx, begin, end, positive, negative, wa, wr);
  });
}

}  // namespace medtrim::cpu::MEDTRIM_CPU_VARIANT
