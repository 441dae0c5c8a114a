/* cuda — the C-callable face of the CUDA code in the .cu files of kernels/cuda/. Present in every
 * build; cuda_load exists in every build, the module only when configure found CUDA (HAVE_CUDA). */
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

struct backend_ops;   /* backend_impl.h */

/* What the CUDA module exports. The CUDA code (every .cu file, with cuBLAS and the CUDA
 * runtime) is built as a loadable module, pesc-cuda.so, not into pesc: loading cuBLAS costs
 * about half a second and 200 MB at every start, which `pesc --help`, `pesc view` or a CPU run
 * should not pay, and a pesc built with CUDA must still start where cuBLAS is missing. */
typedef struct cuda_module {
    const char *version;     /* PACKAGE_VERSION of the build it came from */
    size_t ops_size;         /* sizeof(backend_ops) there: the table's layout must match */

    /* Number of usable CUDA devices: 0 when there is none or no driver (why_none then says
     * why, e.g. "no NVIDIA driver"), never a crash. */
    int (*device_count)(pesc_error *why_none);
    int (*device_query)(int index, cuda_device_info *info, pesc_error *err);
    /* The dense-product rate of cuBLAS on device 0 (tests/gpu/gemm_peak,
     * tests/gpu/device-check): the median of `reps` timed (M x K) @ (K x N) products on random
     * data with fp32 accumulation. precision: "bf16" (bf16 in and out), "tf32", "fast-bf16"
     * (rounded to bf16 inside cuBLAS) or "fp32" (fp32 in and out). Returns TFLOP/s, or -1 with
     * a message. */
    double (*gemm_rate)(int M, int N, int K, const char *precision, int reps, pesc_error *err);
    /* The backend's table and context on device PESC_CUDA_DEVICE, or -1 with a message. */
    int (*backend_init)(const struct backend_ops **ops, void **ctx, pesc_error *err);
} cuda_module;

#ifdef __cplusplus
extern "C" {
#endif

/* The module's one exported symbol. */
extern const cuda_module pesc_cuda_module;

/* Loads the module once per process (later calls give the same answer) into *module and
 * returns 0. Without a GPU to use it returns 1: this pesc was built without CUDA, or there is
 * no NVIDIA driver (libcuda.so.1 is not loaded, so the module, and cuBLAS with it, is not even
 * opened). When the module or a library it needs is missing, or it is from another build, -1.
 * why says which, in one line. The module is looked for at $PESC_CUDA_MODULE when that is set
 * (then opened even without a driver), else beside a pesc run from its build tree, else in
 * pkglibdir (kernels/cuda/cuda_load.c). Thread-safe. */
int cuda_load(const cuda_module **module, pesc_error *why);

/* The module's own functions (kernels/cuda/), reached from outside only through the table. */
int cuda_device_count(pesc_error *why_none);
int cuda_device_query(int index, cuda_device_info *info, pesc_error *err);
double cuda_gemm_rate(int M, int N, int K, const char *precision, int reps, pesc_error *err);

#ifdef __cplusplus
}
#endif

#endif
