// cuda_convert — fp32 to the 2-byte operand of a tensor-core product, on the device: one value
// (operand_cvt: bf16, or half saturated at +-65504), or a whole tensor (convert_kernel). Used by
// the bf16 products' conversion pass and frozen mirror (cuda_backend.cu) and by flash attention
// (cuda_flash.cuh), which the emulator also builds on its own (tests/test_flash_emu.cc).
#ifndef PESC_CUDA_CONVERT_CUH
#define PESC_CUDA_CONVERT_CUH

#include <stddef.h>

#include "cuda/cuda_api.cuh"

// x as a product operand: bf16 (round to nearest even), or half. A finite x past half's range
// saturates at +-65504 instead of becoming infinite. As float: x itself (kernels that store
// either type).
template <class T> __host__ __device__ __forceinline__ T operand_cvt(float x);
template <> __host__ __device__ __forceinline__ float operand_cvt<float>(float x) { return x; }
template <> __host__ __device__ __forceinline__ __nv_bfloat16 operand_cvt<__nv_bfloat16>(float x)
{
    return __float2bfloat16_rn(x);
}
template <> __host__ __device__ __forceinline__ __half operand_cvt<__half>(float x)
{
    float a = fabsf(x);
    return __float2half_rn(a > 65504.0f && a < INFINITY ? copysignf(65504.0f, x) : x);
}

// An operand's value as float: operand_cvt's way back.
__device__ __forceinline__ float value_of(float x) { return x; }
__device__ __forceinline__ float value_of(__nv_bfloat16 x) { return __bfloat162float(x); }

// out = in (n floats) as T. With vector4, in is 16-byte aligned: four floats a load, and block 0
// takes the last n % 4 alone.
template <class T>
__global__ void convert_kernel(T *out, const float *in, size_t n, bool vector4)
{
    size_t first = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    size_t step = (size_t)gridDim.x * blockDim.x;
    if (!vector4) {
        for (size_t i = first; i < n; i += step)
            out[i] = operand_cvt<T>(in[i]);
        return;
    }
    size_t n4 = n / 4;
    for (size_t i = first; i < n4; i += step) {
        float4 x = PESC_LOAD_FLOAT4(in + 4 * i);
        out[4 * i] = operand_cvt<T>(x.x);
        out[4 * i + 1] = operand_cvt<T>(x.y);
        out[4 * i + 2] = operand_cvt<T>(x.z);
        out[4 * i + 3] = operand_cvt<T>(x.w);
    }
    if (blockIdx.x == 0 && threadIdx.x < n % 4)
        out[4 * n4 + threadIdx.x] = operand_cvt<T>(in[4 * n4 + threadIdx.x]);
}

// out (B, H, D, Tp) = in (B * T, H, D) as T, transposed per sequence and head: a head's
// column d is a row of Tp values, zeros past T. in: fp32, or bf16 (In). D a multiple of 32, Tp
// of 32 and at least T. Through shared memory 32 x 32 at a time, so that both sides are read
// and written along rows. Grid (Tp / 32, H * D / 32, B), (32, 8) threads.
template <class T, class In = float>
__global__ void convert_transpose_kernel(T *out, const In *in, int T_len, int Tp, int H, int D)
{
    __shared__ float tile[32][33];
    int b = blockIdx.z, h = blockIdx.y / (D / 32), t0 = blockIdx.x * 32;
    int d0 = blockIdx.y % (D / 32) * 32;
    int x = threadIdx.x;
    for (int j = threadIdx.y; j < 32; j += blockDim.y) {
        int t = t0 + j;
        size_t at = (((size_t)b * T_len + t) * H + h) * D + d0 + x;
        tile[j][x] = t < T_len ? value_of(in[at]) : 0.0f;
    }
    __syncthreads();
    for (int j = threadIdx.y; j < 32; j += blockDim.y)
        out[(((size_t)b * H + h) * D + d0 + j) * Tp + t0 + x] = operand_cvt<T>(tile[x][j]);
}

#endif
