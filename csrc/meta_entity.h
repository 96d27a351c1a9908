// Meta-entity pair score and per-anchor triplet selection, shared by the CPU and CUDA kernels.
//
// A sample is encoded as bitsets: a disease mask (bit d = disease class d present, at most 32
// classes) and, per disease class, an adjective mask of `wa` 32-bit words and a direction mask of
// `wr` words. A pair score is then a few AND/OR/popcount operations per shared disease.
//
// Every floating-point step is an explicit, correctly rounded float64 operation in a fixed order (no
// FMA contraction), rounded to float32 once, so the CPU kernel, the CUDA kernel and the pure-PyTorch
// reference produce bit-identical scores, and therefore identical ties and identical mined indices.
#pragma once

#include <cstdint>

#include "host_device.h"

// The CPU hot loops are compiled twice, once for baseline x86-64 and once with POPCNT (see
// csrc/cpu/hot_loops_popcnt.cpp). Each build sees these inline helpers in its own namespace, so the
// linker can never hand the baseline build a helper compiled with instructions it may not have.
#ifndef MEDTRIM_KERNEL_NS
#define MEDTRIM_KERNEL_NS portable
#endif

namespace medtrim {
inline namespace MEDTRIM_KERNEL_NS {

MT_HD int popcount32(uint32_t x) {
#if defined(__CUDA_ARCH__)
  return __popc(x);
#else
  return __builtin_popcount(x);
#endif
}

MT_HD int lowest_bit(uint32_t x) {  // x != 0
#if defined(__CUDA_ARCH__)
  return __ffs(static_cast<int>(x)) - 1;
#else
  return __builtin_ctz(x);
#endif
}

MT_HD double d_add(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
MT_HD double d_mul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
MT_HD double d_div(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}

struct ScoreWeights {  // kept in double: the user's Python floats, unrounded
  double w_dis;
  double w_adj;
  double w_dir;
};

// i / u for the small integer counts of a pair score. Interchangeable ways, bit-identical
// because all give the correctly rounded double quotient (a table entry is that same division).
// All return 1 for 0 / 0, which is the published IoU of two empty sets.
struct DivideQuotient {  // divide on the spot (CUDA: cheap enough, and no table to cache)
  MT_HD double operator()(int i, int u) const {
    return u == 0 ? 1.0 : d_div(static_cast<double>(i), static_cast<double>(u));
  }
};
// Look up a table of every i / u with i <= u <= max_count (CPU, branchless). Only for layouts
// whose counts never exceed max_count; see CappedTableQuotient for the others.
struct TableQuotient {
  const double* table;  // [(max_count + 1) * (max_count + 1)], entry u * (max_count + 1) + i
  int64_t stride;       // max_count + 1
  MT_HD double operator()(int i, int u) const { return table[static_cast<int64_t>(u) * stride + i]; }
};
// The same table for u <= max_count and a division above it: wide vocabularies (thousands of
// adjectives per class) keep a table of bounded size instead of one quadratic in the mask width.
struct CappedTableQuotient {
  const double* table;
  int64_t stride;  // max_count + 1
  MT_HD double operator()(int i, int u) const {
    return u < stride ? table[static_cast<int64_t>(u) * stride + i]
                      : d_div(static_cast<double>(i), static_cast<double>(u));
  }
};

// Intersection over union of two bitsets; 1 when both are empty (the published rule).
// `words` may be a compile-time constant (std::integral_constant) so the loop unrolls.
template <class Words, class Quotient>
MT_HD double set_iou(const uint32_t* a, const uint32_t* b, Words words, const Quotient& q) {
  int inter = 0, uni = 0;
  for (int w = 0; w < static_cast<int>(words); ++w) {
    inter += popcount32(a[w] & b[w]);
    uni += popcount32(a[w] | b[w]);
  }
  return q(inter, uni);
}

// One sample's view: its disease mask and pointers to its (classes x words) adjective and direction
// masks. `dis` must already be restricted to the valid classes.
struct SampleView {
  uint32_t dis;
  const uint32_t* adj;  // [classes][wa]
  const uint32_t* dir;  // [classes][wr]
};

// S(a, b) = w_dis * J(L_a, L_b)
//         + (w_adj * sum_{d in a&b} IoU(adj) + w_dir * sum_{d in a&b} IoU(dir)) * (1 / |a|)
// J is the Jaccard index of the multi-hot labels with the implied "no finding" class, so two empty
// records have J = 1, one empty record J = 0, and the descriptor sums vanish when a is empty.
//
// Computed in double and rounded to float32 once at the end: scores that are equal in exact
// arithmetic (0.125 + 0.05 and 0.0833.. + 0.0916..) then round to the same float32, so genuine ties
// stay ties, as with the published double-precision code, and the tie rule below decides them.
// The pieces below are also used on their own by the CPU kernel, which handles whole groups of
// candidates with one disease mask at a time; pair_score is their composition.

// Score of an anchor with no finding: w_dis against another no-finding sample, else 0.
MT_HD float empty_anchor_score(uint32_t b_dis, ScoreWeights w) {
  return b_dis == 0 ? static_cast<float>(w.w_dis) : 0.0f;
}

// w_adj * sum IoU(adj) + w_dir * sum IoU(dir) over the shared diseases, in ascending order.
template <class WordsA, class WordsR, class Quotient>
MT_HD double descriptor_term(const SampleView& a, const SampleView& b, uint32_t shared, WordsA wa,
                             WordsR wr, ScoreWeights w, const Quotient& q) {
  double adj_sum = 0.0, dir_sum = 0.0;
  for (uint32_t rest = shared; rest != 0; rest &= rest - 1) {
    const int d = lowest_bit(rest);
    adj_sum = d_add(adj_sum, set_iou(a.adj + d * static_cast<int>(wa), b.adj + d * static_cast<int>(wa), wa, q));
    dir_sum = d_add(dir_sum, set_iou(a.dir + d * static_cast<int>(wr), b.dir + d * static_cast<int>(wr), wr, q));
  }
  return d_add(d_mul(w.w_adj, adj_sum), d_mul(w.w_dir, dir_sum));
}

// jaccard = |a & b| / |a | b| and inv_count = 1 / |a| (via the quotient, so a lookup on the CPU).
MT_HD float combine_score(double jaccard, double descriptors, double inv_count, ScoreWeights w) {
  return static_cast<float>(d_add(d_mul(w.w_dis, jaccard), d_mul(descriptors, inv_count)));
}

template <class Quotient>
MT_HD float pair_score(const SampleView& a, const SampleView& b, int wa, int wr, ScoreWeights w,
                       const Quotient& q) {
  if (a.dis == 0) return empty_anchor_score(b.dis, w);
  const uint32_t shared = a.dis & b.dis;
  if (shared == 0) return 0.0f;
  return combine_score(q(popcount32(shared), popcount32(a.dis | b.dis)),
                       descriptor_term(a, b, shared, wa, wr, w, q), q(1, popcount32(a.dis)), w);
}

// ---- tie keys: which of several exactly equal scores wins ---------------------------------------
//
// With random ties every sample id gets a 32-bit hash of (seed, id), which places the samples on a
// random circle; the tie key of (anchor, candidate) is the distance from the anchor's place to the
// candidate's, clockwise. Among equal float32 scores the smallest tie key wins (then the lowest
// candidate index): each anchor takes the next tied candidate after itself on the circle. So
// - for one anchor, across seeds, every tied candidate is equally likely (a uniform random circle);
// - anchors that tie with each other (a batch of identical normal reports) take different samples:
//   "next on the circle" is a permutation, where a rule like "smallest hash wins" would send them
//   all to the same one;
// - the key is a counter-based hash of (seed, anchor id, candidate id) and nothing else (no stream
//   position, no order of visit), so every backend, thread count and tiling picks the same
//   candidate, and a permuted batch (ids permuted with it) picks the same samples.
// With lowest-index ties every tie key is 0.

// lowbias32 (C. Wellons): a bijective 32-bit mixer with near-ideal avalanche. The multiplications
// are mod 2^32, which the pure-PyTorch reference reproduces with int64 arithmetic.
MT_HD uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// The place of a sample (by id) on the circle of a seed.
MT_HD uint32_t sample_tie_hash(uint64_t seed, int64_t id) {
  const uint64_t v = static_cast<uint64_t>(id);
  const uint32_t h = mix32(mix32(static_cast<uint32_t>(v) ^ 0x9e3779b9U) ^ static_cast<uint32_t>(v >> 32));
  return mix32(mix32(h ^ static_cast<uint32_t>(seed)) ^ static_cast<uint32_t>(seed >> 32));
}
// Clockwise distance from the anchor's place to the candidate's, minus one (mod 2^32): a candidate
// at the anchor's own place (an equal hash) comes last, not first.
MT_HD uint32_t tie_key(uint32_t anchor_hash, uint32_t candidate_hash) {
  return candidate_hash - anchor_hash - 1u;
}

// ---- streaming selection of (positive, negative) for one anchor -------------------------------
//
// Candidates are ranked by keys that combine the score, the tie key and the candidate index, so
// one comparison orders by score, then by tie key, then by index. Scores are finite and >= 0
// (weights are validated), so their IEEE bits order like the values.
struct Key {
  uint64_t hi;  // score bits << 32 | (tie key, or its complement for "larger is better")
  uint32_t lo;  // candidate index (or its complement)
};
MT_HD bool operator>(const Key& x, const Key& y) {
#if defined(__CUDA_ARCH__)
  // The same value without short-circuits: nvcc then emits predicate ops instead of branches
  // that materialize each bool (sm_90: the mining kernel 10% shorter). On the CPU that form is
  // slower (mining 14% at N = 4096), so the host keeps the short-circuit one.
  return (x.hi > y.hi) | ((x.hi == y.hi) & (x.lo > y.lo));
#else
  return x.hi > y.hi || (x.hi == y.hi && x.lo > y.lo);
#endif
}
MT_HD bool operator<(const Key& x, const Key& y) { return y > x; }
MT_HD bool operator==(const Key& x, const Key& y) { return x.hi == y.hi && x.lo == y.lo; }
MT_HD bool operator!=(const Key& x, const Key& y) { return !(x == y); }

// "none" where larger / smaller is better (functions: constexpr objects are not visible in device code)
MT_HD constexpr Key no_max() { return Key{0, 0}; }
MT_HD constexpr Key no_min() { return Key{~uint64_t(0), ~uint32_t(0)}; }

MT_HD uint32_t float_bits(float s) {
  union { float f; uint32_t u; } v;
  v.f = s + 0.0f;  // turns -0 into +0
  return v.u;
}
MT_HD Key max_key(float s, uint32_t tie, uint32_t j) {  // larger score, then smaller tie, then lower index
  return Key{(static_cast<uint64_t>(float_bits(s)) << 32) | static_cast<uint32_t>(~tie),
             static_cast<uint32_t>(~j)};
}
MT_HD Key min_key(float s, uint32_t tie, uint32_t j) {  // smaller score, then smaller tie, then lower index
  return Key{(static_cast<uint64_t>(float_bits(s)) << 32) | tie, j};
}
MT_HD int64_t max_key_index(const Key& k) { return static_cast<int64_t>(static_cast<uint32_t>(~k.lo)); }
MT_HD int64_t min_key_index(const Key& k) { return static_cast<int64_t>(k.lo); }

// The two best keys seen so far. Keys are unique (they contain the index), so the runner-up is the
// answer when the best one turns out to be the positive, which the negative must not repeat.
struct TopTwoMax {
  Key k1 = no_max(), k2 = no_max();
  MT_HD void push(const Key& k) {
    if (k > k1) { k2 = k1; k1 = k; } else if (k > k2) { k2 = k; }
  }
  MT_HD void merge(const TopTwoMax& o) { push(o.k1); push(o.k2); }
  // whether a key can still enter the top two
  MT_HD bool takes(const Key& k) const { return k > k2; }
  // best index other than `exclude`, or -1
  MT_HD int64_t best_except(int64_t exclude) const {
    if (k1 != no_max() && max_key_index(k1) != exclude) return max_key_index(k1);
    if (k2 != no_max() && max_key_index(k2) != exclude) return max_key_index(k2);
    return -1;
  }
};
struct TopTwoMin {
  Key k1 = no_min(), k2 = no_min();
  MT_HD void push(const Key& k) {
    if (k < k1) { k2 = k1; k1 = k; } else if (k < k2) { k2 = k; }
  }
  MT_HD void merge(const TopTwoMin& o) { push(o.k1); push(o.k2); }
  MT_HD bool takes(const Key& k) const { return k < k2; }
  MT_HD int64_t best_except(int64_t exclude) const {
    if (k1 != no_min() && min_key_index(k1) != exclude) return min_key_index(k1);
    if (k2 != no_min() && min_key_index(k2) != exclude) return min_key_index(k2);
    return -1;
  }
};

// Everything one pass over the candidates must remember for one anchor. Mining rules:
//   positive  = highest score
//   kept      = candidates other than the positive with score < upper
//   semi-hard = lowest score >= threshold among kept, else the highest among kept
//   hard      = lowest score among kept
// Equal scores go to the smaller tie key, then to the lower index (see the tie keys above).
struct MineState {
  Key positive = no_max();      // max key over all candidates
  TopTwoMax below_upper_max;  // fallback of the semi-hard rule
  TopTwoMin below_upper_min;  // hard rule
  TopTwoMin semi_hard_min;    // threshold <= score < upper

  MT_HD void push(float s, uint32_t tie, uint32_t j, float threshold, float upper) {
    const Key kmax = max_key(s, tie, j);
    if (kmax > positive) positive = kmax;
    if (s < upper) {
      below_upper_max.push(kmax);
      const Key kmin = min_key(s, tie, j);
      below_upper_min.push(kmin);
      if (s >= threshold) semi_hard_min.push(kmin);
    }
  }
  // Whether any candidate with score s could still change the result of an anchor that uses the
  // semi-hard rule (or the hard rule): false means a whole group of such candidates can be skipped.
  MT_HD bool could_take(float s, bool semi_hard, float threshold, float upper) const {
    const Key best_max = max_key(s, 0u, 0u), best_min = min_key(s, 0u, 0u);
    if (best_max > positive) return true;
    if (!(s < upper)) return false;
    if (semi_hard) return below_upper_max.takes(best_max) || (s >= threshold && semi_hard_min.takes(best_min));
    return below_upper_min.takes(best_min);
  }
  MT_HD void merge(const MineState& o) {
    if (o.positive > positive) positive = o.positive;
    below_upper_max.merge(o.below_upper_max);
    below_upper_min.merge(o.below_upper_min);
    semi_hard_min.merge(o.semi_hard_min);
  }
  MT_HD int64_t positive_index() const {
    return positive == no_max() ? -1 : max_key_index(positive);
  }
  MT_HD int64_t negative_index(bool semi_hard) const {
    const int64_t pos = positive_index();
    if (pos < 0) return -1;
    if (semi_hard) {
      const int64_t n = semi_hard_min.best_except(pos);
      return n >= 0 ? n : below_upper_max.best_except(pos);
    }
    return below_upper_min.best_except(pos);
  }
};

}  // namespace MEDTRIM_KERNEL_NS
}  // namespace medtrim
