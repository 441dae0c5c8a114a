// cuda_flash — causal grouped-query attention for training on the tensor cores: half and bf16
// operands with fp32 accumulation through nvcuda::wmma (16 x 16 x 16 tiles), flash-attention
// style. Forward (with the log-sum-exp for the backward), dQ, and dK/dV; nothing T x T is
// stored. PESC_CUDA_ATTENTION=flash-wmma picks it, and flash where the device's mma.sync
// disagrees with cuda_flash_mma.cuh's layout (cuda_attention.cu launches it), for head
// dimensions 32, 64, 96 and 128 on sm_80 or later; other shapes stay on the fused fp32 kernels.
// cuda_flash_mma.cuh's kernels do the same work with the scores in registers.
//
// The launcher converts the fp32 tensors once into the operands' types (convert_kernel:
// a key would otherwise be converted again by every query tile of every head of its group),
// and tiles load those 16 bytes at a time. Scores, softmax statistics and every accumulator
// are fp32. The scores' operands q and k are half (11 bits of mantissa): the exponential
// multiplies their error, and with bf16 (8 bits) a whole step's LoRA gradients fell to a
// cosine of 0.996 against the CPU's; with half it is 0.99993, better than q and k split into
// bf16 hi + lo at three products a tile. The forward's P (in [0, 1]) and v are half too. The
// backward's other operands (dout, and dS = P (dP - delta) with the k or q it multiplies, and
// P with dout) are bf16: gradients are small numbers, beneath half's normal range.
//
// A wmma accumulator's elements sit in lanes in an unspecified order, so whatever needs rows
// (masks, softmax, the rescaling of the output) goes through shared memory: a warp stores its
// 16 x 64 scores, works on them with two lanes per row (lane 2r and 2r + 1 take row r, 32
// columns each), and reloads the probabilities as the next product's operand. Accumulators
// that only grow (dQ, dK, dV) stay in fragments across the loop; the forward's output is
// rescaled at every tile, so it lives in shared memory.
//
// Work: 4 warps a block, 16 rows a warp, 64 keys (or query rows) a shared tile.
//  - forward, dQ: a block takes 64 query rows of one (sequence, head) and walks the keys they
//    can see; dQ recomputes P from the saved log-sum-exp. The last rows, which see the most
//    keys, go first.
//  - dK, dV: a block takes 64 keys of one (sequence, query head), each warp 16, and walks every
//    query row of that head that sees them; with grouped heads a second kernel adds the
//    group's parts in head order. Each output is written once, by its owner, in a fixed order:
//    deterministic, no atomics.
// Masks as on the CPU (first_key: sliding window and packed documents' starts).
//
// The kernels keep to a subset that tests/emu/cuda_emu.h runs on the CPU (tests/test_flash_emu
// checks them against the CPU backend in make check): wmma, __syncthreads, __syncwarp,
// __shfl_xor_sync, dynamic shared memory through PESC_DYNAMIC_SHARED, and no early return.
#ifndef PESC_CUDA_FLASH_CUH
#define PESC_CUDA_FLASH_CUH

#include <climits>
#include <stddef.h>
#include <stdint.h>

#include "cuda/cuda_api.cuh"
#include "cuda/cuda_convert.cuh"
#ifndef PESC_CUDA_EMU
#include <mma.h>
#endif

// wmma's bf16 tiles need sm_80. Built for an older architecture the kernels are empty, and
// cuda_attention.cu does not launch them (it asks which architecture the binary has).
#if !defined(PESC_CUDA_EMU) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define FLASH_BODY 0
#else
#define FLASH_BODY 1
#endif

#define FL_WARPS 4
#define FL_THREADS (FL_WARPS * 32)
#define FL_TILE 64                 // query rows a block (forward, dQ), keys a block (dK, dV),
                                   // and keys / query rows a shared tile
#define FL_MAX_D 128
#define FL_LDP (FL_TILE + 8)       // probabilities (half or bf16), a warp's 16 rows
#define FL_LDS(D) ((D) + 4 > FL_TILE + 4 ? (D) + 4 : FL_TILE + 4)   // fp32 scores / outputs

// Shapes the kernels take: D 32, 64, 96 or 128 (each lane of a row's pair takes D / 2 columns
// of whole 16-wide chunks), whole groups of query heads.
__host__ __device__ inline bool flash_shape_ok(int D, int Hq, int Hkv)
{
    return D >= 32 && D <= FL_MAX_D && D % 32 == 0 && Hkv >= 1 && Hq % Hkv == 0;
}

__device__ __forceinline__ int flash_first_key(int p, int window, const int32_t *seg)
{
    int lo = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
    return seg && seg[p] > lo ? seg[p] : lo;
}

// Shared memory: regions in bytes, each a multiple of 128 so every wmma pointer is aligned.
__host__ __device__ inline size_t flash_round(size_t bytes) { return (bytes + 127) & ~(size_t)127; }
__host__ __device__ inline size_t flash_tile_bytes(int D)   // (64, D + 8) bf16
{
    return flash_round((size_t)FL_TILE * (D + 8) * 2);
}
__host__ __device__ inline size_t flash_warp_f32(int D)     // a warp's (16, FL_LDS) fp32
{
    return flash_round((size_t)16 * FL_LDS(D) * 4);
}
__host__ __device__ inline size_t flash_warp_p()           // a warp's (16, FL_LDP) P or dS
{
    return flash_round((size_t)16 * FL_LDP * 2);
}
// The i-th (64, D + 8) tile of 2-byte elements (bf16 or half) from the start of a block's
// shared memory.
template <class T = __nv_bfloat16>
__device__ __forceinline__ T *flash_tile(unsigned char *smem, int D, int i)
{
    return (T *)(smem + (size_t)i * flash_tile_bytes(D));
}
__host__ __device__ inline size_t flash_forward_shared(int D)
{
    return 3 * flash_tile_bytes(D) + FL_WARPS * (2 * flash_warp_f32(D) + flash_warp_p());
}
__host__ __device__ inline size_t flash_dq_shared(int D)
{
    return 5 * flash_tile_bytes(D) + FL_WARPS * (2 * flash_warp_f32(D) + flash_warp_p());
}
__host__ __device__ inline size_t flash_dkdv_shared(int D)
{
    return 5 * flash_tile_bytes(D) + flash_round(3 * FL_TILE * 4) +
           FL_WARPS * (2 * flash_warp_f32(D) + 2 * flash_warp_p());
}

// rows (64, D + 8) of src's rows row0 .. row0 + 63 (row i at src + i * stride), zeros past
// `rows`, 16 bytes a load: src 16-byte aligned, stride a multiple of 8. The whole block calls it.
template <int D, class T>
__device__ __forceinline__ void flash_load_tile(T *dst, const T *src, size_t stride, int row0,
                                                int rows)
{
    constexpr int V = D / 8;   // 16-byte vectors a row
    for (int i = threadIdx.x; i < FL_TILE * V; i += FL_THREADS) {
        int r = i / V, d = 8 * (i % V);
        uint4 x = row0 + r < rows ? PESC_LOAD_16(src + (size_t)(row0 + r) * stride + d)
                                  : make_uint4(0, 0, 0, 0);   // +0 in half and bf16
        PESC_STORE_16(dst + r * (D + 8) + d, x);
    }
}

namespace flash_wmma = nvcuda::wmma;
template <class T>
using flash_a_row = flash_wmma::fragment<flash_wmma::matrix_a, 16, 16, 16, T, flash_wmma::row_major>;
template <class T>
using flash_b_row = flash_wmma::fragment<flash_wmma::matrix_b, 16, 16, 16, T, flash_wmma::row_major>;
template <class T>
using flash_b_col = flash_wmma::fragment<flash_wmma::matrix_b, 16, 16, 16, T, flash_wmma::col_major>;
typedef flash_wmma::fragment<flash_wmma::accumulator, 16, 16, 16, float> flash_acc;

// out (16, 64) fp32 at ld FL_LDS(D) = a (16, D) @ b (64, D)^T: a's rows at lda, b's at ldb.
// Half for the scores (a score off by 0.01 is a probability off by 1%), bf16 for dP.
template <int NCH, class T>
__device__ __forceinline__ void flash_abt(float *out, const T *a, int lda, const T *b, int ldb)
{
    constexpr int D = NCH * 16;
#pragma unroll
    for (int n = 0; n < FL_TILE / 16; n++) {
        flash_acc acc;
        flash_wmma::fill_fragment(acc, 0.0f);
        size_t bn = (size_t)16 * n * ldb;
#pragma unroll
        for (int c = 0; c < NCH; c++) {
            flash_a_row<T> fa;
            flash_b_col<T> fb;   // B[k][j] = b[(16 n + j) ldb + 16 c + k]
            flash_wmma::load_matrix_sync(fa, a + 16 * c, lda);
            flash_wmma::load_matrix_sync(fb, b + bn + 16 * c, ldb);
            flash_wmma::mma_sync(acc, fa, fb, acc);
        }
        flash_wmma::store_matrix_sync(out + 16 * n, acc, FL_LDS(D), flash_wmma::mem_row_major);
    }
}

// acc[c] (+)= p (16, 64) at FL_LDP @ b (64, D) at ldb, column chunk c of 16.
template <int NCH, class T>
__device__ __forceinline__ void flash_pb(flash_acc *acc, const T *p, const T *b, int ldb)
{
#pragma unroll
    for (int n = 0; n < FL_TILE / 16; n++) {
        flash_a_row<T> fa;
        flash_wmma::load_matrix_sync(fa, p + 16 * n, FL_LDP);
#pragma unroll
        for (int c = 0; c < NCH; c++) {
            flash_b_row<T> fb;   // B[k][j] = b[(16 n + k) ldb + 16 c + j]
            flash_wmma::load_matrix_sync(fb, b + (size_t)16 * n * ldb + 16 * c, ldb);
            flash_wmma::mma_sync(acc[c], fa, fb, acc[c]);
        }
    }
}

// Rows t of the warp's 16 (row0 + i) that exist write their D values from stage (16, FL_LDS)
// to element off + t * stride, times mul: of dst in fp32, or of dst16 in bf16 where dst is NULL
// (a tensor kept in bf16 alone). The warp calls it after its stores into stage.
template <int NCH>
__device__ __forceinline__ void flash_write_rows(float *dst, __nv_bfloat16 *dst16, size_t off,
                                                 size_t stride, const float *stage, int row0,
                                                 int rows, float mul)
{
    constexpr int D = NCH * 16;
    int lane = threadIdx.x & 31;
    for (int i = lane; i < 16 * D; i += 32) {
        int r = i / D, d = i % D;
        if (row0 + r >= rows)
            continue;
        float x = stage[r * FL_LDS(D) + d] * mul;
        size_t at = off + (size_t)(row0 + r) * stride + d;
        if (dst)
            dst[at] = x;
        else
            dst16[at] = operand_cvt<__nv_bfloat16>(x);
    }
}

// ---- forward --------------------------------------------------------------------------------

// q, out (B*T, Hq, D); k, v (B*T, Hkv, D), all half (convert_kernel); out in fp32, or NULL
// and in bf16 alone (out16); seg (B, T) or NULL; lse (B, Hq, T) or NULL. Grid (ceil(T / 64),
// Hq, B), FL_THREADS threads, flash_forward_shared(D) bytes.
template <int NCH>
__global__ void __launch_bounds__(FL_THREADS)
flash_forward_kernel(float *out, __nv_bfloat16 *out16, float *lse, const __half *q,
                     const __half *k, const __half *v, int T, int Hq, int Hkv, int window,
                     const int32_t *seg_start, float scale)
{
#if FLASH_BODY
    constexpr int D = NCH * 16, LDH = D + 8, LDS = FL_LDS(D);
    PESC_DYNAMIC_SHARED(flash_smem);
    unsigned char *smem = flash_smem;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    // all half: q, k for the scores; P (in [0, 1]) and v for P V
    __half *qs = flash_tile<__half>(smem, D, 0), *ks = flash_tile<__half>(smem, D, 1);
    __half *vs = flash_tile<__half>(smem, D, 2);
    unsigned char *mine = (unsigned char *)flash_tile(smem, D, 3) +
                          warp * (2 * flash_warp_f32(D) + flash_warp_p());
    float *ss = (float *)mine;                                  // scores, then P V
    float *os = (float *)(mine + flash_warp_f32(D));            // the output so far
    __half *ps = (__half *)(mine + 2 * flash_warp_f32(D));

    int h = blockIdx.y, b = blockIdx.z, g = h / (Hq / Hkv);
    // the last query tiles first: they see the most keys, and started last they would be the
    // step's tail
    int t0 = (gridDim.x - 1 - blockIdx.x) * FL_TILE, tw = t0 + 16 * warp;
    const int32_t *seg = seg_start ? seg_start + (size_t)b * T : NULL;
    size_t q_stride = (size_t)Hq * D, kv_stride = (size_t)Hkv * D;
    const __half *qb = q + (size_t)b * T * q_stride + (size_t)h * D;
    const __half *kb = k + (size_t)b * T * kv_stride + (size_t)g * D;
    const __half *vb = v + (size_t)b * T * kv_stride + (size_t)g * D;

    flash_load_tile<D>(qs, qb, q_stride, t0, T);
    for (int i = lane; i < 16 * LDS; i += 32)
        os[i] = 0.0f;
    // lanes 2r, 2r + 1: row r of the warp, columns 32 half .. 32 half + 31 of a tile
    int r = lane >> 1, half = lane & 1, t = tw + r;
    int lo = t < T ? flash_first_key(t, window, seg) : 0, hi = t < T ? t : -1;
    float m = -INFINITY, l = 0.0f;
    // the warp's key range: its first row's first key to its last row
    bool warp_live = tw < T;
    int warp_lo = warp_live ? flash_first_key(tw, window, seg) : 0;
    int warp_hi = min(tw + 15, T - 1);
    int key_lo = flash_first_key(t0, window, seg), key_hi = min(t0 + FL_TILE - 1, T - 1);

    for (int s0 = key_lo; s0 <= key_hi; s0 += FL_TILE) {
        __syncthreads();   // the previous tile is consumed
        flash_load_tile<D>(ks, kb, kv_stride, s0, T);
        flash_load_tile<D>(vs, vb, kv_stride, s0, T);
        __syncthreads();
        if (!warp_live || s0 > warp_hi || s0 + FL_TILE - 1 < warp_lo)
            continue;   // warp-uniform: no row of this warp sees a key of the tile
        flash_abt<NCH>(ss, qs + 16 * warp * LDH, LDH, ks, LDH);
        __syncwarp();
        float x[32], mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < 32; j++) {
            int col = 32 * half + j, s = s0 + col;
            x[j] = s >= lo && s <= hi ? ss[r * LDS + col] * scale : -INFINITY;
            mx = fmaxf(mx, x[j]);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        float m_new = fmaxf(m, mx), alpha = 1.0f, sum = 0.0f;
        bool any = m_new != -INFINITY;   // the same in both lanes of a row
        if (any)
            alpha = expf(m - m_new);
#pragma unroll
        for (int j = 0; j < 32; j++) {
            float p = any && x[j] != -INFINITY ? expf(x[j] - m_new) : 0.0f;
            sum += p;
            ps[r * FL_LDP + 32 * half + j] = operand_cvt<__half>(p);
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        l = l * alpha + sum;
        if (any)
            m = m_new;
        __syncwarp();   // ps written; ss (read above) free for P V
        flash_acc pv[NCH];
#pragma unroll
        for (int c = 0; c < NCH; c++)
            flash_wmma::fill_fragment(pv[c], 0.0f);
        flash_pb<NCH>(pv, ps, vs, LDH);
#pragma unroll
        for (int c = 0; c < NCH; c++)
            flash_wmma::store_matrix_sync(ss + 16 * c, pv[c], LDS, flash_wmma::mem_row_major);
        __syncwarp();
        for (int d = half * (D / 2); d < (half + 1) * (D / 2); d++)
            os[r * LDS + d] = os[r * LDS + d] * alpha + ss[r * LDS + d];
        __syncwarp();   // ss is the next tile's scores
    }
    // out = os / l; the two lanes of a row split its columns
    if (t < T) {
        float inv = 1.0f / l;
        size_t o = ((size_t)b * T + t) * q_stride + (size_t)h * D;
        for (int d = half * (D / 2); d < (half + 1) * (D / 2); d++) {
            if (out)
                out[o + d] = os[r * LDS + d] * inv;
            else
                out16[o + d] = operand_cvt<__nv_bfloat16>(os[r * LDS + d] * inv);
        }
        if (lse && half == 0)
            lse[((size_t)b * Hq + h) * T + t] = m + logf(l);
    }
#endif
}

// ---- dQ -------------------------------------------------------------------------------------

// dq = scale sum_s dS k_s, dS = P (dP - delta), P = exp(q.k scale - lse), dP = dout.v.
// Overwrites dq (or dq16 where dq is NULL). q, k half; kb16 (k), v, dout bf16. Grid
// (ceil(T / 64), Hq, B), flash_dq_shared(D) bytes.
template <int NCH>
__global__ void __launch_bounds__(FL_THREADS)
flash_dq_kernel(float *dq, __nv_bfloat16 *dq16, const __nv_bfloat16 *dout, const __half *q,
                const __half *k,
                const __nv_bfloat16 *k_b, const __nv_bfloat16 *v, const float *lse,
                const float *delta, int T, int Hq, int Hkv, int window, const int32_t *seg_start,
                float scale)
{
#if FLASH_BODY
    constexpr int D = NCH * 16, LDH = D + 8, LDS = FL_LDS(D);
    PESC_DYNAMIC_SHARED(flash_smem);
    unsigned char *smem = flash_smem;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    // q, k half for the scores; dout, v bf16 for dP; dS, k bf16 for dQ (gradients are small
    // numbers, beneath half's normal range)
    __half *qs = flash_tile<__half>(smem, D, 0), *ks = flash_tile<__half>(smem, D, 1);
    __nv_bfloat16 *kb16 = flash_tile(smem, D, 2), *dos = flash_tile(smem, D, 3);
    __nv_bfloat16 *vs = flash_tile(smem, D, 4);
    unsigned char *mine = (unsigned char *)flash_tile(smem, D, 5) +
                          warp * (2 * flash_warp_f32(D) + flash_warp_p());
    float *ss = (float *)mine, *dps = (float *)(mine + flash_warp_f32(D));
    __nv_bfloat16 *ds = (__nv_bfloat16 *)(mine + 2 * flash_warp_f32(D));

    int h = blockIdx.y, b = blockIdx.z, g = h / (Hq / Hkv);
    int t0 = (gridDim.x - 1 - blockIdx.x) * FL_TILE, tw = t0 + 16 * warp;   // the longest first
    const int32_t *seg = seg_start ? seg_start + (size_t)b * T : NULL;
    size_t q_stride = (size_t)Hq * D, kv_stride = (size_t)Hkv * D;
    size_t q_off = (size_t)b * T * q_stride + (size_t)h * D;
    size_t kv_off = (size_t)b * T * kv_stride + (size_t)g * D;

    flash_load_tile<D>(qs, q + q_off, q_stride, t0, T);
    flash_load_tile<D>(dos, dout + q_off, q_stride, t0, T);
    int r = lane >> 1, half = lane & 1, t = tw + r;
    int lo = t < T ? flash_first_key(t, window, seg) : 0, hi = t < T ? t : -1;
    size_t row_stat = ((size_t)b * Hq + h) * T + t;
    float lse_r = t < T ? lse[row_stat] : 0.0f, delta_r = t < T ? delta[row_stat] : 0.0f;
    bool warp_live = tw < T;
    int warp_lo = warp_live ? flash_first_key(tw, window, seg) : 0;
    int warp_hi = min(tw + 15, T - 1);
    int key_lo = flash_first_key(t0, window, seg), key_hi = min(t0 + FL_TILE - 1, T - 1);
    flash_acc acc[NCH];
#pragma unroll
    for (int c = 0; c < NCH; c++)
        flash_wmma::fill_fragment(acc[c], 0.0f);

    for (int s0 = key_lo; s0 <= key_hi; s0 += FL_TILE) {
        __syncthreads();
        flash_load_tile<D>(ks, k + kv_off, kv_stride, s0, T);
        flash_load_tile<D>(kb16, k_b + kv_off, kv_stride, s0, T);
        flash_load_tile<D>(vs, v + kv_off, kv_stride, s0, T);
        __syncthreads();
        if (!warp_live || s0 > warp_hi || s0 + FL_TILE - 1 < warp_lo)
            continue;
        flash_abt<NCH>(ss, qs + 16 * warp * LDH, LDH, ks, LDH);
        flash_abt<NCH>(dps, dos + 16 * warp * LDH, LDH, vs, LDH);
        __syncwarp();
#pragma unroll 4
        for (int j = 0; j < 32; j++) {
            int col = 32 * half + j, s = s0 + col;
            float p = s >= lo && s <= hi ? expf(ss[r * LDS + col] * scale - lse_r) : 0.0f;
            ds[r * FL_LDP + col] = __float2bfloat16(p * (dps[r * LDS + col] - delta_r));
        }
        __syncwarp();
        flash_pb<NCH>(acc, ds, kb16, LDH);
        __syncwarp();   // ds is read before the next tile rewrites it
    }
#pragma unroll
    for (int c = 0; c < NCH; c++)
        flash_wmma::store_matrix_sync(ss + 16 * c, acc[c], LDS, flash_wmma::mem_row_major);
    __syncwarp();
    flash_write_rows<NCH>(dq, dq16, q_off, q_stride, ss, tw, T, scale);
#endif
}

// ---- dK, dV ---------------------------------------------------------------------------------

// dk = scale sum_t dS q_t, dv = sum_t P dout_t over the rows t of query head h = blockIdx.y:
// one query head's part of its kv head's gradients, written (B*T, Hq, D) at head h (in bf16 to
// dk16, dv16 where dk, dv are NULL). With groups of one that is dk and dv themselves;
// otherwise flash_group_sum_kernel adds a group's parts.
// (One block a query head, not a kv head: a block's work grows with the rows after its keys,
// and a kv head's whole group in one block made the first keys' blocks group times longer than
// the rest, the step waiting on them.) q, k half; q_b (q), v, dout bf16. Grid (ceil(T / 64),
// Hq, B), flash_dkdv_shared(D) bytes.
template <int NCH>
__global__ void __launch_bounds__(FL_THREADS)
flash_dkdv_kernel(float *dk, float *dv, __nv_bfloat16 *dk16, __nv_bfloat16 *dv16,
                  const __nv_bfloat16 *dout, const __half *q,
                  const __nv_bfloat16 *q_b, const __half *k, const __nv_bfloat16 *v,
                  const float *lse, const float *delta, int T, int Hq, int Hkv, int window,
                  const int32_t *seg_start, float scale)
{
#if FLASH_BODY
    constexpr int D = NCH * 16, LDH = D + 8, LDS = FL_LDS(D);
    PESC_DYNAMIC_SHARED(flash_smem);
    unsigned char *smem = flash_smem;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    // k, q half for the scores; v, dout bf16 for dP; P, dout bf16 for dV; dS, q bf16 for dK
    __half *ks = flash_tile<__half>(smem, D, 0), *qs = flash_tile<__half>(smem, D, 1);
    __nv_bfloat16 *vs = flash_tile(smem, D, 2), *qb16 = flash_tile(smem, D, 3);
    __nv_bfloat16 *dos = flash_tile(smem, D, 4);
    float *lse_s = (float *)flash_tile(smem, D, 5), *delta_s = lse_s + FL_TILE;
    int *lo_s = (int *)(delta_s + FL_TILE);
    unsigned char *mine = (unsigned char *)flash_tile(smem, D, 5) + flash_round(3 * FL_TILE * 4) +
                          warp * (2 * flash_warp_f32(D) + 2 * flash_warp_p());
    float *ss = (float *)mine, *dps = (float *)(mine + flash_warp_f32(D));   // S^T, dP^T
    __nv_bfloat16 *pt = (__nv_bfloat16 *)(mine + 2 * flash_warp_f32(D));
    __nv_bfloat16 *dst = (__nv_bfloat16 *)(mine + 2 * flash_warp_f32(D) + flash_warp_p());

    int h = blockIdx.y, b = blockIdx.z, g = h / (Hq / Hkv);
    int s0 = blockIdx.x * FL_TILE, sw = s0 + 16 * warp;      // the block's and the warp's keys
    int s_last = min(s0 + FL_TILE - 1, T - 1);
    const int32_t *seg = seg_start ? seg_start + (size_t)b * T : NULL;
    size_t q_stride = (size_t)Hq * D, kv_stride = (size_t)Hkv * D;
    size_t kv_off = (size_t)b * T * kv_stride + (size_t)g * D;

    flash_load_tile<D>(ks, k + kv_off, kv_stride, s0, T);
    flash_load_tile<D>(vs, v + kv_off, kv_stride, s0, T);
    // lanes 2i, 2i + 1: key i of the warp, query columns 32 half .. 32 half + 31 of a tile
    int i = lane >> 1, half = lane & 1, s = sw + i;
    bool warp_live = sw < T;
    int warp_last = min(sw + 15, T - 1);
    flash_acc dk_acc[NCH], dv_acc[NCH];
#pragma unroll
    for (int c = 0; c < NCH; c++) {
        flash_wmma::fill_fragment(dk_acc[c], 0.0f);
        flash_wmma::fill_fragment(dv_acc[c], 0.0f);
    }
    size_t q_off = (size_t)b * T * q_stride + (size_t)h * D;
    const float *lse_h = lse + ((size_t)b * Hq + h) * T;
    const float *delta_h = delta + ((size_t)b * Hq + h) * T;
    // rows from the first key on, until a row's first visible key passes the last key
    for (int r0 = s0; r0 < T && flash_first_key(r0, window, seg) <= s_last; r0 += FL_TILE) {
        __syncthreads();   // the previous tile is consumed
        flash_load_tile<D>(qs, q + q_off, q_stride, r0, T);
        flash_load_tile<D>(qb16, q_b + q_off, q_stride, r0, T);
        flash_load_tile<D>(dos, dout + q_off, q_stride, r0, T);
        for (int j = threadIdx.x; j < FL_TILE; j += FL_THREADS) {
            int t = r0 + j;
            bool in = t < T;
            lse_s[j] = in ? lse_h[t] : 0.0f;
            delta_s[j] = in ? delta_h[t] : 0.0f;
            lo_s[j] = in ? flash_first_key(t, window, seg) : INT_MAX;
        }
        __syncthreads();
        // warp-uniform: rows all before the warp's first key, or all starting past its last
        if (!warp_live || r0 + FL_TILE - 1 < sw || lo_s[0] > warp_last)
            continue;
        flash_abt<NCH>(ss, ks + 16 * warp * LDH, LDH, qs, LDH);   // S^T (16 keys, 64 rows)
        flash_abt<NCH>(dps, vs + 16 * warp * LDH, LDH, dos, LDH);  // dP^T
        __syncwarp();
#pragma unroll 4
        for (int j = 0; j < 32; j++) {
            int col = 32 * half + j, t = r0 + col;
            bool visible = s <= s_last && s <= t && s >= lo_s[col];
            float p = visible ? expf(ss[i * LDS + col] * scale - lse_s[col]) : 0.0f;
            pt[i * FL_LDP + col] = __float2bfloat16(p);
            dst[i * FL_LDP + col] = __float2bfloat16(p * (dps[i * LDS + col] - delta_s[col]));
        }
        __syncwarp();
        flash_pb<NCH>(dv_acc, pt, dos, LDH);
        flash_pb<NCH>(dk_acc, dst, qb16, LDH);
        __syncwarp();
    }
#pragma unroll
    for (int c = 0; c < NCH; c++) {
        flash_wmma::store_matrix_sync(ss + 16 * c, dk_acc[c], LDS, flash_wmma::mem_row_major);
        flash_wmma::store_matrix_sync(dps + 16 * c, dv_acc[c], LDS, flash_wmma::mem_row_major);
    }
    __syncwarp();
    flash_write_rows<NCH>(dk, dk16, q_off, q_stride, ss, sw, T, scale);
    flash_write_rows<NCH>(dv, dv16, q_off, q_stride, dps, sw, T, 1.0f);
#endif
}

// dk, dv (rows, Hkv, D) = the sums of their groups' parts (rows, Hq, D), query heads in order
// (no atomics: the same sums every run); each in fp32, or in bf16 (dk16, dv16) where NULL.
// Static: cuda_moe.cu includes this header too (for the mma pieces cuda_experts_mma.cuh
// shares), and a kernel defined in two objects would not link.
static __global__ void flash_group_sum_kernel(float *dk, float *dv, __nv_bfloat16 *dk16,
                                              __nv_bfloat16 *dv16, const float *dk_part,
                                              const float *dv_part, size_t rows, int Hq, int Hkv,
                                              int D)
{
    int group = Hq / Hkv;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < rows * Hkv * D;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / ((size_t)Hkv * D), g = i / D % Hkv, d = i % D;
        size_t at = (r * Hq + g * group) * D + d;
        float sk = 0.0f, sv = 0.0f;
        for (int hh = 0; hh < group; hh++) {
            sk += dk_part[at + (size_t)hh * D];
            sv += dv_part[at + (size_t)hh * D];
        }
        if (dk)
            dk[i] = sk;
        else
            dk16[i] = operand_cvt<__nv_bfloat16>(sk);
        if (dv)
            dv[i] = sv;
        else
            dv16[i] = operand_cvt<__nv_bfloat16>(sv);
    }
}

#endif
