// cuda_devices — enumerates CUDA devices for `pesc devices` and backend selection. The first
// piece of CUDA in the tree: it proves the nvcc + libtool path compiles and links.
#include "cuda/cuda_api.cuh"

#include <cstdio>
#include <cstring>

extern "C" {
#include "cuda/cuda.h"
}

extern "C" int cuda_device_count(pesc_error *why_none)
{
    int n = 0;
    cudaError_t rc = cudaGetDeviceCount(&n);
    if (rc != cudaSuccess) {
        cudaGetLastError();   // clear the sticky error so later calls start clean
        pesc_fail(why_none, "%s", rc == cudaErrorNoDevice ? "no CUDA device"
                  : rc == cudaErrorInsufficientDriver ? "no CUDA device (no NVIDIA driver is loaded)"
                  : cudaGetErrorString(rc));
        return 0;
    }
    if (n == 0)
        pesc_fail(why_none, "no CUDA device");
    return n;
}

extern "C" int cuda_device_query(int index, cuda_device_info *info, pesc_error *err)
{
    cudaDeviceProp prop;
    cudaError_t rc = cudaGetDeviceProperties(&prop, index);
    if (rc != cudaSuccess)
        return pesc_fail(err, "CUDA device %d: %s", index, cudaGetErrorString(rc));
    memset(info, 0, sizeof *info);
    snprintf(info->name, sizeof info->name, "%s", prop.name);
    info->major = prop.major;
    info->minor = prop.minor;
    info->multiprocessors = prop.multiProcessorCount;
    info->total_bytes = prop.totalGlobalMem;
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaSetDevice(index) == cudaSuccess && cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess)
        info->free_bytes = free_bytes;
    return 0;
}
