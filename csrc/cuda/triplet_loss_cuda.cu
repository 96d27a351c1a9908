// CUDA kernels of the fused multimodal triplet loss (same structure as cpu/triplet_loss_cpu.cpp).
//
// forward:  a warp per row computes inverse norms; a warp per triplet reads its six rows once
//           (coalesced, lanes striding over dim) and reduces all eight dot products together.
// backward: a block per output row walks the gradient plan (entries sorted by row, so the sum is
//           in a fixed order: deterministic, no atomics), accumulates the gradient of the
//           normalized row in shared memory, then applies the normalization's Jacobian.
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

// One block per output row; grad (dim values) lives in dynamic shared memory, each thread owning
// the elements i = threadIdx.x + k * blockDim.x, so the accumulation needs no synchronisation.
template <typename scalar_t, typename acc_t>
__global__ void row_backward_kernel(BackwardView<scalar_t, acc_t> args, int64_t total_rows) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* grad = reinterpret_cast<acc_t*>(smem_raw);
  __shared__ acc_t partial[kRowThreads / kWarp];
  const int64_t dim = args.layout.dim;
  for (int64_t r = blockIdx.x; r < total_rows; r += gridDim.x) {
    int64_t local;
    const int mat = args.ranges.locate(r, &local);
    scalar_t* dst = args.out[mat] + local * dim;
    const acc_t inv_r = args.inv[r];
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) grad[i] = acc_t(0);
    bool any = false;  // block-uniform: every thread decodes the same entries
    if (inv_r != acc_t(0)) {
      for (int64_t k = args.offsets[r]; k < args.offsets[r + 1]; ++k) {
        const scalar_t* src[4];
        acc_t coef[4];
        const int count = args.entry_sources(k, src, coef);
        for (int j = 0; j < count; ++j)
          for (int64_t i = threadIdx.x; i < dim; i += blockDim.x)
            grad[i] += coef[j] * static_cast<acc_t>(src[j][i]);
        any = any || count > 0;
      }
    }
    const scalar_t* x = args.layout.row_ptr(mat, local);
    if (!any) {
      for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = scalar_t(0);
      __syncthreads();  // grad is reset by the next row
      continue;
    }
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
    __syncthreads();  // partial and grad are reused by the next row
  }
}

// The backward keeps one row's gradient in shared memory: checked in the forward already, so a
// too-wide embedding fails before any work, not in the middle of backward.
template <typename acc_t>
void check_dim_fits(int64_t dim) {
  TORCH_CHECK(static_cast<size_t>(dim) * sizeof(acc_t) <= kMaxSharedBytes,
              "the CUDA triplet loss supports embeddings of at most ",
              kMaxSharedBytes / sizeof(acc_t), " dimensions for this dtype, got ", dim);
}

unsigned blocks_for(int64_t work, int64_t per_block) {
  const int64_t blocks = (work + per_block - 1) / per_block;
  return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, 65535L * 64));
}

template <typename scalar_t>
LossForward forward_impl(const LossInputs& in, double margin) {
  using acc_t = at::opmath_type<scalar_t>;
  check_dim_fits<acc_t>(in.dim);
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
  check_dim_fits<acc_t>(in.dim);
  const size_t smem = static_cast<size_t>(in.dim) * sizeof(acc_t);
  if (in.total_rows == 0) return;
  const auto args = s.view<scalar_t>();
  row_backward_kernel<scalar_t, acc_t>
      <<<blocks_for(in.total_rows, 1), kRowThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
          args, in.total_rows);
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
