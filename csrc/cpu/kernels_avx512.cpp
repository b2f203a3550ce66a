// The pointwise row kernels for the AVX512 instruction set (see pointwise.h, pointwise_impl.h).
#define FASTLSTM_ISA AVX512
#define FASTLSTM_ISA_NAME "AVX512"
#define FASTLSTM_ISA_AVX512 1
#include "pointwise_impl.h"
