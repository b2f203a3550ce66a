// Every cell's passes, and the list of them that the device files instantiate (per CPU instruction set,
// per CUDA storage type). A new cell adds its header here and its passes to FASTLSTM_PASSES.
#pragma once

#include "gru.h"
#include "layernorm_lstm.h"
#include "lstm.h"
#include "peephole.h"

#define FASTLSTM_PASSES(X)                                                                            \
  X(LstmForward) X(LstmBackward) X(GruForward) X(GruBackward) X(PeepholeForwardDiag) X(PeepholeForwardC) \
  X(PeepholeForwardH) X(PeepholeBackwardDiag) X(PeepholeBackwardH) X(PeepholeBackwardC) X(LnInputNorm)   \
  X(LnForward) X(LnBackward) X(LnInputNormBackward) X(LnParamGrads)

// The cells with a whole-sequence description (sequence.h), which the persistent CUDA kernel runs (the
// peephole cell in its diagonal mode). Layer norm needs a sum over the whole row per step and full
// peepholes a product of c with a matrix, neither of which a block owning a slice of the units has (the
// CPU runs layer norm's steps in two phases instead, below).
#define FASTLSTM_SEQUENCES(X) X(LstmSeq) X(GruSeq) X(PeepholeSeq)
// The CPU's whole-sequence path runs these and the layer-norm LSTM, whose pass needs whole rows: two phases a
// step there (sequence.h: SeqTraits::rows).
#define FASTLSTM_CPU_SEQUENCES(X) FASTLSTM_SEQUENCES(X) X(LnSeq)
