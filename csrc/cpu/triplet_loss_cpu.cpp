// CPU kernels of the fused multimodal triplet loss.
//
// forward:  a norm pass over every row, then one pass over the triplets that reads the six rows of
//           each triplet once and forms all eight dot products together (no gathered copies).
// backward: one pass over the *output rows* following the gradient plan: each row sums the
//           contributions of the entries that touch it into a private buffer, then applies the
//           normalization's Jacobian once. Rows are independent, so threads never share a write and
//           the result is deterministic (no atomics, fixed summation order).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <cmath>
#include <vector>

#include "triplet_loss.h"
#include "triplet_loss_ops.h"
#include "triplet_loss_plan.h"

namespace medtrim {
namespace {

using namespace loss;

// Independent accumulator lanes: lets the compiler vectorize the reductions without reassociating
// (no -ffast-math needed); 4 lanes x 8 dot products fit the SSE register file.
constexpr int kLanes = 4;

template <typename scalar_t, typename acc_t>
acc_t squared_norm(const scalar_t* x, int64_t dim) {
  acc_t lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= dim; i += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      const acc_t v = static_cast<acc_t>(x[i + j]);
      lane[j] += v * v;
    }
  acc_t s = 0;
  for (; i < dim; ++i) s += static_cast<acc_t>(x[i]) * static_cast<acc_t>(x[i]);
  for (int j = 0; j < kLanes; ++j) s += lane[j];
  return s;
}

template <typename scalar_t, typename acc_t>
acc_t dot(const scalar_t* x, const acc_t* y, int64_t dim) {
  acc_t lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= dim; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lane[j] += static_cast<acc_t>(x[i + j]) * y[i + j];
  acc_t s = 0;
  for (; i < dim; ++i) s += static_cast<acc_t>(x[i]) * y[i];
  for (int j = 0; j < kLanes; ++j) s += lane[j];
  return s;
}

// The eight dot products of one triplet (order of loss::Cos) in one sweep over the six rows.
template <typename scalar_t, typename acc_t>
void triplet_dots(const scalar_t* const rows[kTripletRows], int64_t dim, acc_t* out) {
  acc_t lane[kNumCos][kLanes] = {};
  auto step = [&](int64_t k, acc_t* s, int stride) {
    acc_t x[kTripletRows];
    for (int r = 0; r < kTripletRows; ++r) x[r] = static_cast<acc_t>(rows[r][k]);
    add_products(x, s, stride);
  };
  int64_t i = 0;
  for (; i + kLanes <= dim; i += kLanes)
    for (int j = 0; j < kLanes; ++j) step(i + j, &lane[0][j], kLanes);
  acc_t tail[kNumCos] = {};
  for (; i < dim; ++i) step(i, tail, 1);
  for (int c = 0; c < kNumCos; ++c) {
    acc_t s = tail[c];
    for (int j = 0; j < kLanes; ++j) s += lane[c][j];
    out[c] = s;
  }
}

template <typename scalar_t, typename acc_t>
int64_t inverse_norms(const LossInputs& in, acc_t* inv_norms) {
  const auto layout = in.layout<scalar_t>();
  const RowRanges ranges = in.row_ranges();
  std::atomic<int64_t> nonfinite{0};
  at::parallel_for(0, in.total_rows, std::max<int64_t>(1, 16384 / in.dim), [&](int64_t b, int64_t e) {
    int64_t bad = 0;
    for (int64_t r = b; r < e; ++r) {
      int64_t local;
      const int mat = ranges.locate(r, &local);
      const acc_t sq = squared_norm<scalar_t, acc_t>(layout.row_ptr(mat, local), in.dim);
      const acc_t norm = std::sqrt(sq);
      if (!is_finite(norm)) ++bad;
      inv_norms[r] = inverse_norm(norm);
    }
    if (bad) nonfinite += bad;
  });
  return nonfinite.load();
}

template <typename scalar_t>
LossForward forward_impl(const LossInputs& in, double margin) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto acc_opts = in.img.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  at::Tensor inv_norms = at::empty({in.total_rows}, acc_opts);
  const int64_t nonfinite = inverse_norms<scalar_t, acc_t>(in, inv_norms.data_ptr<acc_t>());
  check_indices_and_rows(in, at::scalar_tensor(nonfinite, in.anchor.options()));

  at::Tensor loss_img = at::empty({in.triplets}, acc_opts);
  at::Tensor loss_txt = at::empty({in.triplets}, acc_opts);
  at::Tensor active = at::empty({in.triplets}, in.anchor.options().dtype(at::kByte));
  const auto layout = in.layout<scalar_t>();
  const acc_t* inv = inv_norms.data_ptr<acc_t>();
  const int64_t *A = in.anchor.data_ptr<int64_t>(), *P = in.positive.data_ptr<int64_t>(),
                *N = in.negative.data_ptr<int64_t>();
  acc_t *li = loss_img.data_ptr<acc_t>(), *lt = loss_txt.data_ptr<acc_t>();
  uint8_t* act = active.data_ptr<uint8_t>();
  const acc_t m = static_cast<acc_t>(margin);

  at::parallel_for(0, in.triplets, std::max<int64_t>(1, 4096 / in.dim), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t a = A[t], p = P[t], n = N[t];
      if (a < 0 || p < 0 || n < 0) {
        li[t] = lt[t] = acc_t(0);
        act[t] = 0;
        continue;
      }
      const scalar_t* rows[kTripletRows];
      triplet_rows(layout, a, p, n, rows);
      acc_t cos[kNumCos];
      triplet_dots<scalar_t, acc_t>(rows, in.dim, cos);
      dots_to_cosines(layout, inv, a, p, n, cos);
      act[t] = triplet_losses(cos, m, &li[t], &lt[t]);
    }
  });
  return {loss_img, loss_txt, active, inv_norms};
}

template <typename scalar_t>
void backward_impl(const BackwardSetup& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto v = s.view<scalar_t>();
  const int64_t dim = s.in.dim;

  at::parallel_for(0, s.in.total_rows, std::max<int64_t>(1, 4096 / dim), [&](int64_t b, int64_t e) {
    std::vector<acc_t> grad(dim);  // gradient w.r.t. the normalized row
    for (int64_t r = b; r < e; ++r) {
      int64_t local;
      const int mat = v.ranges.locate(r, &local);
      scalar_t* dst = v.out[mat] + local * dim;
      const acc_t inv_r = v.inv[r];
      bool any = false;
      if (inv_r != acc_t(0)) {
        std::fill(grad.begin(), grad.end(), acc_t(0));
        for (int64_t k = v.offsets[r]; k < v.offsets[r + 1]; ++k) {
          const scalar_t* src[4];
          acc_t coef[4];
          const int count = v.entry_sources(k, src, coef);
          for (int j = 0; j < count; ++j)
            for (int64_t i = 0; i < dim; ++i) grad[i] += coef[j] * static_cast<acc_t>(src[j][i]);
          any = any || count > 0;
        }
      }
      if (!any) {
        std::fill(dst, dst + dim, scalar_t(0));
        continue;
      }
      // d/dx of normalize(x) applied to grad: inv * grad - inv^3 * (x . grad) * x
      const scalar_t* x = v.layout.row_ptr(mat, local);
      const acc_t along = dot<scalar_t, acc_t>(x, grad.data(), dim) * inv_r * inv_r * inv_r;
      for (int64_t i = 0; i < dim; ++i)
        dst[i] = static_cast<scalar_t>(inv_r * grad[i] - along * static_cast<acc_t>(x[i]));
    }
  });
}

}  // namespace

LossForward triplet_loss_forward_cpu(const at::Tensor& img, const at::Tensor& txt,
                                     const std::optional<at::Tensor>& cand_img,
                                     const std::optional<at::Tensor>& cand_txt,
                                     const at::Tensor& anchor, const at::Tensor& positive,
                                     const at::Tensor& negative, double margin) {
  const auto in = prepare_inputs(img, txt, cand_img, cand_txt, anchor, positive, negative);
  check_margin(margin);
  TORCH_CHECK(in.img.device().is_cpu(), "triplet_loss_forward_cpu got tensors on ", in.img.device());
  LossForward result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.img.scalar_type(),
                                  "triplet_loss_forward_cpu",
                                  [&] { result = forward_impl<scalar_t>(in, margin); });
  return result;
}

LossBackward triplet_loss_backward_cpu(const at::Tensor& grad_loss_img,
                                       const at::Tensor& grad_loss_txt, const at::Tensor& img,
                                       const at::Tensor& txt,
                                       const std::optional<at::Tensor>& cand_img,
                                       const std::optional<at::Tensor>& cand_txt,
                                       const at::Tensor& anchor, const at::Tensor& positive,
                                       const at::Tensor& negative, const at::Tensor& active,
                                       const at::Tensor& inv_norms) {
  TORCH_CHECK(img.device().is_cpu(), "triplet_loss_backward_cpu got tensors on ", img.device());
  auto s = prepare_backward(grad_loss_img, grad_loss_txt, img, txt, cand_img, cand_txt, anchor,
                            positive, negative, active, inv_norms, /*counting_plan=*/true);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.in.img.scalar_type(),
                                  "triplet_loss_backward_cpu", [&] {
                                    backward_impl<scalar_t>(s);
                                  });
  return {s.out[0], s.out[1], s.out[2], s.out[3]};
}

}  // namespace medtrim
