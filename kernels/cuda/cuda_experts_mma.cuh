// cuda_experts_mma — the experts' row products of the adapters in bf16 (bf16 operands, fp32
// accumulation, bf16 results) as one kernel launch over the tiles of every expert, on mma.sync
// m16n8k16 (cuda_flash_mma.cuh's flash_mma and its fragment layout); and their weights'
// gradients, into fp32, the same way (experts_grad_kernel, at the end). PESC_CUDA_EXPERTS=mma
// picks it over cuBLAS's grouped call (cuda_moe.cu's experts_gemm), which ran these products at
// 59 to 98 TFLOP/s on an H200 where its dense bf16 products reach 420 to 700 (whether its
// choice of kernels for row counts that change every step is why, PESC_CUDA_EXPERT_ALIGN's
// fixed shapes are there to tell). On that H200
// these kernels passed the GPU tests but were slower still: a TinyLlama step took 86.6 ms with
// them, 81.8 with cuBLAS, the adapters' forward 9.5 ms against 7.7 (profiled), and the
// backward, whose B operands ldmatrix transposes, lost more. Hence opt-in. (The weights'
// gradients were cuBLAS's then, one call an expert; experts_grad_kernel is not yet timed.)
//
// For each expert e with rows (first_e .. first_e + rows_e - 1 of the grouped order):
//   out_e (rows_e, N) = A_e (rows_e, K) op(B_e),  A_e row-major (K-contiguous), and
//   B_e (N, K) row-major, op = transpose (B_K: the forward's D_e^T and U_e^T), or
//   B_e (K, N) row-major, op = none (the backward's U_e and D_e: rows run along N).
// N and K are multiples of 8 (16-byte rows of bf16) and every row starts 16-byte aligned; the
// caller checks and otherwise runs cuBLAS.
//
// The design known to run near peak on Ampere and Hopper without wgmma:
//  - a block computes a BM x BN tile (128 x 128, or 128 x 64 where 128-wide tiles would leave
//    the GPU's multiprocessors short of work), its warps 64 x 32 each: 8 warps (2 x 4), or 4
//    (2 x 2). A warp's tile is 4 m-tiles of 16 rows by 4 chunks of 8 columns: 64 fp32
//    accumulators a lane, and each fragment it loads serves 4 products;
//  - K walks in steps of 32 through EM_STAGES (4) buffers in shared memory, filled with
//    cp.async 16 bytes at a time: three steps' loads are in flight while one is multiplied
//    (80 KiB a block at 128 columns, 60 at 64, with the forward's B; 74 and 58 with the
//    backward's; ptxas, sm_90: 124 to 128 registers a thread at 128 columns, 2 blocks of 256
//    threads a multiprocessor; 166 at 64, 3 blocks of 128);
//  - fragments come from shared memory with ldmatrix .x4 (four 8 x 8 matrices a warp at once;
//    .trans for a B that runs along N, which it transposes as it loads); rows are padded by 16
//    bytes, so the 8 rows an ldmatrix reads fall in 8 distinct groups of 4 banks;
//  - one launch: the grid is every expert's tiles, each block finding its expert in a table of
//    tile counts passed by value (at most CUDA_GROUP_MAX experts); rows past an expert's last
//    and columns past N load as zeros (cp.async's zero fill) and are not stored.
//
// The kernels keep to what tests/emu/cuda_emu.h runs; there the mma is emu_mma_m16n8k16 and
// ldmatrix emu_ldmatrix_x4(_trans), both by the PTX ISA's layouts.
#ifndef PESC_CUDA_EXPERTS_MMA_CUH
#define PESC_CUDA_EXPERTS_MMA_CUH

#include "cuda/cuda_common.cuh"
#include "cuda/cuda_flash_mma.cuh"

#define EM_BM 128          // rows a block
#define EM_BK 32           // K a step
#define EM_STAGES 4        // steps in shared memory at once
#define EM_WARP_M 64       // a warp's rows
#define EM_WARP_N 32       // a warp's columns
#define EM_LDK (EM_BK + 8) // a K-contiguous row in shared memory: 32 values and 16 bytes

// The experts of one launch, passed by value: expert[j], its first row and its rows, for the
// experts with rows in order, and tile_end[j], the tiles of experts 0 .. j together (a block
// b < tile_end[0] is expert[0]'s, and so on); each expert's tiles run along N first.
struct experts_tiles {
    int count, n_tiles;
    int expert[CUDA_GROUP_MAX], first[CUDA_GROUP_MAX], rows[CUDA_GROUP_MAX];
    int tile_end[CUDA_GROUP_MAX];
};

// One operand of an expert's product: expert e's starts at base + first_e row + e expert
// (elements), first_e the expert's first row in the grouped order; its rows are ld apart.
template <class T> struct expert_operand {
    const T *base;
    size_t row, expert;
    int ld;
};

template <class T>
__host__ __device__ inline const T *expert_at(const expert_operand<T> &o, int first, int e)
{
    return o.base + (size_t)first * o.row + (size_t)e * o.expert;
}

// The threads of a block with BN columns: one warp a 64 x 32 piece.
__host__ __device__ constexpr int experts_threads(int BN)
{
    return 32 * (EM_BM / EM_WARP_M) * (BN / EM_WARP_N);
}

// A stage's B tile: BN rows of K (B_K), or EM_BK rows of BN columns and 16 bytes.
__host__ __device__ constexpr int experts_b_elements(int BN, bool B_K)
{
    return B_K ? BN * EM_LDK : EM_BK * (BN + 8);
}

__host__ __device__ constexpr size_t experts_stage_bytes(int BN, bool B_K)
{
    return (size_t)(EM_BM * EM_LDK + experts_b_elements(BN, B_K)) * sizeof(__nv_bfloat16);
}

__host__ __device__ constexpr size_t experts_shared(int BN, bool B_K)
{
    return EM_STAGES * experts_stage_bytes(BN, B_K);
}

// Rows k0 .. k0 + EM_BK - 1 (of `rows`) of a row-major operand p, W of its columns from c0 (of
// `width`), into a stage's tile of those rows, W + 8 values apart; each 16 bytes a cp.async,
// zeros past the ends. The whole block (THREADS) calls it.
template <int W, int THREADS>
__device__ __forceinline__ void experts_load_rows(__nv_bfloat16 *s, const __nv_bfloat16 *p,
                                                  int ld, int k0, int rows, int c0, int width)
{
    constexpr int V = W / 8;
    for (int i = threadIdx.x; i < EM_BK * V; i += THREADS) {
        int k = i / V, col = c0 + 8 * (i % V);
        bool in = k0 + k < rows && col < width;
        flash_cp16(s + k * (W + 8) + 8 * (i % V), in ? p + (size_t)(k0 + k) * ld + col : p, in);
    }
}

// Step k0's tiles into a stage: A's EM_BM rows from row m0 (of `rows`), B's BN columns from n0,
// each 16 bytes a cp.async, zeros past the ends. The whole block calls it.
template <int BN, bool B_K>
__device__ __forceinline__ void experts_load(__nv_bfloat16 *as, __nv_bfloat16 *bs,
                                             const __nv_bfloat16 *a, int lda,
                                             const __nv_bfloat16 *b, int ldb, int m0, int rows,
                                             int n0, int N, int k0, int K)
{
    constexpr int THREADS = experts_threads(BN), VK = EM_BK / 8;
    for (int i = threadIdx.x; i < EM_BM * VK; i += THREADS) {
        int r = i / VK, k = k0 + 8 * (i % VK);
        bool in = m0 + r < rows && k < K;
        flash_cp16(as + r * EM_LDK + 8 * (i % VK), in ? a + (size_t)(m0 + r) * lda + k : a, in);
    }
    if (B_K) {
        for (int i = threadIdx.x; i < BN * VK; i += THREADS) {
            int n = i / VK, k = k0 + 8 * (i % VK);
            bool in = n0 + n < N && k < K;
            flash_cp16(bs + n * EM_LDK + 8 * (i % VK), in ? b + (size_t)(n0 + n) * ldb + k : b,
                       in);
        }
    } else {
        experts_load_rows<BN, THREADS>(bs, b, ldb, k0, K, n0, N);
    }
}

// acc += the warp's 64 x 32 piece of a stage: A rows wm .., B columns wn .. (g, t: the lane's
// fragment coordinates). A's tile is its rows of EM_LDK (K-contiguous), or with A_KM EM_BK
// rows of EM_BM + 8 (M-contiguous: a weight's gradient, A^T's rows along M).
template <int BN, bool B_K, bool A_KM = false>
__device__ __forceinline__ void experts_step(float (*acc)[4][4], const __nv_bfloat16 *as,
                                             const __nv_bfloat16 *bs, int wm, int wn, int lane)
{
#pragma unroll
    for (int kk = 0; kk < EM_BK; kk += 16) {
        // A: matrices (rows 0-7, kk), (8-15, kk), (0-7, kk + 8), (8-15, kk + 8) are a[0 .. 3].
        // K-contiguous: lanes 0-15 give rows 0-15 at column kk, lanes 16-31 the same rows at
        // kk + 8. M-contiguous: lane l gives K row kk + 8 (l / 16) + l % 8 at column
        // 8 (l / 8 % 2) of the 16, transposed as it loads
        uint32_t af[4][4], bf[4][2];
#pragma unroll
        for (int m = 0; m < 4; m++)
            if (A_KM)
                flash_ldmatrix<true>(af[m], as + (kk + 8 * (lane / 16) + lane % 8) *
                                                       (EM_BM + 8) +
                                                   wm + 16 * m + 8 * (lane / 8 % 2));
            else
                flash_ldmatrix<false>(af[m], as + (wm + 16 * m + lane % 16) * EM_LDK + kk +
                                                   8 * (lane / 16));
        // B, two 8-column chunks a load: matrix i = lane / 8 is k half i % 2 of chunk i / 2,
        // so r[0], r[1] are the first chunk's b[0], b[1] and r[2], r[3] the second's
#pragma unroll
        for (int np = 0; np < 2; np++) {
            uint32_t r[4];
            int n = wn + 16 * np + 8 * (lane / 16), k = kk + 8 * (lane / 8 % 2);
            if (B_K)   // B[k][n] at bs[n][k]: a fragment's pairs run along a row, as A's
                flash_ldmatrix<false>(r, bs + (n + lane % 8) * EM_LDK + k);
            else       // B[k][n] at bs[k][n]: rows along N, transposed as they load
                flash_ldmatrix<true>(r, bs + (k + lane % 8) * (BN + 8) + n);
            bf[2 * np][0] = r[0], bf[2 * np][1] = r[1];
            bf[2 * np + 1][0] = r[2], bf[2 * np + 1][1] = r[3];
        }
#pragma unroll
        for (int m = 0; m < 4; m++)
#pragma unroll
            for (int n = 0; n < 4; n++)
                flash_mma<__nv_bfloat16>(acc[m][n], af[m], bf[n]);
    }
}

// What a block of the experts' kernels works on: the expert e of its tile (its rows from
// `first` of the grouped order, `rows` of them), the tile's first row m0 and column n0 (tiles
// BN wide, each expert's along N first), and the lane's warp's piece of it, from wm, wn.
struct experts_block {
    int e, first, rows, m0, n0, lane, wm, wn;
};

template <int BN> __device__ __forceinline__ experts_block experts_block_of(const experts_tiles &t)
{
    int j = 0;
    while ((int)blockIdx.x >= t.tile_end[j])
        j++;
    int tile = blockIdx.x - (j ? t.tile_end[j - 1] : 0), warp = threadIdx.x >> 5;
    return {t.expert[j], t.first[j], t.rows[j], tile / t.n_tiles * EM_BM,
            tile % t.n_tiles * BN, (int)threadIdx.x & 31,
            warp / (BN / EM_WARP_N) * EM_WARP_M, warp % (BN / EM_WARP_N) * EM_WARP_N};
}

// f(r, col, v0, v1) for each pair of adjacent columns the lane holds of the warp's piece
// (acc, from row r0 and column c0 of the product), r and col within `rows` and N (N even).
template <class F>
__device__ __forceinline__ void experts_each_pair(const float (*acc)[4][4], int r0, int c0,
                                                  int lane, int rows, int N, F f)
{
    int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int m = 0; m < 4; m++)
#pragma unroll
        for (int i = 0; i < 2; i++) {
            int r = r0 + 16 * m + g + 8 * i;
            if (r >= rows)
                continue;
#pragma unroll
            for (int n = 0; n < 4; n++) {
                int col = c0 + 8 * n + 2 * t;
                if (col < N)
                    f(r, col, acc[m][n][2 * i], acc[m][n][2 * i + 1]);
            }
        }
}

// The walk along K in `steps` steps of EM_BK: fetch(step) copies a step's tiles into stage
// step % EM_STAGES, multiply(stage) takes one. EM_STAGES - 1 steps are in flight before the
// first product; one copy group a step, empty past the last, so that the wait always leaves
// the newest EM_STAGES - 2.
template <class Fetch, class Multiply>
__device__ __forceinline__ void experts_pipeline(int steps, Fetch fetch, Multiply multiply)
{
#pragma unroll
    for (int s = 0; s < EM_STAGES - 1; s++) {
        if (s < steps)
            fetch(s);
        flash_cp_commit();
    }
    for (int step = 0; step < steps; step++) {
        flash_cp_wait<EM_STAGES - 2>();   // this thread's copies of `step` are made
        __syncthreads();   // ... everyone's; and the stage step - 1 used is free again
        if (step + EM_STAGES - 1 < steps)
            fetch(step + EM_STAGES - 1);
        flash_cp_commit();
        multiply(step % EM_STAGES);
    }
    flash_cp_wait<0>();   // the empty groups' (none of their copies are left)
}

// out_e = A_e op(B_e) for every expert of `tiles` (the header says the shapes): block b takes
// one BM x BN tile of one expert. Grid tiles.tile_end[tiles.count - 1], experts_threads(BN)
// threads, experts_shared(BN, B_K) bytes.
template <int BN, bool B_K>
__global__ void __launch_bounds__(experts_threads(BN), 2)
experts_mma_kernel(expert_operand<__nv_bfloat16> out, expert_operand<__nv_bfloat16> a,
                   expert_operand<__nv_bfloat16> b, int N, int K,
                   experts_tiles tiles)
{
#if FLASH_BODY
    PESC_DYNAMIC_SHARED(experts_smem);
    experts_block k = experts_block_of<BN>(tiles);
    const __nv_bfloat16 *ae = expert_at(a, k.first, k.e), *be = expert_at(b, k.first, k.e);
    auto stage_a = [&](int s) {
        return (__nv_bfloat16 *)(experts_smem + s * experts_stage_bytes(BN, B_K));
    };
    float acc[4][4][4];
    flash_zero<4, 4>(acc);
    int rows = k.rows, m0 = k.m0, n0 = k.n0;
    experts_pipeline(
        (K + EM_BK - 1) / EM_BK,
        [=](int step) {
            __nv_bfloat16 *as = stage_a(step % EM_STAGES);
            experts_load<BN, B_K>(as, as + EM_BM * EM_LDK, ae, a.ld, be, b.ld, m0, rows, n0, N,
                                  EM_BK * step, K);
        },
        [&](int stage) {
            const __nv_bfloat16 *as = stage_a(stage);
            experts_step<BN, B_K>(acc, as, as + EM_BM * EM_LDK, k.wm, k.wn, k.lane);
        });
    // each pair as one 4-byte store of two bf16
    __nv_bfloat16 *oe = (__nv_bfloat16 *)expert_at(out, k.first, k.e);
    experts_each_pair(acc, m0 + k.wm, n0 + k.wn, k.lane, rows, N,
                      [&](int r, int col, float v0, float v1) {
        PESC_STORE_4(oe + (size_t)r * out.ld + col, flash_pack<__nv_bfloat16>(v0, v1));
    });
#endif
}

// ---- a weight's gradient --------------------------------------------------------------------
//
// G_e (M, N) = beta G_e + A_e^T B_e for every expert of `tiles`, A_e (rows_e, M) and B_e
// (rows_e, N) row-major: the sum over the expert's rows is the product's K. G is fp32 (the
// weights' gradient accumulator itself); each of its tiles is one block's, summed over K in
// order, so the result is deterministic. Both operands' stage tiles are EM_BK rows along M or
// N (experts_load_rows), A's fragments transposed as they load. beta is 0 (the first write:
// the table then has every expert, those without rows writing zeros) or 1. M and N are
// multiples of 8, A and B 16-byte aligned.

__host__ __device__ constexpr size_t experts_grad_stage_bytes(int BN)
{
    return (size_t)EM_BK * ((EM_BM + 8) + (BN + 8)) * sizeof(__nv_bfloat16);
}

__host__ __device__ constexpr size_t experts_grad_shared(int BN)
{
    return EM_STAGES * experts_grad_stage_bytes(BN);
}

template <int BN>
__global__ void __launch_bounds__(experts_threads(BN), 2)
experts_grad_kernel(float *grad, expert_operand<__nv_bfloat16> a,
                    expert_operand<__nv_bfloat16> b, int M, int N, float beta,
                    experts_tiles tiles)
{
#if FLASH_BODY
    constexpr int THREADS = experts_threads(BN);
    PESC_DYNAMIC_SHARED(experts_smem);
    experts_block k = experts_block_of<BN>(tiles);
    const __nv_bfloat16 *ae = expert_at(a, k.first, k.e), *be = expert_at(b, k.first, k.e);
    auto stage_a = [&](int s) {
        return (__nv_bfloat16 *)(experts_smem + s * experts_grad_stage_bytes(BN));
    };
    float acc[4][4][4];
    flash_zero<4, 4>(acc);
    int rows = k.rows, m0 = k.m0, n0 = k.n0;
    experts_pipeline(
        (rows + EM_BK - 1) / EM_BK,
        [=](int step) {
            __nv_bfloat16 *as = stage_a(step % EM_STAGES);
            experts_load_rows<EM_BM, THREADS>(as, ae, a.ld, EM_BK * step, rows, m0, M);
            experts_load_rows<BN, THREADS>(as + EM_BK * (EM_BM + 8), be, b.ld, EM_BK * step,
                                           rows, n0, N);
        },
        [&](int stage) {
            const __nv_bfloat16 *as = stage_a(stage);
            experts_step<BN, false, true>(acc, as, as + EM_BK * (EM_BM + 8), k.wm, k.wn, k.lane);
        });
    float *ge = grad + (size_t)k.e * M * N;
    experts_each_pair(acc, m0 + k.wm, n0 + k.wn, k.lane, M, N,
                      [&](int r, int col, float v0, float v1) {
        float *out = ge + (size_t)r * N + col;
        if (beta != 0.0f)
            v0 += beta * out[0], v1 += beta * out[1];
        out[0] = v0, out[1] = v1;
    });
#endif
}

#endif
