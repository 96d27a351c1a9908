// Host emulation of the CUDA meta-entity kernels' indexing (csrc/cuda/kernel_layouts.h and the
// loops of csrc/cuda/meta_entity_cuda.cu), for machines without a GPU: shared-memory bounds and
// alignment, where staged words land, bank conflicts, and that every output element / every
// (anchor, candidate) pair is visited exactly once. Built and run by tests/test_kernel_layouts.py;
// prints "ok" or the first failure and exits non-zero.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <vector>

#include "cuda/kernel_layouts.h"

using namespace medtrim::layout;

#define CHECK(cond, ...)                                      \
  do {                                                        \
    if (!(cond)) {                                            \
      std::printf("FAILED %s (line %d): ", #cond, __LINE__);  \
      std::printf(__VA_ARGS__);                               \
      std::printf("\n");                                      \
      std::exit(1);                                           \
    }                                                         \
  } while (0)

// 48 KiB minus the kernels' static shared memory as `cuobjdump -res-usage` reports it for sm_90
// (nvcc 13 counts a 1 KB per-block reserve there): the limits dynamic_shared_limit computes
constexpr int64_t kLimit = 48 * 1024;
constexpr int64_t kMineLimit = kLimit - (16 + 1024);  // + s_run_ends
constexpr int64_t kScoreLimit = kLimit - 1024;

// regions [offset, offset + size) in order, inside bytes, each aligned
void check_regions(const std::vector<std::pair<int64_t, int64_t>>& regions,
                   const std::vector<int>& align, int64_t bytes, const char* what) {
  int64_t end = 0;
  for (size_t k = 0; k < regions.size(); ++k) {
    CHECK(regions[k].first >= end, "%s region %zu overlaps", what, k);
    CHECK(regions[k].first % align[k] == 0, "%s region %zu misaligned", what, k);
    end = regions[k].first + regions[k].second;
  }
  CHECK(end <= bytes, "%s regions end past bytes()", what);
}

// stage_padded: word k of `count` samples lands at a unique slot inside [0, rows * pad), exactly
// where lane k / stride reads its word k % stride.
void check_staging(int count, int rows, int stride, int pad) {
  std::vector<int> hits(static_cast<size_t>(rows) * pad, 0);
  for (int64_t k = 0; k < static_cast<int64_t>(count) * stride; ++k) {
    const int64_t slot = padded_slot(k, stride, pad);
    CHECK(slot >= 0 && slot < static_cast<int64_t>(rows) * pad, "slot out of bounds");
    CHECK(slot == (k / stride) * pad + k % stride, "slot is not the reader's word");
    CHECK(++hits[slot] == 1, "slot written twice");
  }
}

void check_score(int classes, int wa, int wr) {
  const int adj = classes * wa, dir = classes * wr;
  const int rows = score_rows(adj, dir, kScoreLimit);
  if (rows == 0) return;  // refused on the host with a clear error
  CHECK((rows & (rows - 1)) == 0 && rows <= kScoreRows, "rows %d", rows);
  const ScoreLayout L = score_layout(rows, adj, dir);
  CHECK(L.bytes() <= kScoreLimit, "score layout too large");
  CHECK(L.adj_pad % 2 == 1 && L.dir_pad % 2 == 1 && L.adj_pad >= adj && L.dir_pad >= dir, "pads");
  check_regions({{L.out(), 4LL * rows * kOutStride}, {L.cdis(), 4 * kCols}, {L.table(), kTableBytes},
                 {L.dst(), 8LL * rows}, {L.dis(), 4LL * rows}, {L.adj(), 4LL * rows * L.adj_pad},
                 {L.dir(), 4LL * rows * L.dir_pad}},
                {16, 16, 8, 8, 4, 4, 4}, L.bytes(), "score");
  for (int count : {rows, rows / 2 + 1, 1}) {
    check_staging(count, rows, adj, L.adj_pad);
    check_staging(count, rows, dir, L.dir_pad);
  }
  // float4 stores of row r at column c (c % 4 == 0): a quarter warp (8 lanes) per phase, distinct banks
  for (int c = 0; c < kCols; c += 4)
    for (int q0 = 0; q0 < std::min(rows, 32); q0 += 8) {
      std::set<int> banks;
      for (int r = q0; r < q0 + 8 && r < rows; ++r)
        for (int x = 0; x < 4; ++x) CHECK(banks.insert((r * kOutStride + c + x) % 32).second, "bank conflict");
    }
  // lanes reading word x of their own anchor: distinct banks
  for (int x = 0; x < adj; x += 7) {
    std::set<int> banks;
    for (int r = 0; r < std::min(rows, 32); ++r) CHECK(banks.insert((r * L.adj_pad + x) % 32).second, "anchor bank conflict");
  }
}

// The score kernel's loops over a grid: every output element written once, from the right s_out
// cell; candidate masks read only for columns < B.n (columns past the end have mask 0).
void emulate_score_grid(int64_t n, int64_t m, int rows, int64_t sms) {
  const int64_t anchor_blocks = (n + rows - 1) / rows;
  const int64_t col_split = split_length(anchor_blocks, m, 16 * sms, kCols, 65535);
  CHECK(col_split % kCols == 0 && col_split > 0, "col_split");
  const int64_t splits = (m + col_split - 1) / col_split;
  std::vector<int> written(static_cast<size_t>(n * m), 0);
  const int warps = (rows + 31) / 32, width = std::min(32, rows);
  for (int64_t bx = 0; bx < anchor_blocks; ++bx)
    for (int64_t by = 0; by < splits; ++by) {
      const int64_t row0 = bx * rows;
      const int count = static_cast<int>(std::min<int64_t>(rows, n - row0));
      const int64_t begin = by * col_split, end = std::min(m, begin + col_split);
      CHECK(begin < end, "empty split");
      for (int64_t c0 = begin; c0 < end; c0 += kCols) {
        const int cols = static_cast<int>(std::min<int64_t>(kCols, end - c0));
        std::vector<int> cell_col(static_cast<size_t>(rows) * kOutStride, -1);  // s_out cell -> column it holds
        for (int r = 0; r < count; ++r)
          for (int c = 0; c < kCols; c += 4)
            for (int k = 0; k < 4; ++k) {
              const int64_t j = c0 + c + k;
              const bool has_mask = c + k < cols;  // s_cdis: 0 past the end, so no descriptor read
              if (has_mask) CHECK(j < end && j < m, "candidate read past the split");
              cell_col[r * kOutStride + c + k] = c + k;
            }
        for (int lane = 0; lane < width; ++lane)
          for (int warp = 0; warp < warps; ++warp) {
            if (warp * 32 + lane >= rows) continue;
            auto write = [&](int rr, int c) {
              CHECK(cell_col[rr * kOutStride + c] == c, "s_out cell not this column");
              ++written[static_cast<size_t>((row0 + rr) * m + c0 + c)];
            };
            if (lane < cols)
              for (int rr = warp; rr < count; rr += warps) write(rr, lane);
            if (width < 32)
              for (int rr = warp; rr < count; rr += warps)
                for (int c = lane + width; c < cols; c += width) write(rr, c);
          }
      }
    }
  for (size_t e = 0; e < written.size(); ++e) CHECK(written[e] == 1, "element %zu written %d times (n=%lld m=%lld rows=%d)", e, written[e], (long long)n, (long long)m, rows);
}

void check_mine(int classes, int wa, int wr) {
  const int adj = classes * wa, dir = classes * wr;
  const bool fits = mine_anchors_fit(adj, dir, kMineLimit);
  const MineLayout L = mine_layout(fits, adj, dir);
  CHECK(L.tile <= kThreads && L.tile % 32 == 0, "tile");
  CHECK(L.bytes() <= kMineLimit, "mine layout too large (fits=%d)", fits);
  CHECK(fits == (mine_layout(true, adj, dir).bytes() <= kMineLimit), "fit rule");
  check_regions({{L.table(), kTableBytes}, {L.ids(), 8 * L.tile}, {L.index(), 4 * L.tile}, {L.tie(), 4 * L.tile},
                 {L.dis(), 4 * L.tile}, {L.adj(), 4LL * L.anchors * L.adj_pad}, {L.dir(), 4LL * L.anchors * L.dir_pad}},
                {8, 8, 4, 4, 4, 4, 4}, L.bytes(), "mine");
  if (fits) {
    for (int count : {kThreads, 77, 1}) {
      check_staging(count, kThreads, adj, L.adj_pad);
      check_staging(count, kThreads, dir, L.dir_pad);
    }
  }
}

// Mining splits: every candidate of every anchor block in exactly one split and one tile position.
void emulate_mine_splits(int64_t n, int64_t m, int64_t sms) {
  const int64_t anchor_blocks = (n + kThreads - 1) / kThreads;
  const int64_t split_len = split_length(anchor_blocks, m, 8 * sms, kMineTile, 64);
  CHECK(split_len % kMineTile == 0, "split_len");
  const int64_t splits = (m + split_len - 1) / split_len;
  CHECK(splits <= 64, "splits");
  std::vector<int> seen(static_cast<size_t>(m), 0);
  for (int64_t by = 0; by < splits; ++by) {
    const int64_t begin = by * split_len, end = std::min(m, begin + split_len);
    CHECK(begin < end, "empty split");
    for (int64_t t0 = begin; t0 < end; t0 += kMineTile) {
      const int count = static_cast<int>(std::min<int64_t>(kMineTile, end - t0));
      for (int t = 0; t < count; ++t) ++seen[static_cast<size_t>(t0 + t)];
    }
  }
  for (int64_t j = 0; j < m; ++j) CHECK(seen[static_cast<size_t>(j)] == 1, "candidate %lld seen %d times", (long long)j, seen[static_cast<size_t>(j)]);
}

int main() {
  int fallback = 0, shared = 0, small_rows = 0;
  for (int classes = 1; classes <= 32; ++classes)
    for (int wa = 1; wa <= 20; ++wa)
      for (int wr = 1; wr <= 6; ++wr) {
        check_score(classes, wa, wr);
        check_mine(classes, wa, wr);
        const bool fits = mine_anchors_fit(classes * wa, classes * wr, kMineLimit);
        (fits ? shared : fallback)++;
        small_rows += score_rows(classes * wa, classes * wr, kScoreLimit) < 32;
      }
  CHECK(mine_anchors_fit(12 * 4, 12 * 1, kMineLimit), "the default vocabulary must keep its anchors in shared memory");
  CHECK(mine_layout(true, 12 * 4, 12 * 1).bytes() == 41736 && score_rows(12 * 4, 12 * 1, kScoreLimit) == 64 &&
        score_layout(64, 12 * 4, 12 * 1).bytes() == 34696, "the default vocabulary's sizes in PERFORMANCE.md");
  CHECK(!mine_anchors_fit(32 * 16, 32 * 4, kMineLimit), "the large-vocabulary test case must take the fallback");
  // tests/test_cuda.py WORD_COUNT_LAYOUTS: which cases take which mining path
  CHECK(!mine_anchors_fit(32 * 4, 32 * 1, kMineLimit), "32 classes, wa=4: the fallback");
  CHECK(mine_anchors_fit(5 * 5, 5 * 1, kMineLimit) && mine_anchors_fit(5 * 1, 5 * 2, kMineLimit),
        "run-time word counts with anchors in shared memory");
  CHECK(score_rows(32 * 16, 32 * 4, kScoreLimit) == 8, "the large vocabulary: score blocks of 8 anchors");
  CHECK(fallback > 0 && shared > 0 && small_rows > 0, "both mining paths and small score blocks exercised");
  for (int64_t n : {1, 31, 64, 65, 129, 1000})
    for (int64_t m : {1, 2, 31, 32, 33, 95, 1000, 4133})
      for (int rows : {64, 32, 16, 4, 1})
        for (int64_t sms : {1, 132}) emulate_score_grid(n, m, rows, sms);
  for (int64_t n : {1, 129, 5000})
    for (int64_t m : {1, 63, 64, 65, 2500, 40000})
      for (int64_t sms : {1, 132}) emulate_mine_splits(n, m, sms);
  std::printf("ok: %d mining layouts with anchors in shared memory, %d fallbacks\n", shared, fallback);
  return 0;
}
