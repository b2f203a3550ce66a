// Every cell's pass row kernels and the batch-1 GEMV kernels for the DEFAULT instruction set (rows.h,
// rows_impl.h).
#define FASTLSTM_ISA isa_DEFAULT
#define FASTLSTM_ISA_NAME "DEFAULT"
#define FASTLSTM_ISA_DEFAULT 1
#include "rows_impl.h"
