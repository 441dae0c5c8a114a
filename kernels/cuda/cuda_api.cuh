// cuda_api — the CUDA runtime, cuBLAS and bf16 headers, or, built with -DPESC_CUDA_EMU, their
// emulation on the CPU (tests/emu/), which runs this backend's own code in make check where no
// GPU is; and CUDA_LAUNCH, the one way this code launches a kernel (the emulator cannot read
// <<<...>>>; it takes the arguments at the launch, as CUDA does).
#ifndef PESC_CUDA_API_CUH
#define PESC_CUDA_API_CUH

#ifdef PESC_CUDA_EMU
#include "cuda_emu.h"
#include "cuda_runtime_emu.h"
#include "cublas_emu.h"
#define CUDA_LAUNCH(kernel, grid, block, shared, stream, ...)                                    \
    emu_launch_on(stream, grid, block, shared, emu_bind(kernel, __VA_ARGS__), (const void *)kernel)
#else
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define CUDA_LAUNCH(kernel, grid, block, shared, stream, ...)                                    \
    kernel<<<grid, block, shared, stream>>>(__VA_ARGS__)
#endif

// Four floats, or 16 bytes of anything, from or to a 16-byte aligned address in one access;
// 4 bytes (two bf16 or half) from or to a 4-byte aligned one (the emulator checks the alignment).
#ifdef PESC_CUDA_EMU
#define PESC_LOAD_FLOAT4(p) emu_detail::load_float4(p)
#define PESC_LOAD_16(p) emu_detail::load_16(p)
#define PESC_STORE_16(p, v) emu_detail::store_16(p, v)
#define PESC_STORE_FLOAT4(p, v) emu_detail::store_float4(p, v)
#define PESC_LOAD_4(p) emu_detail::load_4(p)
#define PESC_STORE_4(p, v) emu_detail::store_4(p, v)
#else
#define PESC_LOAD_FLOAT4(p) (*(const float4 *)(p))
#define PESC_LOAD_16(p) (*(const uint4 *)(p))
#define PESC_STORE_16(p, v) (*(uint4 *)(p) = (v))
#define PESC_STORE_FLOAT4(p, v) (*(float4 *)(p) = (v))
#define PESC_LOAD_4(p) (*(const uint32_t *)(p))
#define PESC_STORE_4(p, v) (*(uint32_t *)(p) = (v))
#endif

// A kernel's dynamic shared memory, 128-byte aligned bytes.
#ifndef PESC_DYNAMIC_SHARED
#define PESC_DYNAMIC_SHARED(name) extern __shared__ __align__(128) unsigned char name[]
#endif

#endif
