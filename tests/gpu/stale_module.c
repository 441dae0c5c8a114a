/* A CUDA module from another build of pesc: cuda_load must refuse it by its version alone,
 * before calling anything in it (its functions are NULL). */
#include "cuda/cuda.h"

__attribute__((visibility("default"))) const cuda_module pesc_cuda_module = {
    .version = "0.0.0-stale", .ops_size = 1};
