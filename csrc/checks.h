// Argument checks shared by the CPU and CUDA entry points. The Python package validates first and
// gives friendlier messages; these checks make the raw ops (torch.ops.medtrim.*) safe on their own:
// bad input raises a RuntimeError naming the argument instead of reading out of bounds.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <optional>
#include <string>

namespace medtrim {

constexpr int64_t kMaxClasses = 32;  // one 32-bit disease mask per sample
// Words per class of an adjective or direction mask: keeps every bit count and every offset of a
// class inside a sample (class * words, 32 * words) well within `int` (32M descriptors per class).
constexpr int64_t kMaxWordsPerClass = int64_t(1) << 20;

// dis (N,) int32 disease masks, adj (N, C, WA) int32, dir (N, C, WR) int32.
inline void check_entities(const char* name, const at::Tensor& dis, const at::Tensor& adj,
                           const at::Tensor& dir) {
  TORCH_CHECK(dis.scalar_type() == at::kInt, name, "_dis must be int32, got ", dis.scalar_type());
  TORCH_CHECK(adj.scalar_type() == at::kInt, name, "_adj must be int32, got ", adj.scalar_type());
  TORCH_CHECK(dir.scalar_type() == at::kInt, name, "_dir must be int32, got ", dir.scalar_type());
  TORCH_CHECK(dis.dim() == 1, name, "_dis must be 1-D (N,), got shape ", dis.sizes());
  TORCH_CHECK(adj.dim() == 3, name, "_adj must be 3-D (N, classes, words), got shape ", adj.sizes());
  TORCH_CHECK(dir.dim() == 3, name, "_dir must be 3-D (N, classes, words), got shape ", dir.sizes());
  TORCH_CHECK(adj.size(0) == dis.size(0) && dir.size(0) == dis.size(0), name,
              "_dis, ", name, "_adj and ", name, "_dir disagree on N: ", dis.size(0), ", ",
              adj.size(0), ", ", dir.size(0));
  TORCH_CHECK(adj.size(1) == dir.size(1), name, "_adj and ", name,
              "_dir disagree on the number of classes: ", adj.size(1), " vs ", dir.size(1));
  TORCH_CHECK(adj.size(1) >= 1 && adj.size(1) <= kMaxClasses, name,
              ": the number of disease classes must be between 1 and ", kMaxClasses, ", got ",
              adj.size(1));
  TORCH_CHECK(adj.size(2) >= 1 && dir.size(2) >= 1, name,
              "_adj and ", name, "_dir need at least one word per class");
  TORCH_CHECK(adj.size(2) <= kMaxWordsPerClass && dir.size(2) <= kMaxWordsPerClass, name,
              "_adj and ", name, "_dir may have at most ", kMaxWordsPerClass,
              " words per class, got ", adj.size(2), " and ", dir.size(2));
  TORCH_CHECK(dis.device() == adj.device() && dis.device() == dir.device(), name,
              "_dis, ", name, "_adj and ", name, "_dir must be on one device");
  TORCH_CHECK(dis.size(0) < (int64_t(1) << 31), name, ": at most 2^31 - 1 samples are supported");
}

inline void check_pair(const at::Tensor& a_adj, const at::Tensor& a_dir, const at::Tensor& b_adj,
                       const at::Tensor& b_dir) {
  TORCH_CHECK(a_adj.size(1) == b_adj.size(1) && a_adj.size(2) == b_adj.size(2) &&
                  a_dir.size(2) == b_dir.size(2),
              "anchors and candidates must use the same vocabulary layout: anchor_adj ",
              a_adj.sizes(), " / anchor_dir ", a_dir.sizes(), " vs candidate_adj ", b_adj.sizes(),
              " / candidate_dir ", b_dir.sizes());
  TORCH_CHECK(a_adj.device() == b_adj.device(), "anchors (", a_adj.device(),
              ") and candidates (", b_adj.device(), ") must be on the same device");
}

inline void check_weight(const char* name, double w) {
  TORCH_CHECK(std::isfinite(w) && w >= 0.0, name, " must be finite and >= 0, got ", w);
}

inline void check_weights(double w_dis, double w_adj, double w_dir) {
  check_weight("w_dis", w_dis);
  check_weight("w_adj", w_adj);
  check_weight("w_dir", w_dir);
  TORCH_CHECK(std::isfinite(static_cast<float>(w_dis)) && std::isfinite(static_cast<float>(w_adj)) &&
                  std::isfinite(static_cast<float>(w_dir)),
              "weights must be representable in float32");
}

// Everything every op checks: two entity sets with one layout on one device, and the weights.
inline void check_score_inputs(const at::Tensor& a_dis, const at::Tensor& a_adj,
                               const at::Tensor& a_dir, const at::Tensor& b_dis,
                               const at::Tensor& b_adj, const at::Tensor& b_dir, double w_dis,
                               double w_adj, double w_dir) {
  check_entities("anchor", a_dis, a_adj, a_dir);
  check_entities("candidate", b_dis, b_adj, b_dir);
  check_pair(a_adj, a_dir, b_adj, b_dir);
  check_weights(w_dis, w_adj, w_dir);
}

inline void check_mining(const at::Tensor& a_dis, const at::Tensor& a_ids, const at::Tensor& b_dis,
                         const at::Tensor& b_ids, const at::Tensor& semi_hard, double threshold,
                         double upper) {
  TORCH_CHECK(a_ids.scalar_type() == at::kLong && b_ids.scalar_type() == at::kLong,
              "anchor_ids and candidate_ids must be int64");
  TORCH_CHECK(a_ids.dim() == 1 && a_ids.size(0) == a_dis.size(0), "anchor_ids must have shape (",
              a_dis.size(0), ",), got ", a_ids.sizes());
  TORCH_CHECK(b_ids.dim() == 1 && b_ids.size(0) == b_dis.size(0),
              "candidate_ids must have shape (", b_dis.size(0), ",), got ", b_ids.sizes());
  TORCH_CHECK(semi_hard.scalar_type() == at::kBool && semi_hard.dim() == 1 &&
                  semi_hard.size(0) == a_dis.size(0),
              "semi_hard must be a bool tensor of shape (", a_dis.size(0), ",)");
  TORCH_CHECK(a_ids.device() == a_dis.device() && b_ids.device() == a_dis.device() &&
                  semi_hard.device() == a_dis.device(),
              "anchor_ids, candidate_ids and semi_hard must be on the anchors' device");
  TORCH_CHECK(std::isfinite(threshold) && std::isfinite(upper) && 0.0 <= threshold &&
                  threshold <= upper,
              "need 0 <= threshold <= upper (both finite), got threshold=", threshold,
              ", upper=", upper);
}

// An inverse index into distinct records (MetaEntities.unique): int64 (N,), every entry in
// [0, records). Read on the host (the folded kernel runs on the CPU).
inline void check_inverse(const char* name, const at::Tensor& inverse, int64_t records) {
  TORCH_CHECK(inverse.scalar_type() == at::kLong && inverse.dim() == 1, name,
              " must be a 1-D int64 tensor, got ", inverse.scalar_type(), " ", inverse.sizes());
  if (inverse.numel() == 0) return;
  TORCH_CHECK(inverse.min().item<int64_t>() >= 0 && inverse.max().item<int64_t>() < records, name,
              " must index the ", records, " distinct records (entries in [0, ", records, "))");
}

// The seed of the tie keys: read on the host, so it must live on the CPU whatever the device.
inline std::optional<uint64_t> read_tie_seed(const std::optional<at::Tensor>& tie_seed) {
  if (!tie_seed.has_value()) return std::nullopt;
  const at::Tensor& t = *tie_seed;
  TORCH_CHECK(t.scalar_type() == at::kLong && t.numel() == 1 && t.device().is_cpu(),
              "tie_seed must be an int64 CPU tensor with one element, got ", t.scalar_type(), " ",
              t.sizes(), " on ", t.device());
  return static_cast<uint64_t>(t.item<int64_t>());
}

// Pair index lists: int64, 1-D, equal length, on the entities' device, each entry -1 or in range.
// (On CUDA the range check is reduced on the device and read back in one copy: one sync.)
inline void check_pair_indices(const at::Tensor& a_idx, const at::Tensor& b_idx, int64_t n,
                               int64_t m, const at::Device& device) {
  TORCH_CHECK(a_idx.scalar_type() == at::kLong && b_idx.scalar_type() == at::kLong,
              "anchor_index and candidate_index must be int64");
  TORCH_CHECK(a_idx.dim() == 1 && b_idx.dim() == 1 && a_idx.size(0) == b_idx.size(0),
              "anchor_index and candidate_index must be 1-D of equal length, got ", a_idx.sizes(),
              " and ", b_idx.sizes());
  TORCH_CHECK(a_idx.device() == device && b_idx.device() == device,
              "anchor_index and candidate_index must be on ", device);
  if (a_idx.numel() == 0) return;
  auto outside = [](const at::Tensor& idx, int64_t rows) {
    return at::logical_or(idx.lt(-1), idx.ge(rows)).any();
  };
  const at::Tensor bad = at::stack({outside(a_idx, n), outside(b_idx, m)}).cpu();
  const bool* f = bad.data_ptr<bool>();
  TORCH_CHECK(!f[0], "anchor_index entries must be -1 or in [0, ", n, ")");
  TORCH_CHECK(!f[1], "candidate_index entries must be -1 or in [0, ", m, ")");
}

// Only bits of existing classes may be read: mask the rest off inside the kernels.
inline uint32_t class_mask(int64_t classes) {
  return classes >= 32 ? 0xFFFFFFFFu : ((1u << classes) - 1u);
}

}  // namespace medtrim
