// CUDA kernels: a tiled score matrix and a fused score + mining pass that streams candidate tiles
// through shared memory and keeps a per-anchor running selection, so N x M is never written.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <optional>

#include "checks.h"
#include "meta_entity.h"
#include "meta_entity_ops.h"

namespace medtrim {
namespace {

constexpr int kThreads = 128;                   // threads per block in both kernels
constexpr int kMineTile = 64;                   // candidates per shared-memory tile when mining
constexpr int kDefaultSharedLimit = 48 * 1024;  // usable without an opt-in on every GPU
constexpr int kSmallCount = 32;                 // quotients i / u with u <= 32 come from a table
constexpr int kTableStride = kSmallCount + 1;
constexpr int64_t kTableBytes = sizeof(double) * kTableStride * kTableStride;

// i / u from a shared-memory table for the usual small counts (every Jaccard index, most IoUs),
// a division otherwise. The table is filled with the same correctly rounded division, so both
// paths and the CPU's table give identical bits.
struct SharedQuotient {
  const double* table;  // [kTableStride * kTableStride], entry u * kTableStride + i
  __device__ double operator()(int i, int u) const {
    return u <= kSmallCount ? table[u * kTableStride + i]
                            : __ddiv_rn(static_cast<double>(i), static_cast<double>(u));
  }
};

// The table is computed once per launch by one block (1,089 divisions in all), and every block of
// the scoring kernels copies it (8.7 KB, an L2 hit) instead of dividing again.
__global__ void quotient_table_kernel(double* __restrict__ table) {
  for (int k = threadIdx.x; k < kTableStride * kTableStride; k += blockDim.x) {
    const int u = k / kTableStride, i = k % kTableStride;
    table[k] = u == 0 ? 1.0 : (i > u ? 0.0 : __ddiv_rn(static_cast<double>(i), static_cast<double>(u)));
  }
}

__device__ void load_quotient_table(const double* __restrict__ global_table, double* table) {
  for (int k = threadIdx.x; k < kTableStride * kTableStride; k += blockDim.x) table[k] = global_table[k];
}

at::Tensor quotient_table(const at::Tensor& like, cudaStream_t stream) {
  auto table = at::empty({kTableStride * kTableStride}, like.options().dtype(at::kDouble));
  quotient_table_kernel<<<1, 512, 0, stream>>>(table.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return table;
}

struct DeviceEntities {
  const uint32_t* dis;
  const uint32_t* adj;
  const uint32_t* dir;
  int64_t n;
  int adj_stride;  // classes * wa
  int dir_stride;  // classes * wr
};

DeviceEntities device_entities(const at::Tensor& dis, const at::Tensor& adj, const at::Tensor& dir) {
  return DeviceEntities{reinterpret_cast<const uint32_t*>(dis.data_ptr<int32_t>()),
                        reinterpret_cast<const uint32_t*>(adj.data_ptr<int32_t>()),
                        reinterpret_cast<const uint32_t*>(dir.data_ptr<int32_t>()), dis.size(0),
                        static_cast<int>(adj.size(1) * adj.size(2)),
                        static_cast<int>(dir.size(1) * dir.size(2))};
}

// Copies `count` consecutive samples starting at `first` into shared memory (coalesced).
__device__ void stage_samples(const DeviceEntities& e, int64_t first, int count, uint32_t* s_dis,
                              uint32_t* s_adj, uint32_t* s_dir, uint32_t classes_mask) {
  for (int k = threadIdx.x; k < count; k += blockDim.x) s_dis[k] = e.dis[first + k] & classes_mask;
  const uint32_t* g_adj = e.adj + first * e.adj_stride;
  for (int k = threadIdx.x; k < count * e.adj_stride; k += blockDim.x) s_adj[k] = g_adj[k];
  const uint32_t* g_dir = e.dir + first * e.dir_stride;
  for (int k = threadIdx.x; k < count * e.dir_stride; k += blockDim.x) s_dir[k] = g_dir[k];
}

// The score matrix: each thread owns one anchor (anchors sorted by disease mask, so the lanes of
// a warp mostly take the same branches) and walks a split of the candidates in output order; the
// candidate of a step is the same for the whole warp (broadcast loads, streamed in order), the
// anchors' masks sit in shared memory (per-sample stride padded to an odd number of words, so the
// lanes' reads fall in distinct banks). Scores go through a shared tile of kCols columns and leave
// as row segments at each anchor's original row, so the writes stay coalesced.
constexpr int kCols = 32;        // candidates per output tile
constexpr int kScoreRows = 64;   // anchors (threads) per block at most

__host__ __device__ constexpr int odd_stride(int words) { return words % 2 == 0 ? words + 1 : words; }

__global__ void score_matrix_kernel(DeviceEntities A, const int64_t* __restrict__ a_index,
                                    DeviceEntities B, int64_t col_split, int wa, int wr,
                                    uint32_t classes_mask, ScoreWeights w,
                                    const double* __restrict__ g_table, float* __restrict__ out) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int rows = blockDim.x;
  const int adj_pad = odd_stride(A.adj_stride), dir_pad = odd_stride(A.dir_stride);
  double* s_table = reinterpret_cast<double*>(smem);
  int64_t* s_rows = reinterpret_cast<int64_t*>(smem + kTableBytes);  // original row of each anchor
  float* s_out = reinterpret_cast<float*>(s_rows + rows);            // [rows][kCols + 1]
  uint32_t* s_dis = reinterpret_cast<uint32_t*>(s_out + rows * (kCols + 1));
  uint32_t* s_adj = s_dis + rows;             // [rows][adj_pad]
  uint32_t* s_dir = s_adj + rows * adj_pad;   // [rows][dir_pad]

  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * rows;
  const int count = static_cast<int>(min(static_cast<int64_t>(rows), A.n - row0));
  load_quotient_table(g_table, s_table);
  for (int k = threadIdx.x; k < count; k += rows) {
    s_rows[k] = a_index[row0 + k];
    s_dis[k] = A.dis[row0 + k] & classes_mask;
  }
  const uint32_t* g_adj = A.adj + row0 * A.adj_stride;
  for (int k = threadIdx.x; k < count * A.adj_stride; k += rows)
    s_adj[(k / A.adj_stride) * adj_pad + k % A.adj_stride] = g_adj[k];
  const uint32_t* g_dir = A.dir + row0 * A.dir_stride;
  for (int k = threadIdx.x; k < count * A.dir_stride; k += rows)
    s_dir[(k / A.dir_stride) * dir_pad + k % A.dir_stride] = g_dir[k];
  __syncthreads();

  const SharedQuotient q{s_table};
  const int r = threadIdx.x;
  const bool active = r < count;
  // the write-out: warps of `width` lanes (blocks smaller than a warp for very large vocabularies)
  const int lane = r % 32, warp = r / 32, warps = (rows + 31) / 32, width = min(32, rows);
  const SampleView anchor{active ? s_dis[r] : 0u, s_adj + r * adj_pad, s_dir + r * dir_pad};
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * col_split;
  const int64_t end = min(B.n, begin + col_split);
  for (int64_t c0 = begin; c0 < end; c0 += kCols) {
    const int cols = static_cast<int>(min(static_cast<int64_t>(kCols), end - c0));
    if (active) {
      const uint32_t* c_dis = B.dis + c0;
      const uint32_t* c_adj = B.adj + c0 * B.adj_stride;
      const uint32_t* c_dir = B.dir + c0 * B.dir_stride;
      float* row = s_out + r * (kCols + 1);
      for (int c = 0; c < cols; ++c, c_adj += B.adj_stride, c_dir += B.dir_stride) {
        const SampleView cand{__ldg(c_dis + c) & classes_mask, c_adj, c_dir};
        row[c] = pair_score(anchor, cand, wa, wr, w, q);
      }
    }
    __syncthreads();
    for (int rr = warp; rr < count; rr += warps) {  // one row segment per warp: coalesced
      float* dst = out + s_rows[rr] * B.n + c0;
      for (int c = lane; c < cols; c += width) dst[c] = s_out[rr * (kCols + 1) + c];
    }
    __syncthreads();  // s_out is refilled by the next tile
  }
}

// The last candidate of the run of equal masks that holds tile candidate t (bit k of ends[k / 32]
// marks the last of a run; the tile's last candidate always ends one).
__device__ __forceinline__ int run_last(const uint32_t* ends, int t) {
  int word = t / 32;
  uint32_t bits = ends[word] & (~0u << (t % 32));
  while (bits == 0) bits = ends[++word];
  return word * 32 + lowest_bit(bits);
}

// MineState::push of a score-0 key (< upper) once the positive scores above 0, so that the key
// cannot become the positive: only the lists this anchor's rule reads are updated (negative_index
// reads the semi-hard pair or the hard list, never both). About a third of push's instructions;
// the anchors without findings, whose kept candidates all score 0 (w_dis >= upper), take it for
// every candidate with a finding.
__device__ __forceinline__ void push_zero_score(MineState& state, bool semi, uint32_t tie,
                                                uint32_t j, float threshold) {
  if (semi) {
    state.below_upper_max.push(max_key(0.0f, tie, j));
    if (0.0f >= threshold) state.semi_hard_min.push(min_key(0.0f, tie, j));
  } else {
    state.below_upper_min.push(min_key(0.0f, tie, j));
  }
}

// Each thread owns one anchor and walks one split of the candidates, tile by tile; candidates are
// staged in shared memory and read by all threads at once. Anchors and candidates arrive sorted by
// disease mask, so neighbouring threads take the same branches and candidate runs share their
// score structure; `b_index` maps a sorted candidate back to its index, which keys and breaks
// ties (after the tie key with random ties: meta_entity.h). Partial selections go to `partial`
// (splits x N), merged by mine_finalize_kernel.
//
// A candidate that shares no disease with the anchor scores 0 whatever its descriptors, and so
// does the rest of its run (equal masks are consecutive): the run is skipped as soon as no key of
// score 0 could change the anchor's result (MineState::could_take, the CPU kernel's group test),
// and otherwise pushed with its known score, without the scoring path (push_zero_score).
__global__ void mine_partial_kernel(DeviceEntities A, DeviceEntities B,
                                    const int64_t* __restrict__ a_ids,
                                    const int64_t* __restrict__ b_ids,
                                    const int64_t* __restrict__ b_index,
                                    const bool* __restrict__ a_semi_hard, int tile,
                                    int64_t split_len, int wa, int wr, uint32_t classes_mask,
                                    ScoreWeights w, float threshold, float upper,
                                    bool random_ties, uint64_t tie_seed,
                                    const double* __restrict__ g_table,
                                    MineState* __restrict__ partial) {
  extern __shared__ __align__(16) unsigned char smem[];
  double* s_table = reinterpret_cast<double*>(smem);
  int64_t* s_ids = reinterpret_cast<int64_t*>(smem + kTableBytes);
  uint32_t* s_index = reinterpret_cast<uint32_t*>(s_ids + tile);
  uint32_t* s_tie = s_index + tile;  // candidate tie hashes (random ties)
  uint32_t* s_dis = s_tie + tile;
  uint32_t* s_adj = s_dis + tile;
  uint32_t* s_dir = s_adj + tile * B.adj_stride;

  load_quotient_table(g_table, s_table);
  const SharedQuotient q{s_table};
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool active = i < A.n;
  SampleView anchor{0u, nullptr, nullptr};
  int64_t self = 0;
  uint32_t anchor_key = 0;
  bool semi = false;
  if (active) {
    anchor = SampleView{__ldg(A.dis + i) & classes_mask, A.adj + i * A.adj_stride,
                        A.dir + i * A.dir_stride};
    self = a_ids[i];
    semi = a_semi_hard[i];
    if (random_ties) anchor_key = sample_tie_hash(tie_seed, self);
  }

  const int64_t begin = static_cast<int64_t>(blockIdx.y) * split_len;
  const int64_t end = min(B.n, begin + split_len);
  // bit k of s_run_ends[k / 32]: candidate k of the tile is the last of its run of equal masks
  __shared__ uint32_t s_run_ends[kThreads / 32];
  MineState state;
  for (int64_t t0 = begin; t0 < end; t0 += tile) {
    const int count = static_cast<int>(min(static_cast<int64_t>(tile), end - t0));
    for (int k = threadIdx.x; k < count; k += blockDim.x) {
      const int64_t id = b_ids[t0 + k];
      s_ids[k] = id;
      s_index[k] = static_cast<uint32_t>(b_index[t0 + k]);
      s_tie[k] = random_ties ? sample_tie_hash(tie_seed, id) : 0u;
    }
    stage_samples(B, t0, count, s_dis, s_adj, s_dir, classes_mask);
    {  // tile <= kThreads == blockDim.x: one candidate per thread
      const int k = threadIdx.x;
      const bool last = k < count && (k == count - 1 || ((B.dis[t0 + k] ^ B.dis[t0 + k + 1]) & classes_mask) != 0);
      const uint32_t ends = __ballot_sync(0xffffffffu, last);
      if (k % 32 == 0) s_run_ends[k / 32] = ends;
    }
    __syncthreads();  // also publishes the quotient table on the first tile
    if (active) {
      int pushing_until = -1;  // last candidate of the zero-score run being pushed
      for (int t = 0; t < count; ++t) {
        const uint32_t cd = s_dis[t];
        const bool zero = anchor.dis != 0 ? (anchor.dis & cd) == 0 : cd != 0;  // pair_score == 0
        if (zero && t > pushing_until) {  // the first of a zero-score run: test it once
          const int last = run_last(s_run_ends, t);
          if (!state.could_take(0.0f, semi, threshold, upper)) {
            t = last;  // the run's rest scores 0 too
            continue;
          }
          pushing_until = last;  // push its members (a push that cannot enter changes nothing)
        }
        if (s_ids[t] == self) continue;
        const uint32_t tie = random_ties ? tie_key(anchor_key, s_tie[t]) : 0u;
        if (zero && (state.positive.hi >> 32) != 0u && 0.0f < upper) {
          push_zero_score(state, semi, tie, s_index[t], threshold);
          continue;
        }
        float score = 0.0f;
        if (!zero) {
          const SampleView cand{cd, s_adj + t * B.adj_stride, s_dir + t * B.dir_stride};
          score = pair_score(anchor, cand, wa, wr, w, q);
        }
        state.push(score, tie, s_index[t], threshold, upper);
      }
    }
    __syncthreads();
  }
  if (active) partial[static_cast<int64_t>(blockIdx.y) * A.n + i] = state;
}

// Merges the splits of each (sorted) anchor and writes its result at its original position.
__global__ void mine_finalize_kernel(const MineState* __restrict__ partial, int splits, int64_t n,
                                     const int64_t* __restrict__ a_index,
                                     const bool* __restrict__ semi_hard,
                                     int64_t* __restrict__ positive, int64_t* __restrict__ negative) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  MineState state = partial[i];
  for (int s = 1; s < splits; ++s) state.merge(partial[static_cast<int64_t>(s) * n + i]);
  const int64_t original = a_index[i];
  positive[original] = state.positive_index();
  negative[original] = state.negative_index(semi_hard[original]);
}

__global__ void pair_scores_kernel(DeviceEntities A, DeviceEntities B,
                                   const int64_t* __restrict__ a_idx,
                                   const int64_t* __restrict__ b_idx, int64_t count, int wa, int wr,
                                   uint32_t classes_mask, ScoreWeights w, float* __restrict__ out) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= count) return;
  const int64_t i = a_idx[k], j = b_idx[k];
  if (i < 0 || j < 0) {
    out[k] = __int_as_float(0x7fc00000);  // NaN: no pair
    return;
  }
  const SampleView a{A.dis[i] & classes_mask, A.adj + i * A.adj_stride, A.dir + i * A.dir_stride};
  const SampleView b{B.dis[j] & classes_mask, B.adj + j * B.adj_stride, B.dir + j * B.dir_stride};
  out[k] = pair_score(a, b, wa, wr, w, DivideQuotient{});
}

// Dynamic shared memory a launch of `kernel` may use without an opt-in: 48 KiB minus the kernel's
// static shared memory (read from the compiled kernel, so that the two cannot drift apart).
int64_t dynamic_shared_limit(const void* kernel) {
  cudaFuncAttributes attr{};
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  return std::min<int64_t>(kDefaultSharedLimit - static_cast<int64_t>(attr.sharedSizeBytes),
                           attr.maxDynamicSharedSizeBytes);
}

// Largest power-of-two tile (<= kThreads) whose shared memory fits `limit` bytes.
int pick_tile(int64_t bytes_per_sample, int64_t fixed_bytes, int64_t limit) {
  int tile = kThreads;
  while (tile > 1 && fixed_bytes + tile * bytes_per_sample > limit) tile /= 2;
  TORCH_CHECK(fixed_bytes + tile * bytes_per_sample <= limit,
              "the vocabulary is too large for the CUDA kernels (", bytes_per_sample,
              " bytes of masks per sample)");
  return tile;
}

int multiprocessor_count(int device) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return std::max(sms, 1);
}

// Stable order of the samples by (valid bits of) their disease mask.
at::Tensor order_by_disease_mask(const at::Tensor& dis, int64_t classes) {
  const auto key = at::bitwise_and(dis.to(at::kLong), static_cast<int64_t>(class_mask(classes)));
  return std::get<1>(key.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
}

}  // namespace

at::Tensor score_matrix_cuda(const at::Tensor& a_dis, const at::Tensor& a_adj,
                             const at::Tensor& a_dir, const at::Tensor& b_dis,
                             const at::Tensor& b_adj, const at::Tensor& b_dir, double w_dis,
                             double w_adj, double w_dir) {
  check_score_inputs(a_dis, a_adj, a_dir, b_dis, b_adj, b_dir, w_dis, w_adj, w_dir);
  TORCH_CHECK(a_dis.is_cuda(), "score_matrix_cuda called with tensors on ", a_dis.device());
  const c10::cuda::CUDAGuard guard(a_dis.device());

  const auto ad = a_dis.contiguous(), aa = a_adj.contiguous(), ar = a_dir.contiguous();
  const auto bd = b_dis.contiguous(), ba = b_adj.contiguous(), br = b_dir.contiguous();
  const DeviceEntities A = device_entities(ad, aa, ar), B = device_entities(bd, ba, br);
  auto out = at::empty({A.n, B.n}, a_dis.options().dtype(at::kFloat));
  if (A.n == 0 || B.n == 0) return out;

  // anchors sorted by disease mask (gathered copies, O(N) memory); candidates in output order
  const auto a_index = order_by_disease_mask(a_dis, a_adj.size(1));
  const auto sad = ad.index_select(0, a_index), saa = aa.index_select(0, a_index).contiguous(),
             sar = ar.index_select(0, a_index).contiguous();
  const DeviceEntities SA = device_entities(sad, saa, sar);
  const int64_t per_row = 8 + 4 * (kCols + 1) + 4 * (1 + odd_stride(SA.adj_stride) + odd_stride(SA.dir_stride));
  const int rows = std::min(kScoreRows, pick_tile(per_row, kTableBytes, dynamic_shared_limit(
                                                      reinterpret_cast<const void*>(&score_matrix_kernel))));
  const size_t smem = static_cast<size_t>(kTableBytes + rows * per_row);
  const int64_t anchor_blocks = (A.n + rows - 1) / rows;
  TORCH_CHECK(anchor_blocks <= 0x7FFFFFFF, "too many anchors: ", A.n);
  // split the columns so that even a small N fills the GPU (each split restages its anchors)
  const int64_t target_blocks = 16LL * multiprocessor_count(a_dis.get_device());
  const int64_t col_tiles = (B.n + kCols - 1) / kCols;
  const int64_t splits = std::clamp<int64_t>((target_blocks + anchor_blocks - 1) / anchor_blocks, 1,
                                             std::min<int64_t>(col_tiles, 65535));
  const int64_t col_split = ((B.n + splits - 1) / splits + kCols - 1) / kCols * kCols;
  const dim3 grid(static_cast<unsigned>(anchor_blocks), static_cast<unsigned>((B.n + col_split - 1) / col_split));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor table = quotient_table(a_dis, stream);
  score_matrix_kernel<<<grid, rows, smem, stream>>>(
      SA, a_index.data_ptr<int64_t>(), B, col_split, static_cast<int>(a_adj.size(2)),
      static_cast<int>(a_dir.size(2)), class_mask(a_adj.size(1)), ScoreWeights{w_dis, w_adj, w_dir},
      table.data_ptr<double>(), out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor> mine_triplets_cuda(
    const at::Tensor& a_dis, const at::Tensor& a_adj, const at::Tensor& a_dir,
    const at::Tensor& a_ids, const at::Tensor& b_dis, const at::Tensor& b_adj,
    const at::Tensor& b_dir, const at::Tensor& b_ids, const at::Tensor& semi_hard, double w_dis,
    double w_adj, double w_dir, double threshold, double upper,
    const std::optional<at::Tensor>& tie_seed_tensor) {
  check_score_inputs(a_dis, a_adj, a_dir, b_dis, b_adj, b_dir, w_dis, w_adj, w_dir);
  check_mining(a_dis, a_ids, b_dis, b_ids, semi_hard, threshold, upper);
  TORCH_CHECK(a_dis.is_cuda(), "mine_triplets_cuda called with tensors on ", a_dis.device());
  const std::optional<uint64_t> tie_seed = read_tie_seed(tie_seed_tensor);
  const c10::cuda::CUDAGuard guard(a_dis.device());

  const int64_t n = a_dis.size(0), m = b_dis.size(0), classes = a_adj.size(1);
  auto positive = at::full({n}, -1, a_ids.options());
  auto negative = at::full({n}, -1, a_ids.options());
  if (n == 0 || m == 0) return {positive, negative};

  // Sorted copies (O(N + M) memory): see mine_partial_kernel.
  const auto a_index = order_by_disease_mask(a_dis, classes);
  const auto b_index = order_by_disease_mask(b_dis, classes);
  const auto ad = a_dis.index_select(0, a_index), aa = a_adj.index_select(0, a_index).contiguous(),
             ar = a_dir.index_select(0, a_index).contiguous(), aid = a_ids.index_select(0, a_index);
  const auto bd = b_dis.index_select(0, b_index), ba = b_adj.index_select(0, b_index).contiguous(),
             br = b_dir.index_select(0, b_index).contiguous(), bid = b_ids.index_select(0, b_index);
  const auto semi = semi_hard.contiguous();
  const auto semi_sorted = semi.index_select(0, a_index);
  const DeviceEntities A = device_entities(ad, aa, ar), B = device_entities(bd, ba, br);

  const int64_t per_sample = 4 * (1 + B.adj_stride + B.dir_stride) + 8 + 4 + 4;  // masks, id, index, tie
  // At most 64 candidates per tile (<= kThreads, which the run ends rely on): 26 KB of shared
  // memory with the default vocabulary, so 8 blocks fit an SM (128 candidates: 42 KB, 5 blocks);
  // with 64 registers the registers allow 8 too (csrc/cuda/PERFORMANCE.md)
  const int tile = std::min(kMineTile, pick_tile(per_sample, kTableBytes,
                            dynamic_shared_limit(reinterpret_cast<const void*>(&mine_partial_kernel))));
  const size_t smem = static_cast<size_t>(kTableBytes + tile * per_sample);

  // Split the candidates so that even a small N keeps every SM busy; each split adds O(N) state.
  const int64_t anchor_blocks = (n + kThreads - 1) / kThreads;
  const int64_t target_blocks = 8LL * multiprocessor_count(a_dis.get_device());
  const int64_t max_splits = std::max<int64_t>(1, (m + tile - 1) / tile);
  const int64_t splits = std::clamp<int64_t>((target_blocks + anchor_blocks - 1) / anchor_blocks,
                                             1, std::min<int64_t>(max_splits, 64));
  const int64_t split_len = ((m + splits - 1) / splits + tile - 1) / tile * tile;
  const int64_t used_splits = (m + split_len - 1) / split_len;
  TORCH_CHECK(anchor_blocks <= 0x7FFFFFFF, "too many anchors: ", n);

  auto partial = at::empty({used_splits, n, static_cast<int64_t>(sizeof(MineState))},
                           a_dis.options().dtype(at::kByte));
  auto* partial_ptr = reinterpret_cast<MineState*>(partial.data_ptr<uint8_t>());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(anchor_blocks), static_cast<unsigned>(used_splits));
  const at::Tensor table = quotient_table(a_dis, stream);
  mine_partial_kernel<<<grid, kThreads, smem, stream>>>(
      A, B, aid.data_ptr<int64_t>(), bid.data_ptr<int64_t>(), b_index.data_ptr<int64_t>(),
      semi_sorted.data_ptr<bool>(), tile, split_len, static_cast<int>(a_adj.size(2)),
      static_cast<int>(a_dir.size(2)), class_mask(classes), ScoreWeights{w_dis, w_adj, w_dir},
      static_cast<float>(threshold), static_cast<float>(upper), tie_seed.has_value(),
      tie_seed.value_or(0), table.data_ptr<double>(), partial_ptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  mine_finalize_kernel<<<static_cast<unsigned>(anchor_blocks), kThreads, 0, stream>>>(
      partial_ptr, static_cast<int>(used_splits), n, a_index.data_ptr<int64_t>(),
      semi.data_ptr<bool>(), positive.data_ptr<int64_t>(), negative.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {positive, negative};
}

at::Tensor pair_scores_cuda(const at::Tensor& a_dis, const at::Tensor& a_adj, const at::Tensor& a_dir,
                            const at::Tensor& b_dis, const at::Tensor& b_adj, const at::Tensor& b_dir,
                            const at::Tensor& anchor_index, const at::Tensor& candidate_index,
                            double w_dis, double w_adj, double w_dir) {
  check_score_inputs(a_dis, a_adj, a_dir, b_dis, b_adj, b_dir, w_dis, w_adj, w_dir);
  TORCH_CHECK(a_dis.is_cuda(), "pair_scores_cuda called with tensors on ", a_dis.device());
  const c10::cuda::CUDAGuard guard(a_dis.device());
  check_pair_indices(anchor_index, candidate_index, a_dis.size(0), b_dis.size(0), a_dis.device());

  const auto ad = a_dis.contiguous(), aa = a_adj.contiguous(), ar = a_dir.contiguous();
  const auto bd = b_dis.contiguous(), ba = b_adj.contiguous(), br = b_dir.contiguous();
  const auto ai = anchor_index.contiguous(), bi = candidate_index.contiguous();
  const int64_t count = ai.size(0);
  auto out = at::empty({count}, a_dis.options().dtype(at::kFloat));
  if (count == 0) return out;
  const int64_t blocks = (count + kThreads - 1) / kThreads;
  TORCH_CHECK(blocks <= 0x7FFFFFFF, "too many pairs: ", count);
  pair_scores_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      device_entities(ad, aa, ar), device_entities(bd, ba, br), ai.data_ptr<int64_t>(),
      bi.data_ptr<int64_t>(), count, static_cast<int>(a_adj.size(2)), static_cast<int>(a_dir.size(2)),
      class_mask(a_adj.size(1)), ScoreWeights{w_dis, w_adj, w_dir}, out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace medtrim
