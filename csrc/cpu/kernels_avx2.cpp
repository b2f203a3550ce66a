// Every cell's pass row kernels and the batch-1 GEMV kernels for the AVX2 instruction set (rows.h,
// rows_impl.h).
#define FASTLSTM_ISA isa_AVX2
#define FASTLSTM_ISA_NAME "AVX2"
#define FASTLSTM_ISA_AVX2 1
#include "rows_impl.h"
