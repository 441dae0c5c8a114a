/* host_device — PESC_HOST_DEVICE marks a function of a header both backends include: a host
 * and device function under nvcc, a plain one in C (and in the CPU emulator's C++). */
#ifndef PESC_HOST_DEVICE_H
#define PESC_HOST_DEVICE_H

#ifdef __CUDACC__
#define PESC_HOST_DEVICE __host__ __device__
#else
#define PESC_HOST_DEVICE
#endif

#endif
