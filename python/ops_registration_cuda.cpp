// Registers the CUDA kernels of the medtrim:: ops (compiled only when the CUDA kernels are built).
#include <torch/library.h>

#include "meta_entity_ops.h"
#include "triplet_loss_ops.h"

TORCH_LIBRARY_IMPL(medtrim, CUDA, m) {
  m.impl("score_matrix", &medtrim::score_matrix_cuda);
  m.impl("mine_triplets", &medtrim::mine_triplets_cuda);
  m.impl("pair_scores", &medtrim::pair_scores_cuda);
  m.impl("triplet_loss_forward", &medtrim::triplet_loss_forward_cuda);
  m.impl("triplet_loss_backward", &medtrim::triplet_loss_backward_cuda);
}
