// cuda_group — moe_group on the device: a layer's (token, slot) pairs grouped by expert (the
// permutation), and the routing statistics the host downloads with the group sizes (counts,
// first choices, gate and probability sums, entropy, the z-loss's sum, sources), so that a
// layer's forward downloads MOE_STATS doubles instead of the routing itself.
//
// Deterministic: no atomics. Each block sums in a fixed order (a thread's strided share, then
// the block's threads in order), and the permutation is a stable counting sort, as the CPU's:
//  - group_stats_kernel: block e < E takes expert e's pairs and its column of probs; block E
//    the per-token sums (entropy, lse^2) and the last token's experts.
//  - group_perm_kernel: block e finds where expert e's group starts (the counts before it),
//    each thread counts expert e's pairs in its own contiguous run of pairs, the block's runs
//    are scanned in order, and each thread writes its pairs' places.
//
// Written in the subset tests/emu/cuda_emu.h runs on the CPU (tests/test_group_emu checks it
// against the CPU backend in make check).
#ifndef PESC_CUDA_GROUP_CUH
#define PESC_CUDA_GROUP_CUH

#include <stddef.h>
#include <stdint.h>

#include "cuda/cuda_api.cuh"

#define GROUP_THREADS 256
// sources counted on the device, at most (model.h's MODEL_MAX_SOURCES)
#define GROUP_MAX_SOURCES 16

// Shared bytes of group_stats_kernel: (4 + S) partial sums a thread.
__host__ __device__ inline size_t group_stats_shared(int S)
{
    return (size_t)(4 + S) * GROUP_THREADS * sizeof(double);
}
__host__ __device__ inline size_t group_perm_shared() { return GROUP_THREADS * sizeof(int); }

// Grid E + 1 blocks of GROUP_THREADS, group_stats_shared(S) bytes. stats as moe_group's
// (backend.h): everything but the permutation.
__global__ void __launch_bounds__(GROUP_THREADS)
group_stats_kernel(double *stats, const int32_t *idx, const float *w, const float *probs,
                   const float *lse, const int32_t *sources, int N, int E, int K, int S)
{
    PESC_DYNAMIC_SHARED(group_smem);
    double *part = (double *)group_smem;   // (4 + S, GROUP_THREADS)
    int tid = threadIdx.x, e = blockIdx.x, rows = e < E ? 4 + S : 2;
    size_t NK = (size_t)N * K;
    for (int r = 0; r < rows; r++)
        part[r * GROUP_THREADS + tid] = 0.0;
    if (e < E) {
        double count = 0.0, first = 0.0, gate = 0.0, prob = 0.0;
        for (size_t p = tid; p < NK; p += GROUP_THREADS) {
            if (idx[p] != e)
                continue;
            count += 1.0;
            first += p % K == 0;
            gate += w[p];
            int src = sources ? sources[p / K] : -1;
            if (src >= 0 && src < S)
                part[(4 + src) * GROUP_THREADS + tid] += 1.0;
        }
        for (int n = tid; n < N; n += GROUP_THREADS)
            prob += probs[(size_t)n * E + e];
        part[tid] = count;
        part[GROUP_THREADS + tid] = first;
        part[2 * GROUP_THREADS + tid] = gate;
        part[3 * GROUP_THREADS + tid] = prob;
    } else {
        double entropy = 0.0, z = 0.0;
        for (int n = tid; n < N; n += GROUP_THREADS) {
            for (int j = 0; j < E; j++) {
                double p = probs[(size_t)n * E + j];
                entropy -= p > 0 ? p * log(p) : 0.0;
            }
            z += (double)lse[n] * lse[n];
        }
        part[tid] = entropy;
        part[GROUP_THREADS + tid] = z;
        if (tid < K)
            stats[4 * (size_t)E + 2 + tid] = idx[(size_t)(N - 1) * K + tid];
    }
    __syncthreads();
    // thread r adds row r over the block's threads, in order
    if (tid < rows) {
        double s = 0.0;
        for (int t = 0; t < GROUP_THREADS; t++)
            s += part[tid * GROUP_THREADS + t];
        size_t at = e == E   ? 4 * (size_t)E + tid                          // entropy, z
                    : tid < 4 ? (size_t)tid * E + e                         // count .. prob
                              : 4 * (size_t)E + 2 + K + (size_t)(tid - 4) * E + e;   // sources
        stats[at] = s;
    }
}

// Grid E blocks of GROUP_THREADS, group_perm_shared() bytes, after group_stats_kernel: perm
// (N K) from the counts in stats.
__global__ void __launch_bounds__(GROUP_THREADS)
group_perm_kernel(int32_t *perm, const double *stats, const int32_t *idx, int NK)
{
    PESC_DYNAMIC_SHARED(group_smem);
    int *before = (int *)group_smem;       // (GROUP_THREADS) expert e's pairs in earlier runs
    int tid = threadIdx.x, e = blockIdx.x;
    int start = 0;
    for (int j = 0; j < e; j++)
        start += (int)stats[j];
    int run = (NK + GROUP_THREADS - 1) / GROUP_THREADS;
    int lo = min(tid * run, NK), hi = min(lo + run, NK);
    int mine = 0;
    for (int p = lo; p < hi; p++)
        mine += idx[p] == e;
    before[tid] = mine;
    __syncthreads();
    if (tid == 0)
        for (int t = 0, sum = 0; t < GROUP_THREADS; t++) {
            int c = before[t];
            before[t] = sum;
            sum += c;
        }
    __syncthreads();
    int at = start + before[tid];
    for (int p = lo; p < hi; p++)
        if (idx[p] == e)
            perm[at++] = p;
}

#endif
