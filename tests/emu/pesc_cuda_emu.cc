// The CUDA backend built for the CPU emulator: every .cu file of kernels/cuda compiled as C++
// with -DPESC_CUDA_EMU (cuda_api.cuh then takes tests/emu's runtime and cuBLAS), into a module
// that PESC_CUDA_MODULE opens. tests/gpu/emu.sh runs the GPU tests on it: the backend's own
// code, kernels and host side, checked against the CPU in make check where no GPU is.
#include "cuda/cuda_devices.cu"
#include "cuda/cuda_backend.cu"
#include "cuda/cuda_ops.cu"
#include "cuda/cuda_attention.cu"
#include "cuda/cuda_moe.cu"
#include "cuda/cuda_bench.cu"
#include "cuda/cuda_narrow.cu"
