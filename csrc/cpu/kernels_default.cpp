// The pointwise row kernels for the DEFAULT instruction set (see pointwise.h, pointwise_impl.h).
#define FASTLSTM_ISA DEFAULT
#define FASTLSTM_ISA_NAME "DEFAULT"
#define FASTLSTM_ISA_DEFAULT 1
#include "pointwise_impl.h"
