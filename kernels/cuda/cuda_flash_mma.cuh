// cuda_flash_mma — flash attention for training with the scores in registers: the same work,
// masks and operand types as cuda_flash.cuh, but each product is PTX
// `mma.sync.m16n8k16` (fp32 accumulation), whose fragment layout the PTX ISA documents, where
// wmma's is unspecified. So the scores S, the probabilities P and the output O stay in the
// registers of the lanes that own them, as in FlashAttention-2: a row's softmax reduces over
// the four lanes that share it (two shuffles), and an accumulator's C fragment of two adjacent
// 8-column chunks is, packed to 2-byte pairs, exactly the next product's A fragment. The wmma
// kernels took a round trip through shared memory for S, P and O at every tile.
//
// A lane l of a warp, g = l / 4 and t = l % 4, holds (PTX ISA, "Matrix Fragments for
// mma.m16n8k16 with floating point type"):
//   A (16 x 16, row): a[0] = A[g][2t, 2t+1], a[1] = A[g+8][2t, 2t+1], a[2], a[3] the same rows
//                      at columns 2t+8, 2t+9;
//   B (16 x 8, col):  b[0] = B[2t, 2t+1][g], b[1] = B[2t+8, 2t+9][g];
//   C (16 x 8):       c[0], c[1] = C[g][2t, 2t+1], c[2], c[3] = C[g+8][2t, 2t+1].
// B's pairs run along k: for S = Q K^T, B = K^T is K's rows as they are; for the products
// whose B runs along keys or query rows (P V, dS K, P^T dO, dS^T Q) the launcher hands the
// operand transposed (convert_transpose_kernel: a head's column as a row of Tp values), or,
// where its rows are in shared memory already as bf16 (dout for dV; q for dK and k for dQ
// where they are bf16 values), ldmatrix .trans transposes them as they load. The products
// load every fragment with ldmatrix .x4, four 8 x 8 matrices a warp (one A fragment, or the B
// fragments of two chunks of 8) in one instruction where 4-byte loads took four. Tiles start
// at multiples of 64 rows.
//
// Work: 4 warps a block. A warp takes 16 rows (one m-tile) or, where the registers allow
// (flash_mma_mt), 32 (two m-tiles, each B fragment read from shared memory once for both: with
// one m-tile a warp's shared reads take about twice the tensor cores' time at their peak,
// 2 x 4 bytes a lane per 4096-FLOP product). The forward and dQ take a block of
// query rows and walk the 64-key tiles they see, the last rows first; dK and dV take a block
// of keys of one query head and walk the 64-row query tiles that see them.
// Each loop holds two buffers of its tile: the next tile's copies (cp.async) arrive while the
// current one is multiplied. The softmax runs in base 2 (exp2f, one instruction). Only the
// tiles that cut a warp's rows (the diagonal, a window's or a document's edge, T) test each
// score against its row's keys; a tile every row of the warp sees whole (flash_tile_full) runs
// the same arithmetic without the tests (PTX at D 64: the forward's loop 621 instructions
// shorter, 226 comparisons fewer, against 128 products).
//
// With PESC_CUDA_FLASH_DQ=stored the dK/dV kernel runs first and stores the dS it makes, and
// dQ is one product a key tile from it (flash_mma_dq_ds_kernel; see "dQ from a stored dS").
//
// cuda_attention.cu checks at start that the device's mma and ldmatrix agree with this layout
// (a product of known integers, flash_mma_probe_kernel) and otherwise runs the wmma kernels.
//
// The kernels keep to the subset that tests/emu/cuda_emu.h runs on the CPU; there the mma is
// emu_mma_m16n8k16, with the same layout (tests/test_flash_emu checks them against the CPU
// backend).
#ifndef PESC_CUDA_FLASH_MMA_CUH
#define PESC_CUDA_FLASH_MMA_CUH

#include <type_traits>

#include "cuda/cuda_flash.cuh"

#define FM_LDT (FL_TILE + 8)   // a transposed tile's row: 64 keys (or query rows) and padding
#define FM_LOG2E 1.4426950408889634f
#define FM_LN2 0.6931471805599453f

// c (+)= A B, one m16n8k16 product of the warp, T half or bf16.
template <class T>
__device__ __forceinline__ void flash_mma(float c[4], const uint32_t a[4], const uint32_t b[2]);
#ifdef PESC_CUDA_EMU
template <class T>
__device__ __forceinline__ void flash_mma(float c[4], const uint32_t a[4], const uint32_t b[2])
{
    emu_mma_m16n8k16<T>(c, a, b);
}
#else
// the PTX product with operands of `type` (f16 or bf16), accumulating into c
#define FLASH_MMA_PTX(type)                                                                        \
    asm("mma.sync.aligned.m16n8k16.row.col.f32." type "." type ".f32 {%0, %1, %2, %3}, "          \
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"                                            \
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                           \
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]))
template <>
__device__ __forceinline__ void flash_mma<__half>(float c[4], const uint32_t a[4],
                                                  const uint32_t b[2])
{
#if FLASH_BODY
    FLASH_MMA_PTX("f16");
#endif
}
template <>
__device__ __forceinline__ void flash_mma<__nv_bfloat16>(float c[4], const uint32_t a[4],
                                                         const uint32_t b[2])
{
#if FLASH_BODY
    FLASH_MMA_PTX("bf16");
#endif
}
#endif

// Two values as one register of T: lo in the low half.
__device__ __forceinline__ uint32_t flash_bits(__half x) { return __half_as_ushort(x); }
__device__ __forceinline__ uint32_t flash_bits(__nv_bfloat16 x) { return __bfloat16_as_ushort(x); }
template <class T> __device__ __forceinline__ uint32_t flash_pack(float lo, float hi)
{
    return flash_bits(operand_cvt<T>(lo)) | flash_bits(operand_cvt<T>(hi)) << 16;
}

// The warp's four registers of four 8 x 8 matrices of 2-byte values in shared memory, lane l
// giving row l % 8 of matrix l / 8 (cuda_emu.h's emu_ldmatrix_x4 spells out the layout);
// transposed as they load with TRANS.
template <bool TRANS>
__device__ __forceinline__ void flash_ldmatrix(uint32_t r[4], const void *row)
{
#ifdef PESC_CUDA_EMU
    if (TRANS)
        emu_ldmatrix_x4_trans(r, row);
    else
        emu_ldmatrix_x4(r, row);
#elif FLASH_BODY
    unsigned a = (unsigned)__cvta_generic_to_shared(row);
    if (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
#endif
}

// The A fragment of rows row0 .. row0 + 15, columns k0 .. k0 + 15 of a tile with rows ld apart.
template <class T>
__device__ __forceinline__ void flash_a_frag(uint32_t a[4], const T *tile, int ld, int row0,
                                             int k0, int g, int t)
{
    const T *p = tile + (size_t)(row0 + g) * ld + k0 + 2 * t;
    a[0] = PESC_LOAD_4(p);
    a[1] = PESC_LOAD_4(p + 8 * ld);
    a[2] = PESC_LOAD_4(p + 8);
    a[3] = PESC_LOAD_4(p + 8 * ld + 8);
}

// The B fragment whose column j is row n0 + j of a tile, k0 .. k0 + 15 along that row.
template <class T>
__device__ __forceinline__ void flash_b_frag(uint32_t b[2], const T *tile, int ld, int n0, int k0,
                                             int g, int t)
{
    const T *p = tile + (size_t)(n0 + g) * ld + k0 + 2 * t;
    b[0] = PESC_LOAD_4(p);
    b[1] = PESC_LOAD_4(p + 8);
}

// The products load their fragments from shared memory with ldmatrix instead, a quarter of
// the load instructions for the same bytes (rows 16-byte aligned: ld a multiple of 8 values).
// flash_a_frag's fragment: lanes 0-15 give rows row0 .. row0 + 15 at column k0, lanes 16-31
// the same rows at k0 + 8, so matrix i is a[i] (rows + 8 (i % 2), columns + 8 (i / 2)).
template <class T>
__device__ __forceinline__ void flash_a_frag_ld(uint32_t a[4], const T *tile, int ld, int row0,
                                                int k0, int lane)
{
    flash_ldmatrix<false>(a, tile + (size_t)(row0 + lane % 16) * ld + k0 + 8 * (lane / 16));
}

// flash_b_frag's fragments of chunks n0 (b0) and n0 + 8 (b1) in one ldmatrix: matrix i = lane
// / 8 is chunk i / 2's rows at k0 + 8 (i % 2).
template <class T>
__device__ __forceinline__ void flash_b_frag2(uint32_t b0[2], uint32_t b1[2], const T *tile,
                                              int ld, int n0, int k0, int lane)
{
    uint32_t r[4];
    flash_ldmatrix<false>(r, tile + (size_t)(n0 + 8 * (lane / 16) + lane % 8) * ld + k0 +
                                 8 * (lane / 8 % 2));
    b0[0] = r[0], b0[1] = r[1], b1[0] = r[2], b1[1] = r[3];
}

// The same fragments where B's k runs along the tile's rows (B[k][j] = tile[(k0 + k) ld + n0 +
// j]: a row tile of queries as dV's and dK's B), transposed as they load: matrix i = lane / 8
// is rows k0 + 8 (i % 2) .. at columns n0 + 8 (i / 2) ...
template <class T>
__device__ __forceinline__ void flash_b_frag2_t(uint32_t b0[2], uint32_t b1[2], const T *tile,
                                                int ld, int n0, int k0, int lane)
{
    uint32_t r[4];
    flash_ldmatrix<true>(r, tile + (size_t)(k0 + 8 * (lane / 8 % 2) + lane % 8) * ld + n0 +
                                8 * (lane / 16));
    b0[0] = r[0], b0[1] = r[1], b1[0] = r[2], b1[1] = r[3];
}

// acc[m][n] (+)= rows row0 + 16 m .. of a (ld lda) times rows n0 + 8 n .. of b (ld ldb),
// transposed, over NK chunks of 16: S = A B^T for MT m-tiles of 16 rows and N chunks of 8
// columns. Each B fragment serves all MT m-tiles: a warp's shared-memory reads per product
// fall with MT.
template <class T, int MT, int N, int NK>
__device__ __forceinline__ void flash_mma_abt(float (*acc)[N][4], const T *a, int lda, int row0,
                                              const T *b, int ldb, int n0, int g, int t)
{
    static_assert(N % 2 == 0, "B fragments load two chunks at a time");
    int lane = 4 * g + t;
#pragma unroll
    for (int kc = 0; kc < NK; kc++) {
        uint32_t af[MT][4];
#pragma unroll
        for (int m = 0; m < MT; m++)
            flash_a_frag_ld(af[m], a, lda, row0 + 16 * m, 16 * kc, lane);
#pragma unroll
        for (int n = 0; n < N; n += 2) {
            uint32_t b0[2], b1[2];
            flash_b_frag2(b0, b1, b, ldb, n0 + 8 * n, 16 * kc, lane);
#pragma unroll
            for (int m = 0; m < MT; m++) {
                flash_mma<T>(acc[m][n], af[m], b0);
                flash_mma<T>(acc[m][n + 1], af[m], b1);
            }
        }
    }
}

// acc[m][n] (+)= P (MT m-tiles of 16 rows by 16 KC columns, C fragments p[m][0 .. 2 KC)) times
// the transposed tile bt (rows of FM_LDT, columns k0 ..): B[k][j] = bt[8 n + j][k0 + k]; or with
// ROWS, times the row tile bt (rows of ld, rows k0 ..): B[k][j] = bt[k0 + k][8 n + j] (ld is
// read with ROWS alone).
// P's C fragments of two adjacent 8-column chunks, packed, are its A fragment.
template <class T, int MT, int KC, int N, int NP, bool ROWS = false>
__device__ __forceinline__ void flash_mma_pv(float (*acc)[N][4], const float (*p)[NP][4],
                                             const T *bt, int k0, int g, int t, int ld = FM_LDT)
{
    static_assert(N % 2 == 0, "B fragments load two chunks at a time");
#pragma unroll
    for (int j = 0; j < KC; j++) {
        uint32_t af[MT][4];
#pragma unroll
        for (int m = 0; m < MT; m++) {
            af[m][0] = flash_pack<T>(p[m][2 * j][0], p[m][2 * j][1]);
            af[m][1] = flash_pack<T>(p[m][2 * j][2], p[m][2 * j][3]);
            af[m][2] = flash_pack<T>(p[m][2 * j + 1][0], p[m][2 * j + 1][1]);
            af[m][3] = flash_pack<T>(p[m][2 * j + 1][2], p[m][2 * j + 1][3]);
        }
#pragma unroll
        for (int n = 0; n < N; n += 2) {
            uint32_t b0[2], b1[2];
            if (ROWS)
                flash_b_frag2_t(b0, b1, bt, ld, 8 * n, k0 + 16 * j, 4 * g + t);
            else
                flash_b_frag2(b0, b1, bt, FM_LDT, 8 * n, k0 + 16 * j, 4 * g + t);
#pragma unroll
            for (int m = 0; m < MT; m++) {
                flash_mma<T>(acc[m][n], af[m], b0);
                flash_mma<T>(acc[m][n + 1], af[m], b1);
            }
        }
    }
}

// f(m, n, e) for every element e of every C fragment [m][n] of MT m-tiles by N chunks
template <int MT, int N, class F> __device__ __forceinline__ void flash_each(const F &f)
{
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int n = 0; n < N; n++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                f(m, n, e);
}

template <int MT, int N> __device__ __forceinline__ void flash_zero(float (*acc)[N][4])
{
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int n = 0; n < N; n++)
            acc[m][n][0] = acc[m][n][1] = acc[m][n][2] = acc[m][n][3] = 0.0f;
}

// The backward's two score products, for rows row0 .. of the a tiles against rows n0 .. of the
// b tiles (all rows ld apart): s = a_h b_h^T in TQ (the scores: half, or bf16 where q and k are
// bf16 values) and dp = a_b b_b^T in bf16 (dP, from dout and v).
template <class TQ, int MT, int N, int NK>
__device__ __forceinline__ void flash_s_dp(float (*s)[N][4], float (*dp)[N][4], const TQ *a_h,
                                           const __nv_bfloat16 *a_b, const TQ *b_h,
                                           const __nv_bfloat16 *b_b, int ld, int row0, int n0,
                                           int g, int t)
{
    flash_zero<MT, N>(s);
    flash_zero<MT, N>(dp);
    flash_mma_abt<TQ, MT, N, NK>(s, a_h, ld, row0, b_h, ld, n0, g, t);
    flash_mma_abt<__nv_bfloat16, MT, N, NK>(dp, a_b, ld, row0, b_b, ld, n0, g, t);
}

// ---- asynchronous tile loads (cp.async, sm_80) ------------------------------------------------
// A block issues the next tile's copies, computes on the current one, then waits: the loads
// overlap the products. The emulator makes a copy only when its thread waits for it.

// 16 bytes from global src to shared dst, or 16 zeros when !valid (then src is not read).
__device__ __forceinline__ void flash_cp16(void *dst, const void *src, bool valid)
{
#ifdef PESC_CUDA_EMU
    emu_cp_async(dst, src, 16, valid ? 16 : 0);
#elif FLASH_BODY
    unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(src),
                 "r"(valid ? 16 : 0));
#endif
}

// The copies issued since the last commit become a group.
__device__ __forceinline__ void flash_cp_commit()
{
#ifdef PESC_CUDA_EMU
    emu_cp_async_commit();
#elif FLASH_BODY
    asm volatile("cp.async.commit_group;");
#endif
}

// Waits until at most N of this thread's newest groups are in flight; other threads' copies
// need a __syncthreads after it.
template <int N> __device__ __forceinline__ void flash_cp_wait()
{
#ifdef PESC_CUDA_EMU
    emu_cp_async_wait(N);
#elif FLASH_BODY
    asm volatile("cp.async.wait_group %0;" ::"n"(N));
#endif
}

// rows row0 .. row0 + 63 of src (row i at src + i stride, 16-byte aligned, stride a multiple
// of 8) into a (64, D + 8) tile, zeros past `rows`. The whole block calls it.
template <int D, class T>
__device__ __forceinline__ void flash_copy_tile(T *dst, const T *src, size_t stride, int row0,
                                                int rows)
{
    constexpr int V = D / 8;   // 16-byte vectors a row
    for (int i = threadIdx.x; i < FL_TILE * V; i += FL_THREADS) {
        int r = i / V, d = 8 * (i % V);
        bool in = row0 + r < rows;
        flash_cp16(dst + r * (D + 8) + d, in ? src + (size_t)(row0 + r) * stride + d : src, in);
    }
}

// rows row0 .. row0 + 64 MT - 1 of src into MT row tiles at dst
template <int D, int MT, class T>
__device__ __forceinline__ void flash_copy_rows(T *dst, const T *src, size_t stride, int row0,
                                                int rows)
{
#pragma unroll
    for (int m = 0; m < MT; m++)
        flash_copy_tile<D>(dst + (size_t)m * FL_TILE * (D + 8), src, stride, row0 + FL_TILE * m,
                           rows);
}

// A transposed tile: D rows of 64 values from src (rows stride apart, 16-byte aligned), into
// (D, FM_LDT). The whole block calls it.
template <int D, class T>
__device__ __forceinline__ void flash_copy_tile_t(T *dst, const T *src, size_t stride)
{
    for (int i = threadIdx.x; i < D * (FL_TILE / 8); i += FL_THREADS) {
        int r = i / (FL_TILE / 8), c = 8 * (i % (FL_TILE / 8));
        flash_cp16(dst + r * FM_LDT + c, src + (size_t)r * stride + c, true);
    }
}

// A loop's turn at tile it of `tiles`: once every thread is done with the tile before (whose
// buffer takes tile it + 1), issue tile it + 1's copies, then wait for tile it's. fetch(i)
// issues tile i's copies into buffer i & 1. The whole block calls it.
template <class Fetch>
__device__ __forceinline__ void flash_next_tile(int it, int tiles, const Fetch &fetch)
{
    __syncthreads();
    if (it + 1 < tiles)
        fetch(it + 1);
    flash_cp_commit();   // perhaps empty: the wait below counts groups
    flash_cp_wait<1>();
    __syncthreads();
}

// A block of query rows walks its key tiles (forward, dQ): fetch(it) issues key tile it's
// copies into buffer it & 1, and tile(it, s0) computes on tile it, from key s0, where the
// warp's rows (warp_lo .. warp_hi; none where !live) see any of its keys (warp-uniform). Copies
// issued before the walk (the rows' tiles) join the first tile's group. The whole block calls it.
template <class Fetch, class Tile>
__device__ __forceinline__ void flash_walk_keys(int key_lo, int tiles, bool live, int warp_lo,
                                                int warp_hi, const Fetch &fetch, const Tile &tile)
{
    fetch(0);
    flash_cp_commit();
    for (int it = 0; it < tiles; it++) {
        int s0 = key_lo + FL_TILE * it;
        flash_next_tile(it, tiles, fetch);   // this tile's copies (and the rows') are here
        if (live && s0 <= warp_hi && s0 + FL_TILE - 1 >= warp_lo)
            tile(it, s0);
    }
}

// dst's rows row0 + 16 m + g + 8 i below `rows` (rows stride values apart) = acc times mul, as
// Out (operand_cvt), in the C fragments' columns 8 n + 2 t, 8 n + 2 t + 1.
template <int MT, int ND, class Out>
__device__ __forceinline__ void flash_write_acc(Out *dst, size_t stride,
                                                const float (*acc)[ND][4], int row0, int rows,
                                                float mul, int g, int t)
{
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int i = 0; i < 2; i++) {
            int r = row0 + 16 * m + g + 8 * i;
            if (r >= rows)
                continue;
            Out *row = dst + (size_t)r * stride + 2 * t;
#pragma unroll
            for (int n = 0; n < ND; n++) {
                row[8 * n] = operand_cvt<Out>(acc[m][n][2 * i] * mul);
                row[8 * n + 1] = operand_cvt<Out>(acc[m][n][2 * i + 1] * mul);
            }
        }
}

// The same into element off of dst in fp32, or of dst16 in bf16 where dst is NULL (a tensor
// kept in bf16 alone).
template <int MT, int ND>
__device__ __forceinline__ void flash_write_acc_to(float *dst, __nv_bfloat16 *dst16, size_t off,
                                                   size_t stride, const float (*acc)[ND][4],
                                                   int row0, int rows, float mul, int g, int t)
{
    if (dst)
        flash_write_acc<MT, ND>(dst + off, stride, acc, row0, rows, mul, g, t);
    else
        flash_write_acc<MT, ND>(dst16 + off, stride, acc, row0, rows, mul, g, t);
}

// m-tiles of 16 rows a warp: 2 (32 rows, the block 128) where the accumulators leave room
// without spilling (ptxas, sm_90: at D = 64 the forward takes 255 registers, dQ 237, dK/dV
// 255), else 1 (16 rows, the block 64): at head dimensions up to 64.
__host__ __device__ constexpr int flash_mma_mt(int D) { return D <= 64 ? 2 : 1; }
// a block's query rows (forward, dQ), or keys (dK, dV)
__host__ __device__ constexpr int flash_mma_rows(int D) { return FL_WARPS * 16 * flash_mma_mt(D); }

// Shared memory: row tiles of 64 as in cuda_flash.cuh (a block's rows take flash_mma_mt(D) of
// them), transposed (D, FM_LDT) tiles, and two of each tile the loop walks (the one it computes
// on, the next one arriving).
__host__ __device__ inline size_t flash_ttile_bytes(int D)
{
    return flash_round((size_t)D * FM_LDT * 2);
}
__host__ __device__ inline size_t flash_mma_forward_step(int D)   // k, v^T
{
    return flash_tile_bytes(D) + flash_ttile_bytes(D);
}
__host__ __device__ inline size_t flash_mma_forward_shared(int D)
{
    return flash_mma_mt(D) * flash_tile_bytes(D) + 2 * flash_mma_forward_step(D);
}
__host__ __device__ inline size_t flash_mma_dq_step(int D)   // k, v, k^T
{
    return 2 * flash_tile_bytes(D) + flash_ttile_bytes(D);
}
__host__ __device__ inline size_t flash_mma_dq_shared(int D)
{
    return 2 * flash_mma_mt(D) * flash_tile_bytes(D) + 2 * flash_mma_dq_step(D);
}
__host__ __device__ inline size_t flash_mma_dkdv_step(int D)   // q, dout, q^T, row stats
{
    return 2 * flash_tile_bytes(D) + flash_ttile_bytes(D) + flash_round(3 * FL_TILE * 4);
}
__host__ __device__ inline size_t flash_mma_dkdv_shared(int D)
{
    return 2 * flash_mma_mt(D) * flash_tile_bytes(D) + 2 * flash_mma_dkdv_step(D);
}

// dQ from a stored dS (PESC_CUDA_FLASH_DQ=stored): the dK/dV kernel, which makes dS^T for its
// own product, also stores it in bf16 (the values that product rounds to), and dQ = dS K is
// then one product a key tile instead of S, P and dP made again with it. Per (sequence, query
// head) the store holds the 64 x 64 tiles of the causal triangle, query tile i's key tiles
// j <= i at index i (i + 1) / 2 + j, each its 64 keys' rows of 64 queries (dS^T: the dK/dV
// kernel's fragment pairs run along a row). Masked pairs hold 0, and so does a warp's part of
// a tile it skips, so the dQ kernel reads any tile it visits without masks.
__host__ __device__ inline size_t flash_ds_tiles(int T)   // a (sequence, head)'s tiles
{
    size_t n = (size_t)(T + FL_TILE - 1) / FL_TILE;
    return n * (n + 1) / 2;
}
#define FL_DS_TILE (FL_TILE * FL_TILE)   // values a tile
__host__ __device__ inline size_t flash_ds_index(int qt, int kt)
{
    return (size_t)qt * (qt + 1) / 2 + kt;
}
__host__ __device__ inline size_t flash_mma_dq_ds_step(int D)   // MT dS^T tiles, k^T
{
    return flash_mma_mt(D) * flash_round((size_t)FL_TILE * FM_LDT * 2) + flash_ttile_bytes(D);
}
__host__ __device__ inline size_t flash_mma_dq_ds_shared(int D)
{
    return 2 * flash_mma_dq_ds_step(D);
}

// The keys this lane's rows (tw + 16 m + g + 8 i) see: lo .. hi, none (hi -1) past T.
template <int MT>
__device__ __forceinline__ void flash_lane_rows(int (*lo)[2], int (*hi)[2], int tw, int g, int T,
                                                int window, const int32_t *seg)
{
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int i = 0; i < 2; i++) {
            int t = tw + 16 * m + g + 8 * i;
            lo[m][i] = t < T ? flash_first_key(t, window, seg) : 0;
            hi[m][i] = t < T ? t : -1;
        }
}

// Key tiles start at multiples of 64 (the transposed operands' tiles are whole and 16-byte
// aligned); masks drop the keys before a row's first.
__device__ __forceinline__ int flash_tile_start(int key) { return key / FL_TILE * FL_TILE; }

// Whether every row of a warp's wm rows from r0 sees every key of the tile from s0: the rows
// all before T and past the tile's last key, the latest row's first key (first keys only grow
// with the row) no later than its first. Warp-uniform; such tiles skip the masks.
__device__ __forceinline__ bool flash_tile_full(int s0, int r0, int wm, int T, int window,
                                                const int32_t *seg)
{
    return r0 + wm <= T && s0 + FL_TILE - 1 <= r0 &&
           flash_first_key(r0 + wm - 1, window, seg) <= s0;
}

// One key tile of the forward's online softmax (FlashAttention-2) for a warp's MT m-tiles: s
// (the tile's scores) becomes P, o and each row's running maximum mrow (base 2) and sum l are
// rescaled and added to. MASKED: the keys outside a lane row's lo .. hi drop out (a row that
// has seen none keeps mrow -inf); else the tile is whole for every row (flash_tile_full), the
// same arithmetic without the tests.
template <bool MASKED, int MT, int ND>
__device__ __forceinline__ void flash_online_softmax(float (*s)[8][4], float (*o)[ND][4],
                                                     float (*mrow)[2], float (*l)[2],
                                                     const int (*lo)[2], const int (*hi)[2],
                                                     int s0, int tq, float scale2)
{
#pragma unroll
    for (int m = 0; m < MT; m++) {
        // scale and mask; each row's maximum over its four lanes
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int i = e >> 1, key = s0 + 8 * n + 2 * tq + (e & 1);
                float x = !MASKED || (key >= lo[m][i] && key <= hi[m][i]) ? s[m][n][e] * scale2
                                                                          : -INFINITY;
                s[m][n][e] = x;
                mx[i] = fmaxf(mx[i], x);
            }
        float alpha[2], m_new[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int i = 0; i < 2; i++) {
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
            m_new[i] = fmaxf(mrow[m][i], mx[i]);
            alpha[i] = !MASKED || m_new[i] != -INFINITY ? exp2f(mrow[m][i] - m_new[i]) : 1.0f;
        }
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int i = e >> 1;
                float p =
                    !MASKED || s[m][n][e] != -INFINITY ? exp2f(s[m][n][e] - m_new[i]) : 0.0f;
                s[m][n][e] = p;
                sum[i] += p;
            }
#pragma unroll
        for (int i = 0; i < 2; i++) {
            sum[i] += __shfl_xor_sync(0xffffffffu, sum[i], 1);
            sum[i] += __shfl_xor_sync(0xffffffffu, sum[i], 2);
            l[m][i] = l[m][i] * alpha[i] + sum[i];
            if (!MASKED || m_new[i] != -INFINITY)
                mrow[m][i] = m_new[i];
        }
#pragma unroll
        for (int n = 0; n < ND; n++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                o[m][n][e] *= alpha[e >> 1];
    }
}

// ---- forward --------------------------------------------------------------------------------

// q (B*T, Hq, D), k (B*T, Hkv, D) in TQ (half, or bf16 where they are bf16 values: the same
// scores); vt (B, Hkv, D, Tp) half, zeros past T; out (B*T, Hq, D),
// and keep (NULL, or its bf16 copy: cuda_keep_copy), or out NULL and keep its bf16 values alone;
// seg (B, T) or NULL; lse (B, Hq, T) or NULL. Grid (ceil(T / flash_mma_rows(D)), Hq, B),
// FL_THREADS threads, flash_mma_forward_shared(D) bytes.
template <int NCH, class TQ = __half>
__global__ void __launch_bounds__(FL_THREADS)
flash_mma_forward_kernel(float *out, __nv_bfloat16 *keep, float *lse, const TQ *q, const TQ *k,
                         const __half *vt, int T, int Tp, int Hq, int Hkv,
                         int window, const int32_t *seg_start, float scale)
{
#if FLASH_BODY
    constexpr int D = NCH * 16, LDH = D + 8, ND = D / 8, MT = flash_mma_mt(D);
    constexpr int BM = flash_mma_rows(D), WM = 16 * MT;   // the block's rows, a warp's
    PESC_DYNAMIC_SHARED(flash_smem);
    unsigned char *smem = flash_smem;
    TQ *qs = flash_tile<TQ>(smem, D, 0);
    unsigned char *steps = smem + MT * flash_tile_bytes(D);   // k, v^T: two tiles' worth
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;

    int h = blockIdx.y, b = blockIdx.z, kvh = h / (Hq / Hkv);
    int t0 = (gridDim.x - 1 - blockIdx.x) * BM, tw = t0 + WM * warp;   // the longest first
    const int32_t *seg = seg_start ? seg_start + (size_t)b * T : NULL;
    size_t q_stride = (size_t)Hq * D, kv_stride = (size_t)Hkv * D;
    const TQ *kb = k + (size_t)b * T * kv_stride + (size_t)kvh * D;
    const __half *vtb = vt + ((size_t)b * Hkv + kvh) * D * Tp;

    int lo[MT][2], hi[MT][2];
    flash_lane_rows<MT>(lo, hi, tw, g, T, window, seg);
    float mrow[MT][2], l[MT][2];   // each row's running maximum (base 2) and sum
#pragma unroll
    for (int m = 0; m < MT; m++)
        mrow[m][0] = mrow[m][1] = -INFINITY, l[m][0] = l[m][1] = 0.0f;
    float o[MT][ND][4];
    flash_zero<MT, ND>(o);
    bool warp_live = tw < T;
    int warp_lo = warp_live ? flash_first_key(tw, window, seg) : 0;
    int warp_hi = min(tw + WM - 1, T - 1);
    int key_lo = flash_tile_start(flash_first_key(t0, window, seg));
    int key_hi = min(t0 + BM - 1, T - 1);
    // the softmax in base 2 (exp2f is one instruction): scores times log2(e), m likewise
    const float scale2 = scale * FM_LOG2E;
    int tiles = (key_hi - key_lo) / FL_TILE + 1;
    auto fetch = [&](int it) {   // key tile it into its buffer
        unsigned char *at = steps + (it & 1) * flash_mma_forward_step(D);
        flash_copy_tile<D>((TQ *)at, kb, kv_stride, key_lo + FL_TILE * it, T);
        flash_copy_tile_t<D>((__half *)(at + flash_tile_bytes(D)), vtb + key_lo + FL_TILE * it, Tp);
    };
    flash_copy_rows<D, MT>(qs, q + (size_t)b * T * q_stride + (size_t)h * D, q_stride, t0, T);
    flash_walk_keys(key_lo, tiles, warp_live, warp_lo, warp_hi, fetch, [&](int it, int s0) {
        const unsigned char *at = steps + (it & 1) * flash_mma_forward_step(D);
        const TQ *ks = (const TQ *)at;
        const __half *vts = (const __half *)(at + flash_tile_bytes(D));
        float s[MT][8][4];
        flash_zero<MT, 8>(s);
        flash_mma_abt<TQ, MT, 8, NCH>(s, qs, LDH, WM * warp, ks, LDH, 0, g, tq);
        if (flash_tile_full(s0, tw, WM, T, window, seg))
            flash_online_softmax<false, MT, ND>(s, o, mrow, l, lo, hi, s0, tq, scale2);
        else
            flash_online_softmax<true, MT, ND>(s, o, mrow, l, lo, hi, s0, tq, scale2);
        // P in half (in [0, 1])
        flash_mma_pv<__half, MT, FL_TILE / 16, ND, 8>(o, s, vts, 0, g, tq);
    });
    // out = o / l; lse in base e
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int i = 0; i < 2; i++) {
            int t = tw + 16 * m + g + 8 * i;
            float inv = t < T ? 1.0f / l[m][i] : 0.0f;
#pragma unroll
            for (int n = 0; n < ND; n++)
                o[m][n][2 * i] *= inv, o[m][n][2 * i + 1] *= inv;
            if (lse && tq == 0 && t < T)
                lse[((size_t)b * Hq + h) * T + t] = (mrow[m][i] + log2f(l[m][i])) * FM_LN2;
        }
    size_t o_off = (size_t)b * T * q_stride + (size_t)h * D;
    if (out)
        flash_write_acc<MT, ND>(out + o_off, q_stride, o, tw, T, 1.0f, g, tq);
    if (keep)   // the output's bf16 copy, for the o projection's product next
        flash_write_acc<MT, ND>(keep + o_off, q_stride, o, tw, T, 1.0f, g, tq);
#endif
}

// dS = P (dP - delta) for a warp's MT m-tiles of query rows against keys k0 .. k0 + 8 N - 1:
// P = exp2(s scale2 - lse), base 2, and 0 for the keys outside a lane row's lo .. hi when
// MASKED (flash_tile_full: a tile whole for every row skips the tests). dS replaces s.
template <bool MASKED, int MT, int N>
__device__ __forceinline__ void flash_dq_ds(float (*s)[N][4], const float (*dp)[N][4],
                                            const int (*lo)[2], const int (*hi)[2],
                                            const float (*lse)[2], const float (*delta)[2],
                                            int k0, int tq, float scale2)
{
    flash_each<MT, N>([&](int m, int n, int e) {
        int i = e >> 1, key = k0 + 8 * n + 2 * tq + (e & 1);
        float p = !MASKED || (key >= lo[m][i] && key <= hi[m][i])
                      ? exp2f(s[m][n][e] * scale2 - lse[m][i])
                      : 0.0f;
        s[m][n][e] = p * (dp[m][n][e] - delta[m][i]);
    });
}

// A query tile's rows as dK and dV see them in shared memory: each row's lse (base 2), delta
// and first key, from row r0; the columns at hand start at c0 of the tile.
struct flash_stats {
    const float *lse, *delta;
    const int *lo;
    int r0, c0;
};

// P^T and dS^T = P^T (dP^T - delta) for a warp's MT m-tiles of keys from sw against the query
// rows r.r0 + r.c0 .. + 8 N - 1: st (S^T) becomes P^T, dpt (dP^T) dS^T. MASKED: 0 where the key
// is past s_last, after the row, or before the row's first key; else every pair is visible.
template <bool MASKED, int MT, int N>
__device__ __forceinline__ void flash_dkdv_ds(float (*st)[N][4], float (*dpt)[N][4],
                                              const flash_stats &r, int sw, int s_last, int g,
                                              int tq, float scale2)
{
    flash_each<MT, N>([&](int m, int n, int e) {
        int s = sw + 16 * m + g + 8 * (e >> 1);
        int col = r.c0 + 8 * n + 2 * tq + (e & 1), t = r.r0 + col;
        bool visible = !MASKED || (s <= s_last && s <= t && s >= r.lo[col]);
        float p = visible ? exp2f(st[m][n][e] * scale2 - r.lse[col]) : 0.0f;
        st[m][n][e] = p;                                    // P^T
        dpt[m][n][e] = p * (dpt[m][n][e] - r.delta[col]);   // dS^T
    });
}

// ---- dQ -------------------------------------------------------------------------------------

// dq = scale sum_s dS k_s, dS = P (dP - delta), P = exp(q.k scale - lse), dP = dout.v.
// Overwrites dq (or its bf16 values alone, dq16, where dq is NULL). q, k in TQ (the scores);
// dout, v bf16 (dP); dS K's B is k's row tile, transposed as it loads, where k is bf16, else
// kt (B, Hkv, D, Tp) bf16, k transposed (not read where k is bf16).
// A key tile goes in two halves of 32 keys, to keep S and dP to fewer registers.
// Grid (ceil(T / flash_mma_rows(D)), Hq, B), flash_mma_dq_shared(D) bytes.
template <int NCH, class TQ = __half>
__global__ void __launch_bounds__(FL_THREADS)
flash_mma_dq_kernel(float *dq, __nv_bfloat16 *dq16, const __nv_bfloat16 *dout, const TQ *q,
                    const TQ *k,
                    const __nv_bfloat16 *v, const __nv_bfloat16 *kt, const float *lse,
                    const float *delta, int T, int Tp, int Hq, int Hkv, int window,
                    const int32_t *seg_start, float scale)
{
#if FLASH_BODY
    constexpr int D = NCH * 16, LDH = D + 8, ND = D / 8, MT = flash_mma_mt(D);
    constexpr int BM = flash_mma_rows(D), WM = 16 * MT, KW = FL_TILE / 2;
    PESC_DYNAMIC_SHARED(flash_smem);
    unsigned char *smem = flash_smem;
    TQ *qs = flash_tile<TQ>(smem, D, 0);
    __nv_bfloat16 *dos = flash_tile(smem, D, MT);
    unsigned char *steps = smem + 2 * MT * flash_tile_bytes(D);   // k, v, k^T: two tiles' worth
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;

    int h = blockIdx.y, b = blockIdx.z, kvh = h / (Hq / Hkv);
    int t0 = (gridDim.x - 1 - blockIdx.x) * BM, tw = t0 + WM * warp;   // the longest first
    const int32_t *seg = seg_start ? seg_start + (size_t)b * T : NULL;
    size_t q_stride = (size_t)Hq * D, kv_stride = (size_t)Hkv * D;
    size_t q_off = (size_t)b * T * q_stride + (size_t)h * D;
    size_t kv_off = (size_t)b * T * kv_stride + (size_t)kvh * D;
    constexpr bool K16 = std::is_same<TQ, __nv_bfloat16>::value;   // dS K's B from k's rows
    const __nv_bfloat16 *ktb = K16 ? NULL : kt + ((size_t)b * Hkv + kvh) * D * Tp;

    int lo[MT][2], hi[MT][2];
    flash_lane_rows<MT>(lo, hi, tw, g, T, window, seg);
    float lse_r[MT][2], delta_r[MT][2];
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int i = 0; i < 2; i++) {
            int t = tw + 16 * m + g + 8 * i;
            size_t at = ((size_t)b * Hq + h) * T + t;
            lse_r[m][i] = t < T ? lse[at] * FM_LOG2E : 0.0f;   // base 2, as the scores below
            delta_r[m][i] = t < T ? delta[at] : 0.0f;
        }
    bool warp_live = tw < T;
    int warp_lo = warp_live ? flash_first_key(tw, window, seg) : 0;
    int warp_hi = min(tw + WM - 1, T - 1);
    int key_lo = flash_tile_start(flash_first_key(t0, window, seg));
    int key_hi = min(t0 + BM - 1, T - 1);
    const float scale2 = scale * FM_LOG2E;
    float acc[MT][ND][4];
    flash_zero<MT, ND>(acc);

    int tiles = (key_hi - key_lo) / FL_TILE + 1;
    auto fetch = [&](int it) {   // key tile it into its buffer
        unsigned char *at = steps + (it & 1) * flash_mma_dq_step(D);
        int s0 = key_lo + FL_TILE * it;
        flash_copy_tile<D>((TQ *)at, k + kv_off, kv_stride, s0, T);
        flash_copy_tile<D>((__nv_bfloat16 *)(at + flash_tile_bytes(D)), v + kv_off, kv_stride, s0,
                           T);
        if (!K16)
            flash_copy_tile_t<D>((__nv_bfloat16 *)(at + 2 * flash_tile_bytes(D)), ktb + s0, Tp);
    };
    flash_copy_rows<D, MT>(qs, q + q_off, q_stride, t0, T);
    flash_copy_rows<D, MT>(dos, dout + q_off, q_stride, t0, T);
    flash_walk_keys(key_lo, tiles, warp_live, warp_lo, warp_hi, fetch, [&](int it, int s0) {
        const unsigned char *at = steps + (it & 1) * flash_mma_dq_step(D);
        const TQ *ks = (const TQ *)at;
        const __nv_bfloat16 *vs = (const __nv_bfloat16 *)(at + flash_tile_bytes(D));
        const __nv_bfloat16 *kts = (const __nv_bfloat16 *)(at + 2 * flash_tile_bytes(D));
        bool full = flash_tile_full(s0, tw, WM, T, window, seg);
#pragma unroll
        for (int c0 = 0; c0 < FL_TILE; c0 += KW) {
            float s[MT][KW / 8][4], dp[MT][KW / 8][4];
            flash_s_dp<TQ, MT, KW / 8, NCH>(s, dp, qs, dos, ks, vs, LDH, WM * warp, c0, g, tq);
            if (full)
                flash_dq_ds<false, MT, KW / 8>(s, dp, lo, hi, lse_r, delta_r, s0 + c0, tq, scale2);
            else
                flash_dq_ds<true, MT, KW / 8>(s, dp, lo, hi, lse_r, delta_r, s0 + c0, tq, scale2);
            if (K16)
                flash_mma_pv<__nv_bfloat16, MT, KW / 16, ND, KW / 8, true>(
                    acc, s, (const __nv_bfloat16 *)ks, c0, g, tq, LDH);
            else
                flash_mma_pv<__nv_bfloat16, MT, KW / 16, ND, KW / 8>(acc, s, kts, c0, g, tq);
        }
    });
    flash_write_acc_to<MT, ND>(dq, dq16, q_off, q_stride, acc, tw, T, scale, g, tq);
#endif
}

// The warp's dS^T (C fragments: keys krow + 16 m + g + 8 i of a stored tile, queries
// c0 + 8 n + 2 t and the next) into the tile, in bf16 as the dK product rounds it.
template <int MT, int N>
__device__ __forceinline__ void flash_store_ds(__nv_bfloat16 *tile, const float (*dst)[N][4],
                                               int krow, int c0, int g, int t)
{
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int i = 0; i < 2; i++) {
            __nv_bfloat16 *row = tile + (size_t)(krow + 16 * m + g + 8 * i) * FL_TILE + c0 + 2 * t;
#pragma unroll
            for (int n = 0; n < N; n++)
                *(uint32_t *)(row + 8 * n) =
                    flash_pack<__nv_bfloat16>(dst[m][n][2 * i], dst[m][n][2 * i + 1]);
        }
}

// Zeros for the warp's WM keys from krow of a stored tile, every query: a tile the warp skips.
template <int WM> __device__ __forceinline__ void flash_zero_ds(__nv_bfloat16 *tile, int krow,
                                                                 int lane)
{
    for (int i = lane; i < WM * FL_TILE / 8; i += 32)
        PESC_STORE_16(tile + (size_t)(krow + i / (FL_TILE / 8)) * FL_TILE + 8 * (i % (FL_TILE / 8)),
                      make_uint4(0, 0, 0, 0));
}

// ---- dK, dV ---------------------------------------------------------------------------------

// dk = scale sum_t dS q_t, dv = sum_t P dout_t over the rows t of query head h = blockIdx.y,
// written (B*T, Hq, D) at head h, or in bf16 to dk16, dv16 where dk, dv are NULL
// (flash_group_sum_kernel adds a group's parts; cuda_flash.cuh says why a block takes one query
// head). The warp's keys are the rows of S^T = K Q^T and
// dP^T = V dO^T, so P^T and dS^T come out as A fragments for dV = P^T dO and dK = dS^T Q, whose
// B operands are dout and q along their rows. A query tile goes in two parts of 32 rows, one after
// the other (not unrolled), to keep S^T and dP^T to fewer registers beside dK and dV. k, q
// in TQ (the scores); v, dout bf16 (dP). dV's B is dout's row tile, transposed as it loads
// (flash_b_frag2_t), and so is dK's, q's, where q is bf16; with half q, dK's B is qt (B, Hq, D,
// Tp) bf16, q transposed (else not read). ds: NULL, or where dS^T
// is stored for flash_mma_dq_ds_kernel (B, Hq, flash_ds_tiles(T) tiles of FL_DS_TILE), read
// only in the STORE_DS instance: the other's code is as without it, for at D 64 the kernel's
// registers are at ptxas's limit (sm_90: the STORE_DS instance spills 16 bytes there). Grid
// (ceil(T / flash_mma_rows(D)), Hq, B), flash_mma_dkdv_shared(D) bytes.
template <int NCH, class TQ = __half, bool STORE_DS = false>
__global__ void __launch_bounds__(FL_THREADS)
flash_mma_dkdv_kernel(float *dk, float *dv, __nv_bfloat16 *dk16, __nv_bfloat16 *dv16,
                      const __nv_bfloat16 *dout, const TQ *q,
                      const TQ *k, const __nv_bfloat16 *v, const __nv_bfloat16 *qt,
                      const float *lse, const float *delta, int T,
                      int Tp, int Hq, int Hkv, int window, const int32_t *seg_start, float scale,
                      __nv_bfloat16 *ds)
{
#if FLASH_BODY
    constexpr int D = NCH * 16, LDH = D + 8, ND = D / 8, MT = flash_mma_mt(D);
    constexpr int BM = flash_mma_rows(D), WM = 16 * MT, QW = 32;
    PESC_DYNAMIC_SHARED(flash_smem);
    unsigned char *smem = flash_smem;
    TQ *ks = flash_tile<TQ>(smem, D, 0);
    __nv_bfloat16 *vs = flash_tile(smem, D, MT);
    // q, dout, q^T (where q is half) and the rows' statistics: two query tiles' worth
    unsigned char *steps = smem + 2 * MT * flash_tile_bytes(D);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;

    int h = blockIdx.y, b = blockIdx.z, kvh = h / (Hq / Hkv);
    int s0 = blockIdx.x * BM, sw = s0 + WM * warp;   // the block's and the warp's keys
    int s_last = min(s0 + BM - 1, T - 1);
    const int32_t *seg = seg_start ? seg_start + (size_t)b * T : NULL;
    size_t q_stride = (size_t)Hq * D, kv_stride = (size_t)Hkv * D;
    size_t kv_off = (size_t)b * T * kv_stride + (size_t)kvh * D;
    size_t q_off = (size_t)b * T * q_stride + (size_t)h * D;
    constexpr bool Q16 = std::is_same<TQ, __nv_bfloat16>::value;   // dK's B from q's rows
    const __nv_bfloat16 *qtb = Q16 ? NULL : qt + ((size_t)b * Hq + h) * D * Tp;
    const float *lse_h = lse + ((size_t)b * Hq + h) * T;
    const float *delta_h = delta + ((size_t)b * Hq + h) * T;

    bool warp_live = sw < T;
    int warp_last = min(sw + WM - 1, T - 1);
    const float scale2 = scale * FM_LOG2E;
    float dk_acc[MT][ND][4], dv_acc[MT][ND][4];
    flash_zero<MT, ND>(dk_acc);
    flash_zero<MT, ND>(dv_acc);

    // rows from the first key on, until a row's first visible key passes the last key (the
    // first keys only grow with the row)
    int tiles = 0;
    while (s0 + FL_TILE * tiles < T &&
           flash_first_key(s0 + FL_TILE * tiles, window, seg) <= s_last)
        tiles++;
    auto fetch = [&](int it) {   // query tile it into its buffer; its rows' statistics stored
        unsigned char *at = steps + (it & 1) * flash_mma_dkdv_step(D);
        int r0 = s0 + FL_TILE * it;
        flash_copy_tile<D>((TQ *)at, q + q_off, q_stride, r0, T);
        flash_copy_tile<D>((__nv_bfloat16 *)(at + flash_tile_bytes(D)), dout + q_off, q_stride,
                           r0, T);
        unsigned char *t_at = at + 2 * flash_tile_bytes(D);
        if (!Q16)
            flash_copy_tile_t<D>((__nv_bfloat16 *)t_at, qtb + r0, Tp);
        float *lse_s = (float *)(t_at + flash_ttile_bytes(D)), *delta_s = lse_s + FL_TILE;
        int *lo_s = (int *)(delta_s + FL_TILE);
        for (int j = threadIdx.x; j < FL_TILE; j += FL_THREADS) {
            int t = r0 + j;
            bool in = t < T;
            lse_s[j] = in ? lse_h[t] * FM_LOG2E : 0.0f;   // base 2, as the scores below
            delta_s[j] = in ? delta_h[t] : 0.0f;
            lo_s[j] = in ? flash_first_key(t, window, seg) : INT_MAX;
        }
    };
    flash_copy_rows<D, MT>(ks, k + kv_off, kv_stride, s0, T);
    flash_copy_rows<D, MT>(vs, v + kv_off, kv_stride, s0, T);
    if (tiles > 0)
        fetch(0);
    flash_cp_commit();

    for (int it = 0; it < tiles; it++) {
        int r0 = s0 + FL_TILE * it;
        flash_next_tile(it, tiles, fetch);
        const unsigned char *at = steps + (it & 1) * flash_mma_dkdv_step(D);
        const TQ *qs = (const TQ *)at;
        const __nv_bfloat16 *dos = (const __nv_bfloat16 *)(at + flash_tile_bytes(D));
        const unsigned char *t_at = at + 2 * flash_tile_bytes(D);
        const __nv_bfloat16 *qts = (const __nv_bfloat16 *)t_at;
        const float *lse_s = (const float *)(t_at + flash_ttile_bytes(D));
        const float *delta_s = lse_s + FL_TILE;
        const int *lo_s = (const int *)(delta_s + FL_TILE);
        // the stored dS^T: the warp's keys are rows sw % 64 .. of key tile sw / 64, in the
        // tile of these rows where it is in the triangle (a key tile after every query tile,
        // as a block's last warps past T's tiles are, is never stored); made from the
        // parameters here, as the registers are short
        int ds_kt = sw / FL_TILE, ds_qt = r0 / FL_TILE;
        __nv_bfloat16 *ds_tile =
            STORE_DS && ds_kt <= ds_qt
                ? ds + (((size_t)b * Hq + h) * flash_ds_tiles(T) + flash_ds_index(ds_qt, ds_kt)) *
                           FL_DS_TILE
                : NULL;
        // warp-uniform: rows all before the warp's first key, or all starting past its last
        if (!warp_live || r0 + FL_TILE - 1 < sw || lo_s[0] > warp_last) {
            if (STORE_DS && ds_tile)
                flash_zero_ds<WM>(ds_tile, sw % FL_TILE, lane);
            continue;
        }
        // every key of the warp's before T, at or before the tile's first row, and at or after
        // its last row's first key (first keys only grow with the row): no masks
        bool full = sw + WM - 1 <= s_last && sw + WM - 1 <= r0 && lo_s[FL_TILE - 1] <= sw;
#pragma unroll 1
        for (int c0 = 0; c0 < FL_TILE; c0 += QW) {
            float st[MT][QW / 8][4], dpt[MT][QW / 8][4];   // S^T, dP^T
            flash_s_dp<TQ, MT, QW / 8, NCH>(st, dpt, ks, vs, qs, dos, LDH, WM * warp, c0, g, tq);
            flash_stats rows = {lse_s, delta_s, lo_s, r0, c0};
            if (full)
                flash_dkdv_ds<false, MT, QW / 8>(st, dpt, rows, sw, s_last, g, tq, scale2);
            else
                flash_dkdv_ds<true, MT, QW / 8>(st, dpt, rows, sw, s_last, g, tq, scale2);
            flash_mma_pv<__nv_bfloat16, MT, QW / 16, ND, QW / 8, true>(dv_acc, st, dos, c0, g, tq,
                                                                       LDH);
            if (Q16)
                flash_mma_pv<__nv_bfloat16, MT, QW / 16, ND, QW / 8, true>(
                    dk_acc, dpt, (const __nv_bfloat16 *)qs, c0, g, tq, LDH);
            else
                flash_mma_pv<__nv_bfloat16, MT, QW / 16, ND, QW / 8>(dk_acc, dpt, qts, c0, g, tq);
            if (STORE_DS && ds_tile)   // last: S^T is no longer held
                flash_store_ds<MT, QW / 8>(ds_tile, dpt, sw % FL_TILE, c0, g, tq);
        }
    }
    flash_write_acc_to<MT, ND>(dk, dk16, q_off, q_stride, dk_acc, sw, T, scale, g, tq);
    flash_write_acc_to<MT, ND>(dv, dv16, q_off, q_stride, dv_acc, sw, T, 1.0f, g, tq);
#endif
}

// ---- dQ from the stored dS ------------------------------------------------------------------

// dq = scale sum_s dS k_s, dS^T from the tiles flash_mma_dkdv_kernel stored (ds): one product a
// key tile, A (dS: query rows, keys along k) through ldmatrix .trans from the tile's key rows,
// B from kt (B, Hkv, D, Tp) bf16. Masked pairs are stored as 0: no masks here. Overwrites dq
// (or dq16 where dq is NULL). A block's rows and the key tiles it walks are
// flash_mma_dq_kernel's. Grid (ceil(T / flash_mma_rows(D)), Hq, B), flash_mma_dq_ds_shared(D)
// bytes.
// 4 blocks a multiprocessor, which their shared memory allows: at most 128 registers (ptxas,
// sm_90: 8 bytes spilled at D 128, none below)
template <int NCH>
__global__ void __launch_bounds__(FL_THREADS, 4)
flash_mma_dq_ds_kernel(float *dq, __nv_bfloat16 *dq16, const __nv_bfloat16 *ds,
                       const __nv_bfloat16 *kt, int T, int Tp, int Hq, int Hkv, int window,
                       const int32_t *seg_start, float scale)
{
#if FLASH_BODY
    constexpr int D = NCH * 16, ND = D / 8, MT = flash_mma_mt(D);
    constexpr int BM = flash_mma_rows(D), WM = 16 * MT;
    const size_t ds_bytes = flash_round((size_t)FL_TILE * FM_LDT * 2);   // a dS^T tile's
    PESC_DYNAMIC_SHARED(flash_smem);
    unsigned char *smem = flash_smem;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;

    int h = blockIdx.y, b = blockIdx.z, kvh = h / (Hq / Hkv);
    int t0 = (gridDim.x - 1 - blockIdx.x) * BM, tw = t0 + WM * warp;   // the longest first
    const int32_t *seg = seg_start ? seg_start + (size_t)b * T : NULL;
    size_t q_stride = (size_t)Hq * D;
    size_t q_off = (size_t)b * T * q_stride + (size_t)h * D;
    const __nv_bfloat16 *ktb = kt + ((size_t)b * Hkv + kvh) * D * Tp;
    const __nv_bfloat16 *dsb = ds + ((size_t)b * Hq + h) * flash_ds_tiles(T) * FL_DS_TILE;

    bool warp_live = tw < T;
    int warp_lo = warp_live ? flash_first_key(tw, window, seg) : 0;
    int warp_hi = min(tw + WM - 1, T - 1);
    int key_lo = flash_tile_start(flash_first_key(t0, window, seg));
    int key_hi = min(t0 + BM - 1, T - 1);
    int qt0 = t0 / FL_TILE, cq = tw % FL_TILE;   // the block's first query tile; the warp's
                                                 // first row in its tile
    float acc[MT][ND][4];
    flash_zero<MT, ND>(acc);

    int tiles = (key_hi - key_lo) / FL_TILE + 1;
    auto fetch = [&](int it) {   // key tile it: the block's query tiles' dS^T tiles, and k^T
        unsigned char *at = smem + (it & 1) * flash_mma_dq_ds_step(D);
        int s0 = key_lo + FL_TILE * it, kt_i = s0 / FL_TILE;
        // a tile past T, before the keys, or whose rows all start after them is never read
        for (int m = 0; m < MT; m++)
            if ((qt0 + m) * FL_TILE < T && kt_i <= qt0 + m &&
                flash_first_key((qt0 + m) * FL_TILE, window, seg) <= s0 + FL_TILE - 1)
                flash_copy_tile_t<FL_TILE>((__nv_bfloat16 *)(at + m * ds_bytes),
                                           dsb + flash_ds_index(qt0 + m, kt_i) * FL_DS_TILE,
                                           FL_TILE);
        flash_copy_tile_t<D>((__nv_bfloat16 *)(at + MT * ds_bytes), ktb + s0, Tp);
    };
    flash_walk_keys(key_lo, tiles, warp_live, warp_lo, warp_hi, fetch, [&](int it, int) {
        const unsigned char *at = smem + (it & 1) * flash_mma_dq_ds_step(D);
        const __nv_bfloat16 *dsts = (const __nv_bfloat16 *)(at + (tw - t0) / FL_TILE * ds_bytes);
        const __nv_bfloat16 *kts = (const __nv_bfloat16 *)(at + MT * ds_bytes);
#pragma unroll
        for (int kk = 0; kk < FL_TILE; kk += 16) {
            // A's four 8 x 8 matrices (queries 0-7, keys 0-7), (8-15, 0-7), (0-7, 8-15),
            // (8-15, 8-15): lane l gives key row kk + 8 (l / 16) + l % 8 at query 8 (l / 8 % 2)
            // of the m-tile's 16, transposed as it loads
            uint32_t af[MT][4];
#pragma unroll
            for (int m = 0; m < MT; m++)
                flash_ldmatrix<true>(af[m], dsts + (kk + 8 * (lane / 16) + lane % 8) * FM_LDT +
                                                 cq + 16 * m + 8 * (lane / 8 % 2));
#pragma unroll
            for (int n = 0; n < ND; n += 2) {
                uint32_t b0[2], b1[2];
                flash_b_frag2(b0, b1, kts, FM_LDT, 8 * n, kk, lane);
#pragma unroll
                for (int m = 0; m < MT; m++) {
                    flash_mma<__nv_bfloat16>(acc[m][n], af[m], b0);
                    flash_mma<__nv_bfloat16>(acc[m][n + 1], af[m], b1);
                }
            }
        }
    });
    flash_write_acc_to<MT, ND>(dq, dq16, q_off, q_stride, acc, tw, T, scale, g, tq);
#endif
}

// ---- the layout check ------------------------------------------------------------------------

// One warp: d (16 x 8, row-major) = a (16 x 16, row-major) times the first 8 columns of b (16 x
// 16, row-major) through flash_mma in T, each lane loading and storing its fragments as
// documented above; then from shared memory as the kernels load them, d + 128 c = a times
// b's columns 8 c .. 8 c + 7: blocks 1 and 2 through ldmatrix from b^T's rows (flash_a_frag_ld,
// flash_b_frag2), 3 and 4 through ldmatrix .trans from b's (flash_b_frag2_t). The caller
// compares the 5 blocks with the products it computes itself. FLASH_PROBE_SHARED bytes of
// shared memory.
#define FLASH_PROBE_BLOCKS 5
#define FLASH_PROBE_SHARED (3 * 16 * 24 * 2)
template <class T>
__global__ void flash_mma_probe_kernel(float *d, const T *a, const T *b)
{
    PESC_DYNAMIC_SHARED(flash_smem);
    T *as = (T *)flash_smem, *bts = as + 16 * 24, *bs = bts + 16 * 24;   // rows of 24: a, b^T, b
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    for (int i = lane; i < 16 * 16; i += 32) {
        int r = i / 16, col = i % 16;
        as[r * 24 + col] = a[i];
        bts[r * 24 + col] = b[col * 16 + r];
        bs[r * 24 + col] = b[i];
    }
    __syncthreads();
    uint32_t af[2][4], bf[FLASH_PROBE_BLOCKS][2];
    flash_a_frag(af[0], a, 16, 0, 0, g, t);
    T col[4] = {b[(2 * t) * 16 + g], b[(2 * t + 1) * 16 + g], b[(2 * t + 8) * 16 + g],
                b[(2 * t + 9) * 16 + g]};
    bf[0][0] = flash_bits(col[0]) | flash_bits(col[1]) << 16;
    bf[0][1] = flash_bits(col[2]) | flash_bits(col[3]) << 16;
    flash_a_frag_ld(af[1], as, 24, 0, 0, lane);
    flash_b_frag2(bf[1], bf[2], bts, 24, 0, 0, lane);
    flash_b_frag2_t(bf[3], bf[4], bs, 24, 0, 0, lane);
    for (int i = 0; i < FLASH_PROBE_BLOCKS; i++) {
        float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        flash_mma<T>(c, af[i > 0], bf[i]);
        float *out = d + 128 * i;
        out[g * 8 + 2 * t] = c[0];
        out[g * 8 + 2 * t + 1] = c[1];
        out[(g + 8) * 8 + 2 * t] = c[2];
        out[(g + 8) * 8 + 2 * t + 1] = c[3];
    }
}

#endif
