// Per-triplet math of the multimodal triplet loss, shared by the CPU and CUDA kernels.
//
// For a triplet (a, p, n) with image rows a_i, p_i, n_i and text rows a_t, p_t, n_t, d = 1 - cos:
//   L_img = ([d(a_i,p_i) - d(a_i,n_i) + m]_+ + [d(a_i,p_t) - d(a_i,n_t) + m]_+) / 2
//   L_txt = ([d(a_t,p_t) - d(a_t,n_t) + m]_+ + [d(a_t,p_i) - d(a_t,n_i) + m]_+) / 2
// Cosines are dot products times per-row inverse norms; a row whose norm is <= kNormEps has inverse
// norm 0, i.e. cosine 0 with everything and no gradient (its direction is undefined).
//
// The backward pass is organised per *output row*: every (triplet, role) that touches a row adds a
// linear combination of up to four other normalized rows to that row's gradient. `role_sources`
// spells those combinations out once for both backends.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace medtrim {
namespace loss {

constexpr double kNormEps = 1e-8;  // as torch.nn.functional.cosine_similarity

// The matrices a triplet reads: anchors come from kImg/kTxt, positives and negatives from the
// candidate matrices (which are kImg/kTxt themselves when no separate candidates are given).
enum Matrix : int { kImg = 0, kTxt = 1, kCandImg = 2, kCandTxt = 3 };

// The six places a row can take in a triplet; code of an entry = triplet * kRoles + role.
enum Role : int { kAnchorImg = 0, kPosImg, kNegImg, kAnchorTxt, kPosTxt, kNegTxt, kRoles };

MT_HD int role_matrix(int role) {
  constexpr int m[kRoles] = {kImg, kCandImg, kCandImg, kTxt, kCandTxt, kCandTxt};
  return m[role];
}

// Bits of `active`: which hinge terms are > 0 (they alone carry gradient).
enum Term : uint8_t { kImgImg = 1, kImgTxt = 2, kTxtTxt = 4, kTxtImg = 8 };

// Cosines of one triplet, in this order.
enum Cos : int { kAiPi = 0, kAiNi, kAiPt, kAiNt, kAtPt, kAtNt, kAtPi, kAtNi, kNumCos };

template <typename acc_t>
MT_HD acc_t hinge_term(acc_t cos_pos, acc_t cos_neg, acc_t margin, bool* active) {
  const acc_t t = ((acc_t(1) - cos_pos) - (acc_t(1) - cos_neg)) + margin;
  *active = t > acc_t(0);
  return *active ? t : acc_t(0);
}

// Losses of one valid triplet from its eight cosines; returns the active-term bits.
template <typename acc_t>
MT_HD uint8_t triplet_losses(const acc_t* cos, acc_t margin, acc_t* loss_img, acc_t* loss_txt) {
  bool on[4];
  const acc_t h1 = hinge_term(cos[kAiPi], cos[kAiNi], margin, &on[0]);
  const acc_t h2 = hinge_term(cos[kAiPt], cos[kAiNt], margin, &on[1]);
  const acc_t h3 = hinge_term(cos[kAtPt], cos[kAtNt], margin, &on[2]);
  const acc_t h4 = hinge_term(cos[kAtPi], cos[kAtNi], margin, &on[3]);
  *loss_img = (h1 + h2) * acc_t(0.5);
  *loss_txt = (h3 + h4) * acc_t(0.5);
  return static_cast<uint8_t>((on[0] ? kImgImg : 0) | (on[1] ? kImgTxt : 0) |
                              (on[2] ? kTxtTxt : 0) | (on[3] ? kTxtImg : 0));
}

// d(loss)/d(hinge term) for each of the four terms of one triplet: the incoming per-triplet
// gradients, halved (each loss averages two terms), where the term is active.
template <typename acc_t>
struct TermGrads {
  acc_t img_img, img_txt, txt_txt, txt_img;
};

template <typename acc_t>
MT_HD TermGrads<acc_t> term_grads(acc_t grad_img, acc_t grad_txt, uint8_t active) {
  const acc_t gi = grad_img * acc_t(0.5), gt = grad_txt * acc_t(0.5);
  return {(active & kImgImg) ? gi : acc_t(0), (active & kImgTxt) ? gi : acc_t(0),
          (active & kTxtTxt) ? gt : acc_t(0), (active & kTxtImg) ? gt : acc_t(0)};
}

// The gradient that entry (triplet, role) sends to its row, with respect to the row's *normalized*
// vector: sum_j coef[j] * normalized(matrix[j] row[j]). Returns the number of sources (2 or 4).
// Derivation: t = cos(x, n) - cos(x, p) + m gives d t/d x^ = n^ - p^, d t/d p^ = -x^, d t/d n^ = x^.
template <typename acc_t>
MT_HD int role_sources(int role, int64_t a, int64_t p, int64_t n, const TermGrads<acc_t>& g,
                       int* matrix, int64_t* row, acc_t* coef) {
  auto set = [&](int j, int mat, int64_t r, acc_t c) {
    matrix[j] = mat;
    row[j] = r;
    coef[j] = c;
  };
  switch (role) {
    case kAnchorImg:  // image-image and image-text terms of the image loss
      set(0, kCandImg, n, g.img_img);
      set(1, kCandImg, p, -g.img_img);
      set(2, kCandTxt, n, g.img_txt);
      set(3, kCandTxt, p, -g.img_txt);
      return 4;
    case kAnchorTxt:  // text-text and text-image terms of the text loss
      set(0, kCandTxt, n, g.txt_txt);
      set(1, kCandTxt, p, -g.txt_txt);
      set(2, kCandImg, n, g.txt_img);
      set(3, kCandImg, p, -g.txt_img);
      return 4;
    case kPosImg:
      set(0, kImg, a, -g.img_img);
      set(1, kTxt, a, -g.txt_img);
      return 2;
    case kNegImg:
      set(0, kImg, a, g.img_img);
      set(1, kTxt, a, g.txt_img);
      return 2;
    case kPosTxt:
      set(0, kImg, a, -g.img_txt);
      set(1, kTxt, a, -g.txt_txt);
      return 2;
    default:  // kNegTxt
      set(0, kImg, a, g.img_txt);
      set(1, kTxt, a, g.txt_txt);
      return 2;
  }
}

// Where each matrix's rows live: `base[m]` = first global row id (the index into the inverse-norm
// vector and the gradient plan). With shared candidates base[kCandImg] == base[kImg] etc.
template <typename scalar_t>
struct Layout {
  const scalar_t* data[4];
  int64_t base[4];
  int64_t dim;

  MT_HD const scalar_t* row_ptr(int matrix, int64_t row) const { return data[matrix] + row * dim; }
  MT_HD int64_t global_row(int matrix, int64_t row) const { return base[matrix] + row; }
};

// Global row r -> (matrix, local row), over the distinct matrices (2 when candidates are shared).
struct RowRanges {
  int count;
  int64_t begin[4], end[4];

  MT_HD int locate(int64_t r, int64_t* local) const {
    for (int k = 0; k < count; ++k)
      if (r < end[k]) {
        *local = r - begin[k];
        return k;
      }
    *local = 0;
    return 0;  // unreachable for r < total rows
  }
};

// x - x is 0 for every finite x, NaN for NaN and +-Inf (no <cmath>/CUDA overload juggling).
template <typename acc_t>
MT_HD bool is_finite(acc_t x) {
  return x - x == acc_t(0);
}

// 1 / norm, or 0 for a zero (<= kNormEps) or non-finite norm.
template <typename acc_t>
MT_HD acc_t inverse_norm(acc_t norm) {
  return (is_finite(norm) && norm > acc_t(kNormEps)) ? acc_t(1) / norm : acc_t(0);
}

// The six rows a triplet reads, in this order.
enum TripletRow : int { kRowAi = 0, kRowPi, kRowNi, kRowAt, kRowPt, kRowNt, kTripletRows };

template <typename scalar_t>
MT_HD void triplet_rows(const Layout<scalar_t>& l, int64_t a, int64_t p, int64_t n,
                        const scalar_t** rows) {
  rows[kRowAi] = l.row_ptr(kImg, a);
  rows[kRowPi] = l.row_ptr(kCandImg, p);
  rows[kRowNi] = l.row_ptr(kCandImg, n);
  rows[kRowAt] = l.row_ptr(kTxt, a);
  rows[kRowPt] = l.row_ptr(kCandTxt, p);
  rows[kRowNt] = l.row_ptr(kCandTxt, n);
}

// Adds the eight products of one element of the six rows (x, in TripletRow order) to the dot
// products s[c * stride] (order of Cos).
template <typename acc_t>
MT_HD void add_products(const acc_t* x, acc_t* s, int stride) {
  s[kAiPi * stride] += x[kRowAi] * x[kRowPi];
  s[kAiNi * stride] += x[kRowAi] * x[kRowNi];
  s[kAiPt * stride] += x[kRowAi] * x[kRowPt];
  s[kAiNt * stride] += x[kRowAi] * x[kRowNt];
  s[kAtPt * stride] += x[kRowAt] * x[kRowPt];
  s[kAtNt * stride] += x[kRowAt] * x[kRowNt];
  s[kAtPi * stride] += x[kRowAt] * x[kRowPi];
  s[kAtNi * stride] += x[kRowAt] * x[kRowNi];
}

// Scales the eight dot products of a triplet into cosines with the rows' inverse norms.
template <typename scalar_t, typename acc_t>
MT_HD void dots_to_cosines(const Layout<scalar_t>& l, const acc_t* inv, int64_t a, int64_t p,
                           int64_t n, acc_t* dots) {
  const acc_t ia = inv[l.global_row(kImg, a)], ipi = inv[l.global_row(kCandImg, p)],
              ini = inv[l.global_row(kCandImg, n)], ita = inv[l.global_row(kTxt, a)],
              ipt = inv[l.global_row(kCandTxt, p)], int_ = inv[l.global_row(kCandTxt, n)];
  dots[kAiPi] *= ia * ipi;
  dots[kAiNi] *= ia * ini;
  dots[kAiPt] *= ia * ipt;
  dots[kAiNt] *= ia * int_;
  dots[kAtPt] *= ita * ipt;
  dots[kAtNt] *= ita * int_;
  dots[kAtPi] *= ita * ipi;
  dots[kAtNi] *= ita * ini;
}

// What the backward kernels read: the plan, the triplets, their per-triplet gradients and active
// terms, the inverse row norms, and where each output row goes.
template <typename scalar_t, typename acc_t>
struct BackwardView {
  Layout<scalar_t> layout;
  RowRanges ranges;
  scalar_t* out[4];  // d img, d txt, d cand_img, d cand_txt
  const int64_t *offsets, *codes;
  const int64_t *A, *P, *N;
  const acc_t *grad_img, *grad_txt, *inv;
  const uint8_t* active;

  // The rows that plan entry k adds to its row's gradient and their coefficients, already scaled
  // by the source rows' inverse norms; zero contributions are left out. Returns how many (<= 4).
  MT_HD int entry_sources(int64_t k, const scalar_t** src, acc_t* coef) const {
    const int64_t t = codes[k] / kRoles;
    const int role = static_cast<int>(codes[k] % kRoles);
    if (active[t] == 0) return 0;
    int mat[4];
    int64_t row[4];
    acc_t c[4];
    const int count = role_sources(role, A[t], P[t], N[t],
                                   term_grads<acc_t>(grad_img[t], grad_txt[t], active[t]), mat, row, c);
    int kept = 0;
    for (int j = 0; j < count; ++j) {
      const acc_t scaled = c[j] * inv[layout.global_row(mat[j], row[j])];
      if (scaled == acc_t(0)) continue;
      src[kept] = layout.row_ptr(mat[j], row[j]);
      coef[kept++] = scaled;
    }
    return kept;
  }
};

}  // namespace loss
}  // namespace medtrim
