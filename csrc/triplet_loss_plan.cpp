// Argument checks and the gradient plan of the triplet loss (see triplet_loss_plan.h).
#include "triplet_loss_plan.h"

#include <cmath>
#include <vector>

namespace medtrim {
namespace loss {
namespace {

void check_embedding(const char* name, const at::Tensor& x, const at::Tensor& like) {
  TORCH_CHECK(x.dim() == 2, name, " must be 2-D (rows, dim), got shape ", x.sizes());
  TORCH_CHECK(x.scalar_type() == like.scalar_type(), name, " must have the dtype of img (",
              like.scalar_type(), "), got ", x.scalar_type());
  TORCH_CHECK(x.device() == like.device(), name, " is on ", x.device(), " but img is on ",
              like.device());
  TORCH_CHECK(x.size(1) == like.size(1), name, " has dimension ", x.size(1), " but img has ",
              like.size(1));
}

void check_index(const char* name, const at::Tensor& idx, int64_t t, const at::Tensor& like) {
  TORCH_CHECK(idx.scalar_type() == at::kLong, name, " must be int64, got ", idx.scalar_type());
  TORCH_CHECK(idx.dim() == 1 && idx.size(0) == t, name, " must have shape (", t, ",), got ",
              idx.sizes());
  TORCH_CHECK(idx.device() == like.device(), name, " is on ", idx.device(), " but img is on ",
              like.device());
}

at::Tensor out_of_range(const at::Tensor& idx, int64_t rows) {
  return at::logical_or(idx.lt(-1), idx.ge(rows)).any();
}

}  // namespace

at::ScalarType LossInputs::acc_type() const {
  return img.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

RowRanges LossInputs::row_ranges() const {
  RowRanges ranges{};
  ranges.count = shared ? 2 : 4;
  const int64_t rows[4] = {n, n, m, m};
  for (int k = 0; k < ranges.count; ++k) {
    ranges.begin[k] = base[k];
    ranges.end[k] = base[k] + rows[k];
  }
  return ranges;
}

LossInputs prepare_inputs(const at::Tensor& img, const at::Tensor& txt,
                          const std::optional<at::Tensor>& cand_img,
                          const std::optional<at::Tensor>& cand_txt, const at::Tensor& anchor,
                          const at::Tensor& positive, const at::Tensor& negative) {
  TORCH_CHECK(img.dim() == 2, "img must be 2-D (N, dim), got shape ", img.sizes());
  const auto dt = img.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble,
              "img must be float32, float16, bfloat16 or float64, got ", dt);
  TORCH_CHECK(img.size(1) >= 1, "embeddings need at least one dimension, got img of shape ",
              img.sizes());
  check_embedding("txt", txt, img);
  TORCH_CHECK(txt.size(0) == img.size(0), "img and txt must have the same number of rows, got ",
              img.size(0), " and ", txt.size(0));
  TORCH_CHECK(cand_img.has_value() == cand_txt.has_value(),
              "pass both cand_img and cand_txt, or neither");
  LossInputs in;
  in.img = img.contiguous();
  in.txt = txt.contiguous();
  in.shared = !cand_img.has_value();
  if (in.shared) {
    in.cand_img = in.img;
    in.cand_txt = in.txt;
  } else {
    check_embedding("cand_img", *cand_img, img);
    check_embedding("cand_txt", *cand_txt, img);
    TORCH_CHECK(cand_img->size(0) == cand_txt->size(0),
                "cand_img and cand_txt must have the same number of rows, got ", cand_img->size(0),
                " and ", cand_txt->size(0));
    in.cand_img = cand_img->contiguous();
    in.cand_txt = cand_txt->contiguous();
  }
  const int64_t t = anchor.dim() == 1 ? anchor.size(0) : -1;
  TORCH_CHECK(anchor.dim() == 1, "anchor must be 1-D (T,), got shape ", anchor.sizes());
  check_index("anchor", anchor, t, img);
  check_index("positive", positive, t, img);
  check_index("negative", negative, t, img);
  in.anchor = anchor.contiguous();
  in.positive = positive.contiguous();
  in.negative = negative.contiguous();
  in.n = img.size(0);
  in.m = in.cand_img.size(0);
  in.dim = img.size(1);
  in.triplets = t;
  if (in.shared) {
    in.base = {0, in.n, 0, in.n};
    in.total_rows = 2 * in.n;
  } else {
    in.base = {0, in.n, 2 * in.n, 2 * in.n + in.m};
    in.total_rows = 2 * (in.n + in.m);
  }
  return in;
}

void check_margin(double margin) {
  TORCH_CHECK(std::isfinite(margin), "margin must be finite, got ", margin);
}

void check_indices_and_rows(const LossInputs& in, const at::Tensor& nonfinite_rows) {
  const auto flags = at::stack({out_of_range(in.anchor, in.n), out_of_range(in.positive, in.m),
                                out_of_range(in.negative, in.m),
                                nonfinite_rows.reshape({}).ne(0)})
                         .cpu();  // the one synchronisation of the op
  const bool* f = flags.data_ptr<bool>();
  TORCH_CHECK(!f[0], "anchor has an index outside [-1, ", in.n, ") (img has ", in.n, " rows)");
  const char* cand = in.shared ? "img" : "cand_img";
  TORCH_CHECK(!f[1], "positive has an index outside [-1, ", in.m, ") (", cand, " has ", in.m,
              " rows)");
  TORCH_CHECK(!f[2], "negative has an index outside [-1, ", in.m, ") (", cand, " has ", in.m,
              " rows)");
  TORCH_CHECK(!f[3], "img, txt", in.shared ? "" : ", cand_img or cand_txt",
              " contain a row with NaN or Inf (or too large to normalize)");
}

void check_backward_inputs(const LossInputs& in, const at::Tensor& grad_img,
                           const at::Tensor& grad_txt, const at::Tensor& active,
                           const at::Tensor& inv_norms) {
  const auto acc = in.acc_type();
  for (const auto& [name, g] : {std::pair<const char*, const at::Tensor&>{"grad_loss_img", grad_img},
                                {"grad_loss_txt", grad_txt}}) {
    TORCH_CHECK(g.dim() == 1 && g.size(0) == in.triplets, name, " must have shape (",
                in.triplets, ",), got ", g.sizes());
    TORCH_CHECK(g.scalar_type() == acc, name, " must be ", acc, ", got ", g.scalar_type());
    TORCH_CHECK(g.device() == in.img.device(), name, " must be on ", in.img.device());
  }
  TORCH_CHECK(active.scalar_type() == at::kByte && active.dim() == 1 &&
                  active.size(0) == in.triplets && active.device() == in.img.device(),
              "active must be uint8 (", in.triplets, ",) on ", in.img.device());
  TORCH_CHECK(inv_norms.scalar_type() == acc && inv_norms.dim() == 1 &&
                  inv_norms.size(0) == in.total_rows && inv_norms.device() == in.img.device(),
              "inv_norms must be ", acc, " (", in.total_rows, ",) on ", in.img.device());
}

GradientPlan build_gradient_plan(const LossInputs& in) {
  const auto& b = in.base;
  // -1 marks no triplet; an index out of range (only possible when the backward op is called
  // directly with indices its forward never saw) is dropped here too, on the device
  auto in_range = [](const at::Tensor& idx, int64_t rows) { return at::logical_and(idx.ge(0), idx.lt(rows)); };
  const at::Tensor valid = at::logical_and(
      at::logical_and(in_range(in.anchor, in.n), in_range(in.positive, in.m)), in_range(in.negative, in.m));
  // (T, 6) global row of every (triplet, role); flattening gives code = triplet * 6 + role
  at::Tensor keys = at::stack({in.anchor + b[kImg], in.positive + b[kCandImg],
                               in.negative + b[kCandImg], in.anchor + b[kTxt],
                               in.positive + b[kCandTxt], in.negative + b[kCandTxt]},
                              1);
  keys = at::where(valid.unsqueeze(1), keys, at::full({}, in.total_rows, keys.options()));
  auto [sorted, order] = at::sort(keys.reshape({-1}), /*stable=*/true, /*dim=*/0,
                                  /*descending=*/false);
  const at::Tensor boundaries = at::arange(in.total_rows + 1, keys.options());
  return {at::searchsorted(sorted, boundaries), order};
}

GradientPlan build_gradient_plan_counting(const LossInputs& in) {
  TORCH_CHECK(in.anchor.device().is_cpu(), "build_gradient_plan_counting needs CPU tensors");
  const int64_t *A = in.anchor.data_ptr<int64_t>(), *P = in.positive.data_ptr<int64_t>(),
                *N = in.negative.data_ptr<int64_t>();
  const auto& b = in.base;
  auto rows_of = [&](int64_t t, int64_t* key) {
    key[kAnchorImg] = A[t] + b[kImg];
    key[kPosImg] = P[t] + b[kCandImg];
    key[kNegImg] = N[t] + b[kCandImg];
    key[kAnchorTxt] = A[t] + b[kTxt];
    key[kPosTxt] = P[t] + b[kCandTxt];
    key[kNegTxt] = N[t] + b[kCandTxt];
  };
  at::Tensor offsets = at::zeros({in.total_rows + 1}, in.anchor.options());
  int64_t* off = offsets.data_ptr<int64_t>();
  int64_t key[kRoles];
  for (int64_t t = 0; t < in.triplets; ++t) {
    if (A[t] < 0 || P[t] < 0 || N[t] < 0) continue;
    rows_of(t, key);
    for (int r = 0; r < kRoles; ++r) ++off[key[r] + 1];
  }
  for (int64_t r = 0; r < in.total_rows; ++r) off[r + 1] += off[r];
  at::Tensor codes = at::empty({off[in.total_rows]}, in.anchor.options());
  int64_t* out = codes.data_ptr<int64_t>();
  std::vector<int64_t> cursor(off, off + in.total_rows);
  for (int64_t t = 0; t < in.triplets; ++t) {  // ascending (triplet, role): a stable counting sort
    if (A[t] < 0 || P[t] < 0 || N[t] < 0) continue;
    rows_of(t, key);
    for (int r = 0; r < kRoles; ++r) out[cursor[key[r]]++] = t * kRoles + r;
  }
  return {offsets, codes};
}

std::tuple<at::Tensor, at::Tensor> gradient_plan_op(
    const at::Tensor& img, const at::Tensor& txt, const std::optional<at::Tensor>& cand_img,
    const std::optional<at::Tensor>& cand_txt, const at::Tensor& anchor, const at::Tensor& positive,
    const at::Tensor& negative, bool counting) {
  const auto in = prepare_inputs(img, txt, cand_img, cand_txt, anchor, positive, negative);
  check_indices_and_rows(in, at::zeros({}, in.anchor.options()));
  TORCH_CHECK(!counting || in.anchor.device().is_cpu(), "the counting plan runs on the CPU only");
  const auto plan = counting ? build_gradient_plan_counting(in) : build_gradient_plan(in);
  return {plan.offsets, plan.codes};
}

BackwardSetup prepare_backward(const at::Tensor& grad_loss_img, const at::Tensor& grad_loss_txt,
                               const at::Tensor& img, const at::Tensor& txt,
                               const std::optional<at::Tensor>& cand_img,
                               const std::optional<at::Tensor>& cand_txt,
                               const at::Tensor& anchor, const at::Tensor& positive,
                               const at::Tensor& negative, const at::Tensor& active,
                               const at::Tensor& inv_norms, bool counting_plan) {
  BackwardSetup s;
  s.in = prepare_inputs(img, txt, cand_img, cand_txt, anchor, positive, negative);
  const LossInputs& in = s.in;
  check_backward_inputs(in, grad_loss_img, grad_loss_txt, active, inv_norms);
  // The forward checked these indices (one sync). On the CPU checking again is free; on a GPU it
  // would cost a second sync per step, so there the plan itself keeps out-of-range triplets out
  // (build_gradient_plan), and the backward cannot read out of bounds even when called directly.
  if (in.anchor.device().is_cpu()) check_indices_and_rows(in, at::zeros({}, in.anchor.options()));
  s.plan = counting_plan ? build_gradient_plan_counting(in) : build_gradient_plan(in);
  s.grad_img = grad_loss_img.contiguous();
  s.grad_txt = grad_loss_txt.contiguous();
  s.active = active.contiguous();
  s.inv_norms = inv_norms.contiguous();
  s.out[0] = at::empty_like(in.img);
  s.out[1] = at::empty_like(in.txt);
  s.out[2] = in.shared ? in.img.new_empty({0, in.dim}) : at::empty_like(in.cand_img);
  s.out[3] = in.shared ? in.txt.new_empty({0, in.dim}) : at::empty_like(in.cand_txt);
  return s;
}

}  // namespace loss
}  // namespace medtrim
