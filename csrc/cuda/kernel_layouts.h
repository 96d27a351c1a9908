// Shared-memory layouts and index maps of the CUDA meta-entity kernels, in plain host/device C++ so
// that tests/test_kernel_layouts.py can check them on a machine without a GPU (it compiles
// tests/kernel_layouts_check.cpp against this header): region bounds and alignment, where each
// staged mask word lands, bank conflicts, and that every output element is written exactly once.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace medtrim {
namespace layout {

constexpr int kThreads = 128;     // threads (= anchors) per mining block
constexpr int kMineTile = 64;     // candidates per mining tile (<= kThreads: one per thread staged)
constexpr int kSmallCount = 32;   // quotients i / u with u <= 32 come from a table
constexpr int kTableStride = kSmallCount + 1;
constexpr int64_t kTableBytes = sizeof(double) * kTableStride * kTableStride;
constexpr int kCols = 32;         // score matrix: candidates per output tile (one 128 B row segment)
constexpr int kOutStride = kCols + 4;  // score tile row stride: 16-byte stores, no bank conflicts
constexpr int kScoreRows = 64;    // score matrix: anchors (threads) per block at most

// Per-sample strides of masks staged per lane: an odd number of words, so that 32 lanes reading
// word w of their own samples fall in 32 distinct banks (48 words would put them in 2).
MT_HD constexpr int odd_stride(int words) { return words % 2 == 0 ? words + 1 : words; }

// Word k of `count` consecutive samples of `stride` words (a coalesced copy) goes to this word of
// the padded shared array: sample k / stride, word k % stride.
MT_HD int64_t padded_slot(int64_t k, int stride, int pad) { return (k / stride) * pad + k % stride; }

// score_matrix_kernel: [s_out: rows x kOutStride floats][s_cdis: kCols][quotient table]
// [s_dst: rows row pointers][s_dis: rows][s_adj: rows x adj_pad][s_dir: rows x dir_pad]
// s_out and s_cdis first, at 16-byte offsets (float4 stores, uint4 loads).
struct ScoreLayout {
  int rows, adj_pad, dir_pad;
  MT_HD int64_t out() const { return 0; }
  MT_HD int64_t cdis() const { return out() + 4LL * rows * kOutStride; }
  MT_HD int64_t table() const { return cdis() + 4LL * kCols; }
  MT_HD int64_t dst() const { return table() + kTableBytes; }
  MT_HD int64_t dis() const { return dst() + 8LL * rows; }
  MT_HD int64_t adj() const { return dis() + 4LL * rows; }
  MT_HD int64_t dir() const { return adj() + 4LL * rows * adj_pad; }
  MT_HD int64_t bytes() const { return dir() + 4LL * rows * dir_pad; }
};
MT_HD ScoreLayout score_layout(int rows, int adj_stride, int dir_stride) {
  return ScoreLayout{rows, odd_stride(adj_stride), odd_stride(dir_stride)};
}

// mine_partial_kernel: [quotient table][s_ids: tile int64][s_index][s_tie][s_dis: tile each]
// then, when the block's anchors fit (`anchors` = kThreads, else 0: the fallback reads them from
// global memory): [s_adj: anchors x adj_pad][s_dir: anchors x dir_pad]. Candidates' descriptor
// masks are never staged: the candidate of a step is the same for the whole warp (broadcast loads).
struct MineLayout {
  int tile, anchors, adj_pad, dir_pad;
  MT_HD int64_t table() const { return 0; }
  MT_HD int64_t ids() const { return table() + kTableBytes; }
  MT_HD int64_t index() const { return ids() + 8LL * tile; }
  MT_HD int64_t tie() const { return index() + 4LL * tile; }
  MT_HD int64_t dis() const { return tie() + 4LL * tile; }
  MT_HD int64_t adj() const { return dis() + 4LL * tile; }
  MT_HD int64_t dir() const { return adj() + 4LL * anchors * adj_pad; }
  MT_HD int64_t bytes() const { return dir() + 4LL * anchors * dir_pad; }
};
MT_HD MineLayout mine_layout(bool anchors_shared, int adj_stride, int dir_stride) {
  return MineLayout{kMineTile, anchors_shared ? kThreads : 0, odd_stride(adj_stride),
                    odd_stride(dir_stride)};
}

// Anchors per score-matrix block: the largest power of two <= kScoreRows whose layout fits
// `limit` bytes of shared memory, or 0 when not even one fits.
MT_HD int score_rows(int adj_stride, int dir_stride, int64_t limit) {
  int rows = kScoreRows;
  while (rows > 0 && score_layout(rows, adj_stride, dir_stride).bytes() > limit) rows /= 2;
  return rows;
}

// Whether the mining kernel keeps its kThreads anchors' masks in shared memory within `limit`.
MT_HD bool mine_anchors_fit(int adj_stride, int dir_stride, int64_t limit) {
  return mine_layout(true, adj_stride, dir_stride).bytes() <= limit;
}

// Candidates per split of the grid's y dimension, so that even a small N fills `target_blocks`
// blocks: a multiple of `tile` (each split starts a tile), at most max_splits splits.
MT_HD int64_t split_length(int64_t anchor_blocks, int64_t m, int64_t target_blocks, int tile,
                           int64_t max_splits) {
  int64_t splits = (target_blocks + anchor_blocks - 1) / anchor_blocks;
  const int64_t tiles = (m + tile - 1) / tile;
  const int64_t cap = tiles < max_splits ? tiles : max_splits;
  splits = splits < 1 ? 1 : (splits > cap ? cap : splits);
  return ((m + splits - 1) / splits + tile - 1) / tile * tile;
}

}  // namespace layout
}  // namespace medtrim
