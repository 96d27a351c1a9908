// CUDA kernels: a tiled score matrix and a fused score + mining pass that streams candidate tiles
// through shared memory and keeps a per-anchor running selection, so N x M is never written.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <optional>
#include <type_traits>

#include "checks.h"
#include "cuda/kernel_layouts.h"
#include "meta_entity.h"
#include "meta_entity_ops.h"

namespace medtrim {
namespace {

using layout::kCols;
using layout::kMineTile;
using layout::kOutStride;
using layout::kScoreRows;
using layout::kSmallCount;
using layout::kTableBytes;
using layout::kTableStride;
using layout::kThreads;
using layout::odd_stride;
using layout::padded_slot;
constexpr int kDefaultSharedLimit = 48 * 1024;  // usable without an opt-in on every GPU
static_assert(sizeof(float*) == 8, "layout::ScoreLayout keeps 8-byte row pointers");

template <int N>
using Words = std::integral_constant<int, N>;

// Runs launch(wa, wr) with compile-time word counts for the common layouts (up to 128 adjectives
// and 32 directions per class: the CPU's with_layout), so that set_iou's loops unroll; run-time
// counts otherwise. Each choice is a separate kernel instantiation.
template <class Launch>
void with_word_counts(int wa, int wr, Launch&& launch) {
  if (wr == 1) {
    switch (wa) {
      case 1: return launch(Words<1>{}, Words<1>{});
      case 2: return launch(Words<2>{}, Words<1>{});
      case 3: return launch(Words<3>{}, Words<1>{});
      case 4: return launch(Words<4>{}, Words<1>{});
      default: break;
    }
  }
  launch(wa, wr);
}

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

// Copies the masks of `count` consecutive samples from `first` into shared memory at the padded
// per-sample strides (coalesced reads; layout::padded_slot says where each word lands).
__device__ void stage_padded(const DeviceEntities& e, int64_t first, int count, uint32_t* s_adj,
                             int adj_pad, uint32_t* s_dir, int dir_pad) {
  const uint32_t* g_adj = e.adj + first * e.adj_stride;
  for (int k = threadIdx.x; k < count * e.adj_stride; k += blockDim.x)
    s_adj[padded_slot(k, e.adj_stride, adj_pad)] = g_adj[k];
  const uint32_t* g_dir = e.dir + first * e.dir_stride;
  for (int k = threadIdx.x; k < count * e.dir_stride; k += blockDim.x)
    s_dir[padded_slot(k, e.dir_stride, dir_pad)] = g_dir[k];
}

// The score matrix: each thread owns one anchor (anchors sorted by disease mask, so the lanes of
// a warp mostly take the same branches) and walks a split of the candidates in output order; the
// candidate of a step is the same for the whole warp (broadcast loads, streamed in order), the
// anchors' masks sit in shared memory at odd per-sample strides (distinct banks per lane). Scores
// go through a shared tile of kCols columns and leave as row segments at each anchor's original
// row, so the writes stay coalesced. Layout: layout::ScoreLayout.
template <class WordsA, class WordsR>
__global__ void score_matrix_kernel(DeviceEntities A, const int64_t* __restrict__ a_index,
                                    DeviceEntities B, int64_t col_split, WordsA wa, WordsR wr,
                                    uint32_t classes_mask, ScoreWeights w,
                                    const double* __restrict__ g_table, float* __restrict__ out) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int rows = blockDim.x;
  const layout::ScoreLayout L = layout::score_layout(rows, A.adj_stride, A.dir_stride);
  float* s_out = reinterpret_cast<float*>(smem + L.out());
  uint32_t* s_cdis = reinterpret_cast<uint32_t*>(smem + L.cdis());  // the tile's candidate masks
  double* s_table = reinterpret_cast<double*>(smem + L.table());
  float** s_dst = reinterpret_cast<float**>(smem + L.dst());  // each anchor's output row
  uint32_t* s_dis = reinterpret_cast<uint32_t*>(smem + L.dis());
  uint32_t* s_adj = reinterpret_cast<uint32_t*>(smem + L.adj());
  uint32_t* s_dir = reinterpret_cast<uint32_t*>(smem + L.dir());

  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * rows;
  const int count = static_cast<int>(min(static_cast<int64_t>(rows), A.n - row0));
  load_quotient_table(g_table, s_table);
  for (int k = threadIdx.x; k < count; k += rows) {
    s_dst[k] = out + a_index[row0 + k] * B.n;
    s_dis[k] = A.dis[row0 + k] & classes_mask;
  }
  stage_padded(A, row0, count, s_adj, L.adj_pad, s_dir, L.dir_pad);
  // (published by the first tile's __syncthreads)

  const SharedQuotient q{s_table};
  const int r = threadIdx.x;
  const bool active = r < count;
  // the write-out: warps of `width` lanes (blocks smaller than a warp for very large vocabularies)
  const int lane = r % 32, warp = r / 32, warps = (rows + 31) / 32, width = min(32, rows);
  const SampleView anchor{active ? s_dis[r] : 0u, s_adj + r * L.adj_pad, s_dir + r * L.dir_pad};
  float* row = s_out + r * kOutStride;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * col_split;
  const int64_t end = min(B.n, begin + col_split);
  for (int64_t c0 = begin; c0 < end; c0 += kCols) {
    const int cols = static_cast<int>(min(static_cast<int64_t>(kCols), end - c0));
    // Columns past the end get the mask 0 (no finding): pair_score then reads no descriptor mask,
    // so the scoring loop below always runs kCols columns; the write-out drops them.
    for (int c = threadIdx.x; c < kCols; c += rows) s_cdis[c] = c < cols ? __ldg(B.dis + c0 + c) & classes_mask : 0u;
    __syncthreads();  // s_cdis (and the anchors) staged; the previous write-out is done with s_out
    if (active) {
#pragma unroll 1  // the descriptor path below is long: one copy of it
      for (int c = 0; c < kCols; c += 4) {
        const uint4 d = *reinterpret_cast<const uint4*>(s_cdis + c);  // 4 candidates, one load
        // pair_score's early outs for the 4 at once (an anchor without findings, or no shared
        // disease), stored as one 16-byte row piece; those that share a disease are overwritten
        // below with the full score (pair_score, the same function as everywhere).
        const bool empty = anchor.dis == 0;
        *reinterpret_cast<float4*>(row + c) =
            make_float4(empty ? empty_anchor_score(d.x, w) : 0.0f, empty ? empty_anchor_score(d.y, w) : 0.0f,
                        empty ? empty_anchor_score(d.z, w) : 0.0f, empty ? empty_anchor_score(d.w, w) : 0.0f);
        uint32_t scored = ((anchor.dis & d.x) != 0) | ((anchor.dis & d.y) != 0) << 1 |
                          ((anchor.dis & d.z) != 0) << 2 | ((anchor.dis & d.w) != 0) << 3;
        for (; scored != 0; scored &= scored - 1) {
          const int k = lowest_bit(scored);
          const uint32_t cd = k == 0 ? d.x : k == 1 ? d.y : k == 2 ? d.z : d.w;
          const int64_t j = c0 + c + k;
          const SampleView cand{cd, B.adj + j * B.adj_stride, B.dir + j * B.dir_stride};
          row[c + k] = pair_score(anchor, cand, wa, wr, w, q);
        }
      }
    }
    __syncthreads();
    // One row segment per warp: coalesced. Row pointers precomputed: one 64-bit add per row; the
    // compiler makes these generic stores (the pointers come from shared memory) and unrolls the
    // loop 4 times, about 10 instructions per row (sm_90); with __stcs (a global store) it no
    // longer unrolls: 12 per row.
    const float* src = s_out + lane;
    const int64_t col = c0 + lane;
    if (lane < cols)
      for (int rr = warp; rr < count; rr += warps) s_dst[rr][col] = src[rr * kOutStride];
    if (width < 32)  // blocks of fewer than 32 anchors: a warp of `width` lanes covers the rest
      for (int rr = warp; rr < count; rr += warps)
        for (int c = lane + width; c < cols; c += width) s_dst[rr][c0 + c] = s_out[rr * kOutStride + c];
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

// Each thread owns one anchor and walks one split of the candidates, tile by tile. Anchors and
// candidates arrive sorted by disease mask, so neighbouring threads take the same branches and
// candidate runs share their score structure; `b_index` maps a sorted candidate back to its index,
// which keys and breaks ties (after the tie key with random ties: meta_entity.h). Partial
// selections go to `partial` (splits x N), merged by mine_finalize_kernel.
//
// Where the data sits (layout::MineLayout): a tile's ids, indices, tie hashes and disease masks in
// shared memory; the candidates' descriptor masks are read from global memory when scored: the
// candidate of a step is the same for the whole warp, so each load is one broadcast sector,
// streamed in order. The anchors' descriptor masks, which differ per lane, sit in shared memory at
// odd strides (kAnchorsShared); for vocabularies whose kThreads anchors do not fit, each lane reads
// its own from global memory (the fallback, same results).
//
// A candidate that shares no disease with the anchor scores 0 whatever its descriptors, and so
// does the rest of its run (equal masks are consecutive): the run is skipped as soon as no key of
// score 0 could change the anchor's result (MineState::could_take, the CPU kernel's group test),
// and otherwise pushed with its known score, without the scoring path (push_zero_score).
template <bool kAnchorsShared, class WordsA, class WordsR>
__global__ void mine_partial_kernel(DeviceEntities A, DeviceEntities B,
                                    const int64_t* __restrict__ a_ids,
                                    const int64_t* __restrict__ b_ids,
                                    const int64_t* __restrict__ b_index,
                                    const bool* __restrict__ a_semi_hard,
                                    int64_t split_len, WordsA wa, WordsR wr, uint32_t classes_mask,
                                    ScoreWeights w, float threshold, float upper,
                                    bool random_ties, uint64_t tie_seed,
                                    const double* __restrict__ g_table,
                                    MineState* __restrict__ partial) {
  extern __shared__ __align__(16) unsigned char smem[];
  const layout::MineLayout L = layout::mine_layout(kAnchorsShared, A.adj_stride, A.dir_stride);
  const int tile = L.tile;
  double* s_table = reinterpret_cast<double*>(smem + L.table());
  int64_t* s_ids = reinterpret_cast<int64_t*>(smem + L.ids());
  uint32_t* s_index = reinterpret_cast<uint32_t*>(smem + L.index());
  uint32_t* s_tie = reinterpret_cast<uint32_t*>(smem + L.tie());  // candidate tie hashes (random ties)
  uint32_t* s_dis = reinterpret_cast<uint32_t*>(smem + L.dis());

  load_quotient_table(g_table, s_table);
  const SharedQuotient q{s_table};
  const int64_t a0 = static_cast<int64_t>(blockIdx.x) * kThreads;
  const int64_t i = a0 + threadIdx.x;
  const bool active = i < A.n;
  SampleView anchor{0u, nullptr, nullptr};
  if (kAnchorsShared) {  // published by the first tile's __syncthreads
    uint32_t* s_adj = reinterpret_cast<uint32_t*>(smem + L.adj());
    uint32_t* s_dir = reinterpret_cast<uint32_t*>(smem + L.dir());
    stage_padded(A, a0, static_cast<int>(min(static_cast<int64_t>(kThreads), A.n - a0)), s_adj,
                 L.adj_pad, s_dir, L.dir_pad);
    anchor = SampleView{0u, s_adj + threadIdx.x * L.adj_pad, s_dir + threadIdx.x * L.dir_pad};
  } else {
    anchor = SampleView{0u, active ? A.adj + i * A.adj_stride : nullptr,
                        active ? A.dir + i * A.dir_stride : nullptr};
  }
  int64_t self = 0;
  uint32_t anchor_key = 0;
  bool semi = false;
  if (active) {
    anchor.dis = __ldg(A.dis + i) & classes_mask;
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
    {  // tile <= kThreads == blockDim.x: one candidate per thread
      const int k = threadIdx.x;
      if (k < count) {
        const int64_t id = b_ids[t0 + k];
        s_ids[k] = id;
        s_index[k] = static_cast<uint32_t>(b_index[t0 + k]);
        s_tie[k] = random_ties ? sample_tie_hash(tie_seed, id) : 0u;
        s_dis[k] = B.dis[t0 + k] & classes_mask;
      }
      const bool last = k < count && (k == count - 1 || ((B.dis[t0 + k] ^ B.dis[t0 + k + 1]) & classes_mask) != 0);
      const uint32_t ends = __ballot_sync(0xffffffffu, last);
      if (k % 32 == 0) s_run_ends[k / 32] = ends;
    }
    __syncthreads();  // also publishes the quotient table and the anchors on the first tile
    if (active) {
      const uint32_t* c_adj = B.adj + t0 * B.adj_stride;  // the tile's masks in global memory
      const uint32_t* c_dir = B.dir + t0 * B.dir_stride;
      int pushing_until = -1;  // last candidate of the zero-score run being pushed
      // One path through the body and one latch (no `continue`): with three exits the compiler
      // copied the selection state between register sets twice per step (sm_90: 30 moves), now
      // once (15).
      for (int t = 0; t < count; ++t) {
        const uint32_t cd = s_dis[t];
        const bool zero = anchor.dis != 0 ? (anchor.dis & cd) == 0 : cd != 0;  // pair_score == 0
        bool skip = false;
        if (zero && t > pushing_until) {  // the first of a zero-score run: test it once
          pushing_until = run_last(s_run_ends, t);  // push its members, or skip them all
          skip = !state.could_take(0.0f, semi, threshold, upper);  // (the run's rest scores 0 too)
        }
        if (skip) {
          t = pushing_until;
        } else if (s_ids[t] != self) {
          const uint32_t tie = random_ties ? tie_key(anchor_key, s_tie[t]) : 0u;
          if (zero && (state.positive.hi >> 32) != 0u && 0.0f < upper) {
            push_zero_score(state, semi, tie, s_index[t], threshold);
          } else {
            float score = 0.0f;
            if (!zero) {
              const SampleView cand{cd, c_adj + t * B.adj_stride, c_dir + t * B.dir_stride};
              score = pair_score(anchor, cand, wa, wr, w, q);
            }
            state.push(score, tie, s_index[t], threshold, upper);
          }
        }
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
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor table = quotient_table(a_dis, stream);
  const int64_t sms = multiprocessor_count(a_dis.get_device());
  with_word_counts(static_cast<int>(a_adj.size(2)), static_cast<int>(a_dir.size(2)), [&](auto wa, auto wr) {
    const auto kernel = &score_matrix_kernel<decltype(wa), decltype(wr)>;
    const int rows = layout::score_rows(SA.adj_stride, SA.dir_stride,
                                        dynamic_shared_limit(reinterpret_cast<const void*>(kernel)));
    TORCH_CHECK(rows > 0, "the vocabulary is too large for the CUDA kernels (",
                4 * (SA.adj_stride + SA.dir_stride), " bytes of masks per sample)");
    const size_t smem = static_cast<size_t>(layout::score_layout(rows, SA.adj_stride, SA.dir_stride).bytes());
    const int64_t anchor_blocks = (A.n + rows - 1) / rows;
    TORCH_CHECK(anchor_blocks <= 0x7FFFFFFF, "too many anchors: ", A.n);
    // split the columns so that even a small N fills the GPU (each split restages its anchors)
    const int64_t col_split = layout::split_length(anchor_blocks, B.n, 16LL * sms, kCols, 65535);
    const dim3 grid(static_cast<unsigned>(anchor_blocks), static_cast<unsigned>((B.n + col_split - 1) / col_split));
    kernel<<<grid, rows, smem, stream>>>(SA, a_index.data_ptr<int64_t>(), B, col_split, wa, wr,
                                         class_mask(a_adj.size(1)), ScoreWeights{w_dis, w_adj, w_dir},
                                         table.data_ptr<double>(), out.data_ptr<float>());
  });
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

  // Splits of the candidates, so that even a small N keeps every SM busy; each adds O(N) state.
  const int tile = kMineTile;
  const int64_t anchor_blocks = (n + kThreads - 1) / kThreads;
  const int64_t split_len =
      layout::split_length(anchor_blocks, m, 8LL * multiprocessor_count(a_dis.get_device()), tile, 64);
  const int64_t used_splits = (m + split_len - 1) / split_len;
  TORCH_CHECK(anchor_blocks <= 0x7FFFFFFF, "too many anchors: ", n);

  auto partial = at::empty({used_splits, n, static_cast<int64_t>(sizeof(MineState))},
                           a_dis.options().dtype(at::kByte));
  auto* partial_ptr = reinterpret_cast<MineState*>(partial.data_ptr<uint8_t>());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(anchor_blocks), static_cast<unsigned>(used_splits));
  const at::Tensor table = quotient_table(a_dis, stream);
  const auto launch = [&](auto kernel, bool anchors_shared, auto wa, auto wr) {
    const size_t smem = static_cast<size_t>(layout::mine_layout(anchors_shared, A.adj_stride, A.dir_stride).bytes());
    TORCH_CHECK(static_cast<int64_t>(smem) <= dynamic_shared_limit(reinterpret_cast<const void*>(kernel)),
                "the CUDA mining kernel needs ", smem, " bytes of shared memory");
    kernel<<<grid, kThreads, smem, stream>>>(
        A, B, aid.data_ptr<int64_t>(), bid.data_ptr<int64_t>(), b_index.data_ptr<int64_t>(),
        semi_sorted.data_ptr<bool>(), split_len, wa, wr, class_mask(classes),
        ScoreWeights{w_dis, w_adj, w_dir}, static_cast<float>(threshold), static_cast<float>(upper),
        tie_seed.has_value(), tie_seed.value_or(0), table.data_ptr<double>(), partial_ptr);
  };
  // The anchors' masks in shared memory when kThreads of them fit (41.7 KB with the default
  // vocabulary), else read from global memory: large vocabularies, run-time word counts.
  const auto shared_kernel = &mine_partial_kernel<true, int, int>;
  if (layout::mine_anchors_fit(A.adj_stride, A.dir_stride,
                               dynamic_shared_limit(reinterpret_cast<const void*>(shared_kernel)))) {
    with_word_counts(static_cast<int>(a_adj.size(2)), static_cast<int>(a_dir.size(2)), [&](auto wa, auto wr) {
      launch(&mine_partial_kernel<true, decltype(wa), decltype(wr)>, true, wa, wr);
    });
  } else {
    launch(&mine_partial_kernel<false, int, int>, false, static_cast<int>(a_adj.size(2)),
           static_cast<int>(a_dir.size(2)));
  }
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
