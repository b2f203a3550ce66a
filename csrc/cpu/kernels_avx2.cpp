// The pointwise row kernels for the AVX2 instruction set (see pointwise.h, pointwise_impl.h).
#define FASTLSTM_ISA AVX2
#define FASTLSTM_ISA_NAME "AVX2"
#define FASTLSTM_ISA_AVX2 1
#include "pointwise_impl.h"
