// Every cell's pass row kernels and the batch-1 GEMV kernels for the AVX512 instruction set (rows.h,
// rows_impl.h).
#define FASTLSTM_ISA isa_AVX512
#define FASTLSTM_ISA_NAME "AVX512"
#define FASTLSTM_ISA_AVX512 1
#include "rows_impl.h"
