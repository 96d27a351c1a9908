// The kernels each backend registers for the medtrim:: ops: one list for the CPU and CUDA
// registrations (ops_registration.cpp, ops_registration_cuda.cpp), so they cannot drift apart.
#pragma once

#include "meta_entity_ops.h"
#include "triplet_loss_ops.h"

#define MEDTRIM_IMPL_KERNELS(m, suffix)                                        \
  m.impl("score_matrix", &medtrim::score_matrix_##suffix);                     \
  m.impl("mine_triplets", &medtrim::mine_triplets_##suffix);                   \
  m.impl("pair_scores", &medtrim::pair_scores_##suffix);                       \
  m.impl("triplet_loss_forward", &medtrim::triplet_loss_forward_##suffix);     \
  m.impl("triplet_loss_backward", &medtrim::triplet_loss_backward_##suffix)
