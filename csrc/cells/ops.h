// Every cell's ops for one device: a device file calls register_cell_ops<Device>(m) in its
// TORCH_LIBRARY_IMPL. A new cell adds its *_op.h here.
#pragma once

#include "gru_op.h"
#include "layernorm_lstm_op.h"
#include "lstm_op.h"
#include "peephole_op.h"

namespace fastlstm {

template <class Dev>
void register_cell_ops(torch::Library& m) {
  LstmOps<Dev>::register_impls(m);
  PeepholeOps<Dev>::register_impls(m);
  GruOps<Dev>::register_impls(m);
  LayerNormLstmOps<Dev>::register_impls(m);
}

}  // namespace fastlstm
