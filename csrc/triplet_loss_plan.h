// Host-side parts of the triplet loss shared by both backends: argument checks, the row layout
// and the gradient plan (which (triplet, role) entries touch each output row). Written with ATen
// tensor ops, so the same code runs for CPU and CUDA tensors.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <array>
#include <optional>
#include <tuple>

#include "triplet_loss.h"

namespace medtrim {
namespace loss {

struct LossInputs {
  at::Tensor img, txt, cand_img, cand_txt;  // contiguous; cand_* alias img/txt when shared
  at::Tensor anchor, positive, negative;    // int64 (T,)
  bool shared = true;                       // positives/negatives index img/txt themselves
  int64_t n = 0, m = 0, dim = 0, triplets = 0, total_rows = 0;
  std::array<int64_t, 4> base{};            // first global row of img, txt, cand_img, cand_txt

  at::ScalarType acc_type() const;  // float32, or float64 for float64 embeddings
  RowRanges row_ranges() const;     // global row -> (matrix, local row)

  template <typename scalar_t>
  Layout<scalar_t> layout() const {
    Layout<scalar_t> l{};
    const at::Tensor* mats[4] = {&img, &txt, &cand_img, &cand_txt};
    for (int k = 0; k < 4; ++k) {
      l.data[k] = mats[k]->data_ptr<scalar_t>();
      l.base[k] = base[k];
    }
    l.dim = dim;
    return l;
  }
};

// Checks shapes, dtypes, devices and the margin (no data is read). Raises naming the argument.
LossInputs prepare_inputs(const at::Tensor& img, const at::Tensor& txt,
                          const std::optional<at::Tensor>& cand_img,
                          const std::optional<at::Tensor>& cand_txt, const at::Tensor& anchor,
                          const at::Tensor& positive, const at::Tensor& negative);

void check_margin(double margin);

// Index ranges (anchor in [-1, N), positive/negative in [-1, M)) and, if given, the count of rows
// whose norm is not finite (written by the norm pass). One device->host copy for all checks.
void check_indices_and_rows(const LossInputs& in, const at::Tensor& nonfinite_rows);

// Per-triplet gradient inputs of the backward op: shapes and dtypes.
void check_backward_inputs(const LossInputs& in, const at::Tensor& grad_img,
                           const at::Tensor& grad_txt, const at::Tensor& active,
                           const at::Tensor& inv_norms);

// CSR over global rows: entries offsets[r] .. offsets[r + 1] of `codes` (triplet * kRoles + role,
// ascending) touch row r. Invalid triplets (any index -1) contribute nothing (the sort-based plan
// keeps their entries after offsets[total_rows], where nothing reads them; it treats an index out
// of range the same way, so a plan never points outside the embeddings).
struct GradientPlan {
  at::Tensor offsets;  // int64 (total_rows + 1,)
  at::Tensor codes;    // int64 (entries,)
};
GradientPlan build_gradient_plan(const LossInputs& in);  // sort-based, any device (used on CUDA)
GradientPlan build_gradient_plan_counting(const LossInputs& in);  // O(T + rows), CPU tensors only

// The plan as an op (medtrim::_triplet_loss_plan), so tests can check that the sort-based plan
// the CUDA backward uses equals the counting plan of the CPU backward.
std::tuple<at::Tensor, at::Tensor> gradient_plan_op(
    const at::Tensor& img, const at::Tensor& txt, const std::optional<at::Tensor>& cand_img,
    const std::optional<at::Tensor>& cand_txt, const at::Tensor& anchor, const at::Tensor& positive,
    const at::Tensor& negative, bool counting);

// Everything the backward kernels need, checked and allocated the same way on both backends:
// the inputs, the plan (counting sort on the CPU, stable sort elsewhere), contiguous per-triplet
// gradients, and the four outputs (the candidate ones empty (0, dim) when candidates are shared).
// Index ranges are checked again on the CPU only: on a GPU that would be a second host sync per
// step (the forward, which autograd always runs first on the same indices, raises for them).
struct BackwardSetup {
  LossInputs in;
  GradientPlan plan;
  at::Tensor grad_img, grad_txt, active, inv_norms;  // per-triplet inputs, contiguous
  at::Tensor out[4];                                  // d img, d txt, d cand_img, d cand_txt

  template <typename scalar_t>
  BackwardView<scalar_t, at::opmath_type<scalar_t>> view() const {
    using acc_t = at::opmath_type<scalar_t>;
    BackwardView<scalar_t, acc_t> v{};
    v.layout = in.layout<scalar_t>();
    v.ranges = in.row_ranges();
    for (int k = 0; k < 4; ++k) v.out[k] = out[k].data_ptr<scalar_t>();
    v.offsets = plan.offsets.data_ptr<int64_t>();
    v.codes = plan.codes.data_ptr<int64_t>();
    v.A = in.anchor.data_ptr<int64_t>();
    v.P = in.positive.data_ptr<int64_t>();
    v.N = in.negative.data_ptr<int64_t>();
    v.grad_img = grad_img.data_ptr<acc_t>();
    v.grad_txt = grad_txt.data_ptr<acc_t>();
    v.inv = inv_norms.data_ptr<acc_t>();
    v.active = active.data_ptr<uint8_t>();
    return v;
  }
};
BackwardSetup prepare_backward(const at::Tensor& grad_loss_img, const at::Tensor& grad_loss_txt,
                               const at::Tensor& img, const at::Tensor& txt,
                               const std::optional<at::Tensor>& cand_img,
                               const std::optional<at::Tensor>& cand_txt,
                               const at::Tensor& anchor, const at::Tensor& positive,
                               const at::Tensor& negative, const at::Tensor& active,
                               const at::Tensor& inv_norms, bool counting_plan);

}  // namespace loss
}  // namespace medtrim
