// CUDA kernels of the fused multimodal triplet loss (same structure as cpu/triplet_loss_cpu.cpp).
//
// forward:  a warp per row computes inverse norms; a warp per triplet reads its six rows once
//           (coalesced, lanes striding over dim) and reduces all eight dot products together.
// backward: blocks walk the gradient plan (entries sorted by row) in chunks of at most kChunk
//           entries of one row, accumulate the gradient of the normalized row in shared memory
//           and apply the normalization's Jacobian; hot rows are split over several blocks and
//           their partial sums added in chunk order (fixed order: deterministic, no atomics).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "triplet_loss.h"
#include "triplet_loss_ops.h"
#include "triplet_loss_plan.h"

namespace medtrim {
namespace {

using namespace loss;

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;
constexpr int kRowThreads = 256;
constexpr size_t kMaxSharedBytes = 48 * 1024;  // default dynamic shared memory, no opt-in

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;  // complete in lane 0
}

template <typename scalar_t, typename acc_t>
__global__ void inverse_norms_kernel(Layout<scalar_t> layout, RowRanges ranges, int64_t total_rows,
                                     acc_t* __restrict__ inv_norms, int* __restrict__ nonfinite) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
       r < total_rows; r += warps) {
    int64_t local;
    const int mat = ranges.locate(r, &local);
    const scalar_t* x = layout.row_ptr(mat, local);
    acc_t s = 0;
    for (int64_t i = lane; i < layout.dim; i += kWarp) {
      const acc_t v = static_cast<acc_t>(x[i]);
      s += v * v;
    }
    s = warp_sum(s);
    if (lane == 0) {
      const acc_t norm = sqrt(s);
      if (!is_finite(norm)) atomicAdd(nonfinite, 1);
      inv_norms[r] = inverse_norm(norm);
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void triplet_forward_kernel(Layout<scalar_t> layout, const acc_t* __restrict__ inv,
                                       const int64_t* __restrict__ A, const int64_t* __restrict__ P,
                                       const int64_t* __restrict__ N, int64_t triplets, acc_t margin,
                                       acc_t* __restrict__ loss_img, acc_t* __restrict__ loss_txt,
                                       uint8_t* __restrict__ active) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
       t < triplets; t += warps) {
    const int64_t a = A[t], p = P[t], n = N[t];
    if (a < 0 || p < 0 || n < 0) {  // warp-uniform
      if (lane == 0) {
        loss_img[t] = loss_txt[t] = acc_t(0);
        active[t] = 0;
      }
      continue;
    }
    const scalar_t* rows[kTripletRows];
    triplet_rows(layout, a, p, n, rows);
    acc_t s[kNumCos] = {};
    for (int64_t i = lane; i < layout.dim; i += kWarp) {
      acc_t x[kTripletRows];
#pragma unroll
      for (int r = 0; r < kTripletRows; ++r) x[r] = static_cast<acc_t>(rows[r][i]);
      add_products(x, s, 1);
    }
#pragma unroll
    for (int c = 0; c < kNumCos; ++c) s[c] = warp_sum(s[c]);
    if (lane == 0) {
      dots_to_cosines(layout, inv, a, p, n, s);
      active[t] = triplet_losses(s, margin, &loss_img[t], &loss_txt[t]);
    }
  }
}

// ---- backward ------------------------------------------------------------------------------
//
// Work unit: a chunk of at most kChunk consecutive plan entries of one row. A row with up to kChunk
// entries is one chunk and is finished by its block; a longer ("hot") row, e.g. a positive shared
// by thousands of tied anchors, is split into several chunks on several blocks, each writing its
// partial gradient to its own slot, and row_finish_kernel adds a row's slots in chunk order. The
// chunking depends only on the plan, not on the grid, so the result is deterministic (no atomics).
//
// Inside a chunk, each warp decodes 32 entries at once (one per lane: the dependent loads of
// codes -> triplet -> indices, gradients, inverse norms run in parallel) and broadcasts each
// entry's sources and coefficients with shuffles; the threads then add them to the elements they
// own, i = threadIdx.x + k * blockDim.x, in entry order. Every warp decodes the same entries
// (cached loads), so the block needs no shared memory and no barrier for this.
constexpr int kChunk = 128;  // plan entries per block: a 5,000-entry row spreads over 40 blocks

// The chunk layout of the rows, built on the device (no host sync): chunk c belongs to row
// chunk_row[c] (-1: unused), a row's chunks are consecutive, and a row split into several chunks
// owns the partial-gradient slots slot_end[r] - chunks(r) .. slot_end[r] - 1.
struct ChunkPlan {
  const int64_t* chunk_row;  // (capacity,) row of each chunk, -1 past the last
  const int64_t* chunk_end;  // (rows,) inclusive prefix sum of chunks per row
  const int64_t* slot_end;   // (rows,) inclusive prefix sum of chunks of the split rows
  int64_t capacity;          // chunk slots launched: rows + ceil(entries / kChunk) bounds the need
};

__device__ __forceinline__ int64_t row_chunks(const int64_t* offsets, int64_t r) {
  const int64_t n = offsets[r + 1] - offsets[r];
  return n <= kChunk ? 1 : (n + kChunk - 1) / kChunk;
}

__global__ void chunk_rows_kernel(const int64_t* __restrict__ offsets,
                                  const int64_t* __restrict__ chunk_end, int64_t rows,
                                  int64_t* __restrict__ chunk_row) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const int64_t n = row_chunks(offsets, r), first = chunk_end[r] - n;
  for (int64_t j = 0; j < n; ++j) chunk_row[first + j] = r;
}

// grad[i] += the contributions of plan entries [begin, end), in order; returns whether any entry
// had a nonzero source (block-uniform: every warp decodes the same entries).
template <typename scalar_t, typename acc_t>
__device__ bool accumulate_entries(const BackwardView<scalar_t, acc_t>& args, int64_t begin,
                                   int64_t end, acc_t* grad) {
  const int lane = threadIdx.x % kWarp;
  const int64_t dim = args.layout.dim;
  bool any = false;
  for (int64_t b = begin; b < end; b += kWarp) {
    const scalar_t* src[4] = {nullptr, nullptr, nullptr, nullptr};
    acc_t coef[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
    int count = 0;
    if (b + lane < end) count = args.entry_sources(b + lane, src, coef);
    const int batch = static_cast<int>(min(static_cast<int64_t>(kWarp), end - b));
    for (int e = 0; e < batch; ++e) {
      const int cnt = __shfl_sync(0xffffffffu, count, e);  // warp-uniform from here on
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const auto bits = __shfl_sync(0xffffffffu, reinterpret_cast<unsigned long long>(src[j]), e);
        const acc_t c = __shfl_sync(0xffffffffu, coef[j], e);
        if (j < cnt) {
          const scalar_t* s = reinterpret_cast<const scalar_t*>(bits);
          for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) grad[i] += c * static_cast<acc_t>(s[i]);
        }
      }
      any = any || cnt > 0;
    }
  }
  return any;
}

// dst = d(normalized row)/d(row)^T grad = inv * grad - (x . grad) * inv^3 * x. Block-wide: all
// threads call it together (it has barriers); `partial` holds the per-warp sums.
template <typename scalar_t, typename acc_t>
__device__ void apply_normalization(const scalar_t* x, acc_t inv_r, const acc_t* grad, int64_t dim,
                                    scalar_t* dst, acc_t* partial) {
  acc_t s = 0;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) s += static_cast<acc_t>(x[i]) * grad[i];
  s = warp_sum(s);
  if (threadIdx.x % kWarp == 0) partial[threadIdx.x / kWarp] = s;
  __syncthreads();
  acc_t total = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x) / kWarp; ++w) total += partial[w];
  const acc_t along = total * inv_r * inv_r * inv_r;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x)
    dst[i] = static_cast<scalar_t>(inv_r * grad[i] - along * static_cast<acc_t>(x[i]));
  __syncthreads();  // partial is reused by the next row
}

// One block per chunk (grid-stride). grad (dim values) lives in dynamic shared memory, each
// thread owning its elements, so accumulation and reset need no synchronisation.
template <typename scalar_t, typename acc_t>
__global__ void row_backward_kernel(BackwardView<scalar_t, acc_t> args, ChunkPlan plan,
                                    acc_t* __restrict__ slots) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* grad = reinterpret_cast<acc_t*>(smem_raw);
  __shared__ acc_t partial[kRowThreads / kWarp];
  const int64_t dim = args.layout.dim;
  for (int64_t c = blockIdx.x; c < plan.capacity; c += gridDim.x) {
    const int64_t r = plan.chunk_row[c];  // block-uniform, like everything below
    if (r < 0) break;                     // chunk_row is -1 from the first unused chunk on
    const int64_t chunks = row_chunks(args.offsets, r);
    const int64_t j = c - (plan.chunk_end[r] - chunks);  // this chunk's place in its row
    const acc_t inv_r = args.inv[r];
    if (chunks > 1 && inv_r == acc_t(0)) continue;  // row_finish_kernel writes the zeros
    const int64_t begin = args.offsets[r] + j * kChunk;
    const int64_t end = min(args.offsets[r + 1], begin + kChunk);
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) grad[i] = acc_t(0);
    const bool any = inv_r != acc_t(0) && accumulate_entries(args, begin, end, grad);
    if (chunks > 1) {  // a slice of a hot row: hand the partial sum to row_finish_kernel
      acc_t* slot = slots + (plan.slot_end[r] - chunks + j) * dim;
      for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) slot[i] = grad[i];
      continue;
    }
    int64_t local;
    const int mat = args.ranges.locate(r, &local);
    scalar_t* dst = args.out[mat] + local * dim;
    if (!any) {
      for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = scalar_t(0);
      continue;
    }
    apply_normalization(args.layout.row_ptr(mat, local), inv_r, grad, dim, dst, partial);
  }
}

// The rows split into several chunks: add their slots in chunk order, then normalize.
template <typename scalar_t, typename acc_t>
__global__ void row_finish_kernel(BackwardView<scalar_t, acc_t> args, ChunkPlan plan,
                                  const acc_t* __restrict__ slots, int64_t total_rows) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* grad = reinterpret_cast<acc_t*>(smem_raw);
  __shared__ acc_t partial[kRowThreads / kWarp];
  const int64_t dim = args.layout.dim;
  for (int64_t r = blockIdx.x; r < total_rows; r += gridDim.x) {
    const int64_t chunks = row_chunks(args.offsets, r);
    if (chunks == 1) continue;  // finished by row_backward_kernel
    int64_t local;
    const int mat = args.ranges.locate(r, &local);
    scalar_t* dst = args.out[mat] + local * dim;
    const acc_t inv_r = args.inv[r];
    if (inv_r == acc_t(0)) {
      for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = scalar_t(0);
      continue;
    }
    const acc_t* first = slots + (plan.slot_end[r] - chunks) * dim;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
      acc_t g = first[i];
      for (int64_t j = 1; j < chunks; ++j) g += first[j * dim + i];
      grad[i] = g;
    }
    apply_normalization(args.layout.row_ptr(mat, local), inv_r, grad, dim, dst, partial);
  }
}

// The backward keeps one row's gradient in dynamic shared memory next to the kernels' static
// shared memory, within the 48 KiB a launch gets without an opt-in. Checked in the forward already,
// so a too-wide embedding fails before any work, not in the middle of backward. The static part is
// read from the compiled kernels, so the check cannot drift from them: 32 B (64 B for float64) in
// the sm_80 build; nvcc 13's sm_90 build reports 1 KiB more per kernel, which is counted too.
template <typename scalar_t, typename acc_t>
int64_t max_dim() {
  static const int64_t value = [] {
    int64_t bytes = static_cast<int64_t>(kMaxSharedBytes);
    for (const void* f : {reinterpret_cast<const void*>(&row_backward_kernel<scalar_t, acc_t>),
                          reinterpret_cast<const void*>(&row_finish_kernel<scalar_t, acc_t>)}) {
      cudaFuncAttributes attr{};
      C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, f));
      bytes = std::min<int64_t>({bytes, static_cast<int64_t>(kMaxSharedBytes - attr.sharedSizeBytes),
                                 static_cast<int64_t>(attr.maxDynamicSharedSizeBytes)});
    }
    return bytes / static_cast<int64_t>(sizeof(acc_t));
  }();
  return value;
}

template <typename scalar_t, typename acc_t>
void check_dim_fits(int64_t dim) {
  const int64_t limit = max_dim<scalar_t, acc_t>();
  TORCH_CHECK(dim <= limit, "the CUDA triplet loss supports embeddings of at most ", limit,
              " dimensions for this dtype, got ", dim);
}

unsigned blocks_for(int64_t work, int64_t per_block) {
  const int64_t blocks = (work + per_block - 1) / per_block;
  return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, 65535L * 64));
}

template <typename scalar_t>
LossForward forward_impl(const LossInputs& in, double margin) {
  using acc_t = at::opmath_type<scalar_t>;
  check_dim_fits<scalar_t, acc_t>(in.dim);
  const auto acc_opts = in.img.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto layout = in.layout<scalar_t>();
  at::Tensor inv_norms = at::empty({in.total_rows}, acc_opts);
  at::Tensor nonfinite = at::zeros({}, in.img.options().dtype(at::kInt));
  if (in.total_rows > 0) {
    inverse_norms_kernel<scalar_t, acc_t>
        <<<blocks_for(in.total_rows, kWarpsPerBlock), kWarpsPerBlock * kWarp, 0, stream>>>(
            layout, in.row_ranges(), in.total_rows, inv_norms.data_ptr<acc_t>(),
            nonfinite.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  check_indices_and_rows(in, nonfinite);

  at::Tensor loss_img = at::empty({in.triplets}, acc_opts);
  at::Tensor loss_txt = at::empty({in.triplets}, acc_opts);
  at::Tensor active = at::empty({in.triplets}, in.anchor.options().dtype(at::kByte));
  if (in.triplets > 0) {
    triplet_forward_kernel<scalar_t, acc_t>
        <<<blocks_for(in.triplets, kWarpsPerBlock), kWarpsPerBlock * kWarp, 0, stream>>>(
            layout, inv_norms.data_ptr<acc_t>(), in.anchor.data_ptr<int64_t>(),
            in.positive.data_ptr<int64_t>(), in.negative.data_ptr<int64_t>(), in.triplets,
            static_cast<acc_t>(margin), loss_img.data_ptr<acc_t>(), loss_txt.data_ptr<acc_t>(),
            active.data_ptr<uint8_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {loss_img, loss_txt, active, inv_norms};
}

template <typename scalar_t>
void backward_impl(const BackwardSetup& s) {
  const LossInputs& in = s.in;
  using acc_t = at::opmath_type<scalar_t>;
  check_dim_fits<scalar_t, acc_t>(in.dim);
  const int64_t rows = in.total_rows;
  if (rows == 0) return;
  const size_t smem = static_cast<size_t>(in.dim) * sizeof(acc_t);
  const auto stream = c10::cuda::getCurrentCUDAStream();

  // The chunk layout, with tensor ops on the device (no sync): see ChunkPlan.
  const at::Tensor& offsets = s.plan.offsets;
  const at::Tensor counts = offsets.slice(0, 1) - offsets.slice(0, 0, rows);
  const at::Tensor chunks = at::where(counts.gt(kChunk), counts.add(kChunk - 1).div(kChunk, "floor"),
                                      at::ones_like(counts));
  const at::Tensor chunk_end = chunks.cumsum(0);
  const at::Tensor slot_end = at::where(chunks.gt(1), chunks, at::zeros_like(chunks)).cumsum(0);
  const int64_t entries = s.plan.codes.size(0);
  const int64_t capacity = rows + (entries + kChunk - 1) / kChunk;
  // a split row has n > kChunk entries and ceil(n / kChunk) < 2n / kChunk chunks
  const int64_t slot_capacity = std::max<int64_t>(1, (2 * entries + kChunk - 1) / kChunk);
  at::Tensor chunk_row = at::full({capacity}, -1, offsets.options());
  at::Tensor slots = at::empty({slot_capacity, in.dim}, in.img.options().dtype(in.acc_type()));
  chunk_rows_kernel<<<blocks_for(rows, kRowThreads), kRowThreads, 0, stream>>>(
      offsets.data_ptr<int64_t>(), chunk_end.data_ptr<int64_t>(), rows, chunk_row.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const auto args = s.view<scalar_t>();
  const ChunkPlan plan{chunk_row.data_ptr<int64_t>(), chunk_end.data_ptr<int64_t>(),
                       slot_end.data_ptr<int64_t>(), capacity};
  row_backward_kernel<scalar_t, acc_t><<<blocks_for(capacity, 1), kRowThreads, smem, stream>>>(
      args, plan, slots.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  row_finish_kernel<scalar_t, acc_t><<<blocks_for(rows, 1), kRowThreads, smem, stream>>>(
      args, plan, slots.data_ptr<acc_t>(), rows);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

LossForward triplet_loss_forward_cuda(const at::Tensor& img, const at::Tensor& txt,
                                      const std::optional<at::Tensor>& cand_img,
                                      const std::optional<at::Tensor>& cand_txt,
                                      const at::Tensor& anchor, const at::Tensor& positive,
                                      const at::Tensor& negative, double margin) {
  const auto in = prepare_inputs(img, txt, cand_img, cand_txt, anchor, positive, negative);
  check_margin(margin);
  TORCH_CHECK(in.img.is_cuda(), "triplet_loss_forward_cuda got tensors on ", in.img.device());
  const c10::cuda::CUDAGuard guard(in.img.device());
  LossForward result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.img.scalar_type(),
                                  "triplet_loss_forward_cuda",
                                  [&] { result = forward_impl<scalar_t>(in, margin); });
  return result;
}

LossBackward triplet_loss_backward_cuda(const at::Tensor& grad_loss_img,
                                       const at::Tensor& grad_loss_txt, const at::Tensor& img,
                                       const at::Tensor& txt,
                                       const std::optional<at::Tensor>& cand_img,
                                       const std::optional<at::Tensor>& cand_txt,
                                       const at::Tensor& anchor, const at::Tensor& positive,
                                       const at::Tensor& negative, const at::Tensor& active,
                                       const at::Tensor& inv_norms) {
  TORCH_CHECK(img.is_cuda(), "triplet_loss_backward_cuda got tensors on ", img.device());
  const c10::cuda::CUDAGuard guard(img.device());
  auto s = prepare_backward(grad_loss_img, grad_loss_txt, img, txt, cand_img, cand_txt, anchor,
                            positive, negative, active, inv_norms, /*counting_plan=*/false);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.in.img.scalar_type(),
                                  "triplet_loss_backward_cuda", [&] {
                                    backward_impl<scalar_t>(s);
                                  });
  return {s.out[0], s.out[1], s.out[2], s.out[3]};
}

}  // namespace medtrim
