// cuda_convert — fp32 to the 2-byte operand of a tensor-core product, on the device: one value
// (operand_cvt: bf16, or half saturated at +-65504), or a whole tensor (convert_kernel). Used by
// the bf16 products' conversion pass and frozen mirror (cuda_backend.cu) and by flash attention
// (cuda_flash.cuh), which the emulator also builds on its own (tests/test_flash_emu.cc).
#ifndef PESC_CUDA_CONVERT_CUH
#define PESC_CUDA_CONVERT_CUH

#include <stddef.h>

#include "cuda/cuda_api.cuh"

// x as a product operand: bf16 (round to nearest even), or half. A finite x past half's range
// saturates at +-65504 instead of becoming infinite.
template <class T> __device__ __forceinline__ T operand_cvt(float x);
template <> __device__ __forceinline__ __nv_bfloat16 operand_cvt<__nv_bfloat16>(float x)
{
    return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ __half operand_cvt<__half>(float x)
{
    float a = fabsf(x);
    return __float2half_rn(a > 65504.0f && a < INFINITY ? copysignf(65504.0f, x) : x);
}

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

#endif
