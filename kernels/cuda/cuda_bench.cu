// cuda_bench — cuBLAS's own dense-product rate, the ceiling `pesc bench` and device-check
// report MFU against. Not part of the training path.
#include "cuda/cuda_api.cuh"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <vector>

extern "C" {
#include "cuda/cuda.h"
}

#define BENCH_CHECK(call)                                                                        \
    do {                                                                                         \
        cudaError_t rc_ = (call);                                                                \
        if (rc_ != cudaSuccess) {                                                                \
            pesc_fail(err, "%s failed at %s:%d: %s", #call, __FILE__, __LINE__,                  \
                      cudaGetErrorString(rc_));                                                  \
            goto out;                                                                            \
        }                                                                                        \
    } while (0)
#define BENCH_CUBLAS(call)                                                                       \
    do {                                                                                         \
        cublasStatus_t rc_ = (call);                                                             \
        if (rc_ != CUBLAS_STATUS_SUCCESS) {                                                      \
            pesc_fail(err, "%s failed at %s:%d: %s", #call, __FILE__, __LINE__,                  \
                      cublasGetStatusString(rc_));                                               \
            goto out;                                                                            \
        }                                                                                        \
    } while (0)

__global__ void bench_fill(float *f, __nv_bfloat16 *h, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        unsigned x = (unsigned)(i * 2654435761u) ^ 0x9e3779b9u;
        x ^= x >> 15;
        x *= 0x2c1b3c6du;
        x ^= x >> 12;
        float v = (float)(x & 0xffff) / 65536.0f - 0.5f;
        if (f)
            f[i] = v;
        if (h)
            h[i] = __float2bfloat16_rn(v);
    }
}

extern "C" double cuda_gemm_rate(int M, int N, int K, const char *precision, int reps,
                                 pesc_error *err)
{
    bool bf16 = strcmp(precision, "bf16") == 0, tf32 = strcmp(precision, "tf32") == 0;
    bool fast_bf16 = strcmp(precision, "fast-bf16") == 0;   // fp32 in memory, bf16 in the math
    if (!bf16 && !tf32 && !fast_bf16 && strcmp(precision, "fp32") != 0) {
        pesc_fail(err, "gemm rate: unknown precision '%s' (bf16, fast-bf16, tf32, fp32)",
                  precision);
        return -1.0;
    }
    size_t elem = bf16 ? sizeof(__nv_bfloat16) : sizeof(float);
    size_t na = (size_t)M * K, nb = (size_t)K * N, nc = (size_t)M * N;
    void *a = NULL, *b = NULL, *cbuf = NULL;
    cublasHandle_t handle = NULL;
    cudaEvent_t start = NULL, stop = NULL;
    std::vector<double> rates;
    double result = -1.0;
    float alpha = 1.0f, beta = 0.0f;
    cudaDataType_t type = bf16 ? CUDA_R_16BF : CUDA_R_32F;
    cublasComputeType_t compute = tf32        ? CUBLAS_COMPUTE_32F_FAST_TF32
                                  : fast_bf16 ? CUBLAS_COMPUTE_32F_FAST_16BF
                                              : CUBLAS_COMPUTE_32F;
    BENCH_CHECK(cudaSetDevice(0));
    BENCH_CHECK(cudaMalloc(&a, na * elem));
    BENCH_CHECK(cudaMalloc(&b, nb * elem));
    BENCH_CHECK(cudaMalloc(&cbuf, nc * elem));
    CUDA_LAUNCH(bench_fill, 1024, 256, 0, 0, bf16 ? NULL : (float *)a,
                bf16 ? (__nv_bfloat16 *)a : NULL, na);
    CUDA_LAUNCH(bench_fill, 1024, 256, 0, 0, bf16 ? NULL : (float *)b,
                bf16 ? (__nv_bfloat16 *)b : NULL, nb);
    BENCH_CHECK(cudaGetLastError());
    BENCH_CUBLAS(cublasCreate(&handle));
    BENCH_CHECK(cudaEventCreate(&start));
    BENCH_CHECK(cudaEventCreate(&stop));
    for (int rep = -2; rep < reps; rep++) {   // two untimed warm-ups
        BENCH_CHECK(cudaEventRecord(start));
        BENCH_CUBLAS(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, &alpha, b, type, N,
                                  a, type, K, &beta, cbuf, type, N, compute,
                                  CUBLAS_GEMM_DEFAULT));
        BENCH_CHECK(cudaEventRecord(stop));
        BENCH_CHECK(cudaEventSynchronize(stop));
        float ms = 0.0f;
        BENCH_CHECK(cudaEventElapsedTime(&ms, start, stop));
        if (rep >= 0)
            rates.push_back(2.0 * M * N * K / (ms * 1e-3) / 1e12);
    }
    std::sort(rates.begin(), rates.end());
    result = rates.empty() ? -1.0 : rates[rates.size() / 2];
out:
    if (start)
        cudaEventDestroy(start);
    if (stop)
        cudaEventDestroy(stop);
    if (handle)
        cublasDestroy(handle);
    cudaFree(a);
    cudaFree(b);
    cudaFree(cbuf);
    return result;
}
