// Entry points of the fused multimodal triplet loss; registered as torch ops in python/.
//
// forward:  (loss_img (T,), loss_txt (T,), active (T,) uint8, inv_norms (rows,)) where the losses are
//           per triplet (0 for a triplet with an index of -1), `active` holds the hinge terms that
//           are > 0 and inv_norms the inverse row norms [img, txt, (cand_img, cand_txt)]; the last
//           two are saved for backward.
// backward: (grad_img, grad_txt, grad_cand_img, grad_cand_txt); the candidate gradients are empty
//           (0, dim) when no candidates were given (their rows are img/txt themselves).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace medtrim {

using LossForward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using LossBackward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

#define MEDTRIM_DECLARE_LOSS_OPS(suffix)                                                          \
  LossForward triplet_loss_forward_##suffix(                                                      \
      const at::Tensor& img, const at::Tensor& txt, const std::optional<at::Tensor>& cand_img,    \
      const std::optional<at::Tensor>& cand_txt, const at::Tensor& anchor,                        \
      const at::Tensor& positive, const at::Tensor& negative, double margin);                     \
  LossBackward triplet_loss_backward_##suffix(                                                    \
      const at::Tensor& grad_loss_img, const at::Tensor& grad_loss_txt, const at::Tensor& img,    \
      const at::Tensor& txt, const std::optional<at::Tensor>& cand_img,                           \
      const std::optional<at::Tensor>& cand_txt, const at::Tensor& anchor,                        \
      const at::Tensor& positive, const at::Tensor& negative, const at::Tensor& active,           \
      const at::Tensor& inv_norms);

MEDTRIM_DECLARE_LOSS_OPS(cpu)
#ifdef MEDTRIM_WITH_CUDA
MEDTRIM_DECLARE_LOSS_OPS(cuda)
#endif

#undef MEDTRIM_DECLARE_LOSS_OPS

}  // namespace medtrim
