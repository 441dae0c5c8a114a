/* cuda — the C-callable face of the CUDA code in the .cu files of kernels/cuda/. Present in every build;
 * the functions exist only when configure found CUDA (HAVE_CUDA). */
#ifndef PESC_CUDA_H
#define PESC_CUDA_H

#include <stddef.h>

#include "util.h"

typedef struct cuda_device_info {
    char name[256];
    size_t total_bytes, free_bytes;
    int major, minor;            /* compute capability */
    int multiprocessors;
} cuda_device_info;

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices: 0 when there is none or no driver (err then says why,
 * e.g. "no NVIDIA driver"), never a crash. */
int cuda_device_count(pesc_error *why_none);
int cuda_device_query(int index, cuda_device_info *info, pesc_error *err);

/* The dense-product rate of cuBLAS on device 0 (tests/gpu/gemm_peak, tests/gpu/device-check):
 * the median of `reps` timed (M x K) @ (K x N) products on random data with fp32
 * accumulation. precision: "bf16" (bf16 in and out), "tf32" or "fp32" (fp32 in and out).
 * Returns TFLOP/s, or -1 with a message. */
double cuda_gemm_rate(int M, int N, int K, const char *precision, int reps, pesc_error *err);

#ifdef __cplusplus
}
#endif

#endif
