// Raw-pointer inner loops of the CPU kernels (no ATen here: this file's .cpp is compiled twice, see
// hot_loops_popcnt.cpp). meta_entity_cpu.cpp prepares the inputs and picks a build at run time.
#pragma once

#include <cstdint>

namespace medtrim::cpu {

// Largest denominator of the quotient table (the table holds every i / u with u <= this, 133 KB);
// covers the compile-time layouts of the hot loops (up to 4 adjective words per class).
constexpr int64_t kMaxTableCount = 128;

// The anchors, as the kernels read them.
struct Anchors {
  const uint32_t* dis;
  const uint32_t* adj;  // [n][classes * wa]
  const uint32_t* dir;  // [n][classes * wr]
  int64_t adj_stride, dir_stride;
  uint32_t classes_mask;
  const int64_t* ids;      // mining only
  const bool* semi_hard;   // mining only
};

// Candidates grouped by disease mask: within a group, whether a pair shares a disease, its Jaccard
// index and the diseases to walk are the same for every member, so branches stay predictable and
// groups whose members all score the same are handled in one go. Members keep ascending index
// order; their masks and ids are stored in group order so the hot loops read memory sequentially.
struct GroupedCandidates {
  int64_t m;               // candidates
  int64_t groups;
  const int64_t* order;    // [m] candidate index at each grouped position
  const int64_t* start;    // [groups + 1] group g is positions start[g] .. start[g + 1]
  const uint32_t* mask;    // [groups] disease mask of each group
  const uint32_t* adj;     // [m][adj_stride], grouped positions
  const uint32_t* dir;     // [m][dir_stride]
  const int64_t* ids;      // [m] candidate ids, grouped positions (mining only)
  const uint32_t* tie;     // [m] candidate tie hashes, grouped positions (random ties only, else null)
  int64_t adj_stride, dir_stride;
};

// score_group: the scores of anchor row i against each member of group g, in grouped order
// (member_score[k - start[g]]), for a group that shares a disease with the anchor (the others
// score one value, see score_row). The folded kernel (folded_cpu.cpp) scores only the groups whose
// score range can reach a mining level.
struct Params {
  int wa, wr;                  // 32-bit words per class of the adjective / direction masks
  double w_dis, w_adj, w_dir;
  const double* quotients;     // i / u table (QuotientTable in meta_entity_cpu.cpp)
  int64_t quotient_stride;     // its largest denominator + 1
  float threshold, upper;      // mining only
  bool random_ties;            // mining only: tie keys from tie_seed (else lowest index wins)
  uint64_t tie_seed;
};

#define MEDTRIM_DECLARE_HOT_LOOPS(variant)                                                      \
  namespace variant {                                                                         \
  void score_rows(const Anchors& a, const GroupedCandidates& c, const Params& p, int64_t begin, \
                  int64_t end, float* out);                                                   \
  void mine_rows(const Anchors& a, const GroupedCandidates& c, const Params& p, int64_t begin,  \
                 int64_t end, int64_t* positive, int64_t* negative);                          \
  void score_group(const Anchors& a, const GroupedCandidates& c, const Params& p, int64_t i,     \
                   int64_t g, float* member_score);                                            \
  }

MEDTRIM_DECLARE_HOT_LOOPS(baseline)
#if defined(MEDTRIM_HAVE_POPCNT_BUILD)
MEDTRIM_DECLARE_HOT_LOOPS(popcnt)
#endif
#undef MEDTRIM_DECLARE_HOT_LOOPS

}  // namespace medtrim::cpu
