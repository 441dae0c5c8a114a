// cuda_attention — fused causal grouped-query attention: forward (with the log-sum-exp kept
// for the backward), the KV-cache variant for generation, and the backward. Nothing T x T is
// ever stored: scores live in registers a tile of keys at a time with an online softmax
// (flash-attention style), and the backward recomputes them from the saved log-sum-exp.
//
// Scores are scaled by 1/sqrt(D) and, where cap > 0 (Gemma 2), capped to cap tanh(s / cap)
// before the mask: the log-sum-exp kept is of the capped scores, and the backward multiplies
// each score's gradient by the cap's slope, 1 - (y / cap)^2.
//
// Masks, as on the CPU: a query at absolute position p sees keys s with
// first_key(p) <= s <= p, first_key taking the sliding window and the packed document's start
// (seg_start) into account. first_key is non-decreasing in p, so a tile of queries sees one
// contiguous run of keys and a tile of keys is seen by one contiguous run of queries.
//
// Layout of the work (fp32 on the CUDA cores; D up to 256):
//  - forward and dQ: a block of 4 warps takes 16 query rows of one (sequence, head); each warp
//    carries 4 rows. Keys come through shared memory 32 at a time; lane j scores key j against
//    the warp's rows, the softmax statistics are warp reductions, and for the products with V
//    (or K) each lane owns the head-dimension elements lane, lane + 32, ...
//  - dK and dV: a block takes 16 keys of one (sequence, kv head), each warp 4 keys, and walks
//    every query row of every query head of the group that sees them, 32 rows at a time with
//    lane i on row i. dK and dV are written once, by their owner: no atomics, so the backward
//    is deterministic.
#include <climits>
#include <cstdio>

#include "cuda/cuda_common.cuh"
#include "cuda/cuda_flash.cuh"
#include "cuda/cuda_flash_mma.cuh"

#define ATT_WARPS 4
#define ATT_ROWS 4                          // query rows per warp (forward, dQ)
#define ATT_QTILE (ATT_WARPS * ATT_ROWS)    // query rows per block (forward, dQ)
#define ATT_KTILE 32                        // keys per shared tile (forward, dQ)
#define ATT_KEYS 4                          // keys per warp (dK, dV)
#define ATT_KBLOCK (ATT_WARPS * ATT_KEYS)   // keys per block (dK, dV)
#define ATT_RTILE 32                        // query rows per shared tile (dK, dV)
#define ATT_MAX_D 256

__device__ __forceinline__ int first_key(int p, int window, const int32_t *seg)
{
    int lo = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
    return seg && seg[p] > lo ? seg[p] : lo;
}

// acc[r] += sum over the tile's ATT_KTILE keys j of w[r] (lane j holds it) times the tile's row
// j (rows ld floats apart): a warp's ATT_ROWS rows of P V (forward) or dS K (dQ), each lane its
// NC columns d = lane + 32 c.
template <int NC>
__device__ __forceinline__ void add_weighted_rows(float (&acc)[ATT_ROWS][NC],
                                                  const float (&w)[ATT_ROWS], const float *tile,
                                                  int ld, int D, int lane)
{
    for (int j = 0; j < ATT_KTILE; j++) {
        float row[NC];
#pragma unroll
        for (int c = 0; c < NC; c++) {
            int d = lane + 32 * c;
            row[c] = d < D ? tile[j * ld + d] : 0.0f;
        }
#pragma unroll
        for (int r = 0; r < ATT_ROWS; r++) {
            float wj = __shfl_sync(0xffffffffu, w[r], j);
#pragma unroll
            for (int c = 0; c < NC; c++)
                acc[r][c] += wj * row[c];
        }
    }
}

// ---- forward ----------------------------------------------------------------------------------

// q, out (B*T, Hq, D); k, v (B*kv_len, Hkv, D); query row t of a sequence sits at absolute
// position past + t (past = 0, kv_len = T in training; B = 1 with a KV cache). seg (B, T) or
// NULL (only with past = 0); lse (B, Hq, T) or NULL. NC = ceil(D / 32) rounded up to 1, 2, 4, 8.
template <int NC>
__global__ void __launch_bounds__(ATT_WARPS * 32)
attention_forward_kernel(values_out out, float *lse, values_in q, values_in k, values_in v,
                         int T, int past, int kv_len, int Hq, int Hkv, int D, int window,
                         const int32_t *seg_start, float scale, float cap)
{
    PESC_DYNAMIC_SHARED(att_smem);
    float *smem = (float *)att_smem;
    float *qs = smem;                              // (ATT_QTILE, D)
    float *ks = qs + ATT_QTILE * D;                // (ATT_KTILE, D + 1): lane j reads row j
    float *vs = ks + ATT_KTILE * (D + 1);          // (ATT_KTILE, D)
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int h = blockIdx.y, b = blockIdx.z, g = h / (Hq / Hkv);
    int t0 = blockIdx.x * ATT_QTILE;
    int rows_here = min(ATT_QTILE, T - t0);
    const int32_t *seg = seg_start ? seg_start + (size_t)b * T : NULL;
    size_t q_stride = (size_t)Hq * D, kv_stride = (size_t)Hkv * D;
    values_in qb = q + ((size_t)b * T * q_stride + (size_t)h * D);
    values_in kb = k + ((size_t)b * kv_len * kv_stride + (size_t)g * D);
    values_in vb = v + ((size_t)b * kv_len * kv_stride + (size_t)g * D);

    for (int i = threadIdx.x; i < ATT_QTILE * D; i += blockDim.x) {
        int r = i / D, d = i % D;
        qs[i] = r < rows_here ? qb[(size_t)(t0 + r) * q_stride + d] : 0.0f;
    }
    int lo[ATT_ROWS], hi[ATT_ROWS];
    float m[ATT_ROWS], l[ATT_ROWS], acc[ATT_ROWS][NC];
#pragma unroll
    for (int r = 0; r < ATT_ROWS; r++) {
        int t = t0 + warp * ATT_ROWS + r;
        hi[r] = t < T ? past + t : -1;             // an empty range for rows past the end
        lo[r] = t < T ? first_key(past + t, window, seg) : 0;
        m[r] = -INFINITY;
        l[r] = 0.0f;
#pragma unroll
        for (int c = 0; c < NC; c++)
            acc[r][c] = 0.0f;
    }
    int key_lo = first_key(past + t0, window, seg), key_hi = past + t0 + rows_here - 1;
    for (int s0 = key_lo; s0 <= key_hi; s0 += ATT_KTILE) {
        __syncthreads();   // the previous tile is consumed (and qs is written, the first time)
        for (int i = threadIdx.x; i < ATT_KTILE * D; i += blockDim.x) {
            int j = i / D, d = i % D, s = s0 + j;
            bool in = s <= key_hi;
            ks[j * (D + 1) + d] = in ? kb[(size_t)s * kv_stride + d] : 0.0f;
            vs[j * D + d] = in ? vb[(size_t)s * kv_stride + d] : 0.0f;
        }
        __syncthreads();
        int s = s0 + lane;
        float sc[ATT_ROWS];
#pragma unroll
        for (int r = 0; r < ATT_ROWS; r++)
            sc[r] = 0.0f;
        const float *krow = ks + lane * (D + 1);
        const float *qrow = qs + warp * ATT_ROWS * D;
        for (int d = 0; d < D; d++) {
            float kd = krow[d];
#pragma unroll
            for (int r = 0; r < ATT_ROWS; r++)
                sc[r] += qrow[r * D + d] * kd;
        }
        float p[ATT_ROWS];
#pragma unroll
        for (int r = 0; r < ATT_ROWS; r++) {
            bool visible = s >= lo[r] && s <= hi[r];
            float x = visible ? soft_cap(sc[r] * scale, cap) : -INFINITY;
            float m_new = fmaxf(m[r], warp_max(x));
            p[r] = 0.0f;
            if (m_new == -INFINITY)   // nothing visible to this row yet (warp-uniform)
                continue;
            p[r] = visible ? expf(x - m_new) : 0.0f;
            float correction = expf(m[r] - m_new);
            l[r] = l[r] * correction + warp_sum(p[r]);
#pragma unroll
            for (int c = 0; c < NC; c++)
                acc[r][c] *= correction;
            m[r] = m_new;
        }
        add_weighted_rows<NC>(acc, p, vs, D, D, lane);   // O += P V
    }
#pragma unroll
    for (int r = 0; r < ATT_ROWS; r++) {
        int t = t0 + warp * ATT_ROWS + r;
        if (t >= T)
            continue;
        float inv = 1.0f / l[r];
        size_t o = ((size_t)b * T + t) * q_stride + (size_t)h * D;
#pragma unroll
        for (int c = 0; c < NC; c++) {
            int d = lane + 32 * c;
            if (d < D)
                out.put(o + d, acc[r][c] * inv);
        }
        if (lse && lane == 0)
            lse[((size_t)b * Hq + h) * T + t] = m[r] + logf(l[r]);
    }
}

static int chunks_for(int D)
{
    int nc = (D + 31) / 32;
    return nc <= 1 ? 1 : nc <= 2 ? 2 : nc <= 4 ? 4 : 8;
}

static bool head_dim_ok(cuda_context *c, int D, int Hq, int Hkv)
{
    if (D >= 1 && D <= ATT_MAX_D && Hkv >= 1 && Hq % Hkv == 0)
        return true;
    char what[120];
    snprintf(what, sizeof what, "attention with head dimension %d and %d/%d heads (the kernels "
             "take D <= %d and whole groups)", D, Hq, Hkv, ATT_MAX_D);
    cuda_check_rc(c, cudaErrorInvalidValue, what, __FILE__, __LINE__);
    return false;
}

template <int NC>
static void launch_forward(cuda_context *c, float *out, float *lse, const float *q,
                           const float *k, const float *v, int B, int T, int past, int kv_len,
                           int Hq, int Hkv, int D, int window, float cap, const int32_t *seg)
{
    size_t smem = ((size_t)ATT_QTILE * D + (size_t)ATT_KTILE * (D + 1) + (size_t)ATT_KTILE * D) *
                  sizeof(float);
    if (!cuda_shared_limit(c, (const void *)attention_forward_kernel<NC>, smem))
        return;
    dim3 grid((T + ATT_QTILE - 1) / ATT_QTILE, Hq, B);
    size_t nq = (size_t)B * T * Hq * D, nkv = (size_t)B * kv_len * Hkv * D;
    values_out to = write_values(c, out, nq, false);
    values_in q_in = read_values(c, q, nq), k_in = read_values(c, k, nkv);
    values_in v_in = read_values(c, v, nkv);
    CUDA_LAUNCH(attention_forward_kernel<NC>, grid, ATT_WARPS * 32, smem, c->stream, to, lse, q_in,
                k_in, v_in, T, past, kv_len, Hq, Hkv, D, window, seg, 1.0f / sqrtf((float)D),
                cap);
    CUDA_LAUNCHED(c);
}

static void forward_any(cuda_context *c, float *out, float *lse, const float *q, const float *k,
                        const float *v, int B, int T, int past, int kv_len, int Hq, int Hkv,
                        int D, int window, float cap, const int32_t *seg)
{
    if (!head_dim_ok(c, D, Hq, Hkv) || T <= 0 || B <= 0)
        return;
    switch (chunks_for(D)) {
    case 1: launch_forward<1>(c, out, lse, q, k, v, B, T, past, kv_len, Hq, Hkv, D, window, cap, seg); break;
    case 2: launch_forward<2>(c, out, lse, q, k, v, B, T, past, kv_len, Hq, Hkv, D, window, cap, seg); break;
    case 4: launch_forward<4>(c, out, lse, q, k, v, B, T, past, kv_len, Hq, Hkv, D, window, cap, seg); break;
    default: launch_forward<8>(c, out, lse, q, k, v, B, T, past, kv_len, Hq, Hkv, D, window, cap, seg); break;
    }
}

static void gemm_forward(cuda_context *c, float *out, float *lse, const float *q, const float *k,
                         const float *v, int B, int T, int Hq, int Hkv, int D, int window,
                         float cap, const int32_t *seg);
static void gemm_backward(cuda_context *c, float *dq, float *dk, float *dv, const float *dout,
                          const float *q, const float *k, const float *v, const float *out,
                          const float *lse, int B, int T, int Hq, int Hkv, int D, int window,
                          float cap, const int32_t *seg);
static bool flash_takes(const cuda_context *c, int D, int Hq, int Hkv, float cap, const float *q,
                        const float *k, const float *v, const float *dout);
static bool flash_mma_here(const cuda_context *c, int D);
static bool flash_fits(const cuda_context *c, int D);
static void flash_forward_any(cuda_context *c, float *out, float *lse, const float *q,
                              const float *k, const float *v, int B, int T, int Hq, int Hkv,
                              int D, int window, const int32_t *seg);
static void flash_backward_any(cuda_context *c, float *dq, float *dk, float *dv,
                               const float *dout, const float *q, const float *k, const float *v,
                               const float *out, const float *lse, int B, int T, int Hq, int Hkv,
                               int D, int window, const int32_t *seg);

extern "C" void cuda_attention_forward(void *ctx, float *out, float *lse, const float *q,
                                       const float *k, const float *v, int B, int T, int Hq,
                                       int Hkv, int D, int window, float softcap,
                                       const int32_t *seg_start)
{
    CUDA_OP(ctx);
    cuda_parts_start(c);
    if (flash_takes(c, D, Hq, Hkv, softcap, q, k, v, NULL) && T > 0 && B > 0)
        flash_forward_any(c, out, lse, q, k, v, B, T, Hq, Hkv, D, window, seg_start);
    else if (c->attention == CUDA_ATTENTION_GEMM && head_dim_ok(c, D, Hq, Hkv) && T > 0 && B > 0)
        gemm_forward(c, out, lse, q, k, v, B, T, Hq, Hkv, D, window, softcap, seg_start);
    else
        forward_any(c, out, lse, q, k, v, B, T, 0, T, Hq, Hkv, D, window, softcap, seg_start);
}

extern "C" void cuda_attention_cached_forward(void *ctx, float *out, const float *q,
                                              const float *k_cache, const float *v_cache, int n,
                                              int past, int Hq, int Hkv, int D, int window,
                                              float softcap)
{
    CUDA_OP(ctx);
    forward_any(c, out, NULL, q, k_cache, v_cache, 1, n, past, past + n, Hq, Hkv, D, window,
                softcap, NULL);
}

// ---- generation: one new token of each of several cached sequences -------------------------
//
// attention_step_forward: each token's key and value into its slot's next row, then one block
// a (token, head) against that slot's rows, STEP_KEYS scores at a time in shared memory with a
// running max and sum (the online softmax), each thread keeping two of the output's D <= 256
// dimensions. A decoding step is launch-bound: two launches a layer for all the tokens, where
// one cached attention a token took a launch and two copies each.

#define STEP_THREADS 128
#define STEP_KEYS 256

__global__ void attention_step_store_kernel(float *k_cache, float *v_cache, values_in k,
                                            values_in v, const int32_t *slots,
                                            const int32_t *past, size_t slot_floats, int row)
{
    int i = blockIdx.x;
    size_t at = (size_t)slots[i] * slot_floats + (size_t)past[i] * row;
    for (int d = threadIdx.x; d < row; d += blockDim.x) {
        k_cache[at + d] = k[(size_t)i * row + d];
        v_cache[at + d] = v[(size_t)i * row + d];
    }
}

__global__ void __launch_bounds__(STEP_THREADS)
attention_step_kernel(values_out out, values_in q, const float *k_cache, const float *v_cache,
                      const int32_t *slots, const int32_t *past, size_t slot_floats, int Hq,
                      int Hkv, int D, int window, float scale, float cap)
{
    __shared__ float qs[ATT_MAX_D], p[STEP_KEYS], red[32];
    int h = blockIdx.x, i = blockIdx.y, tid = threadIdx.x, row = Hkv * D;
    int last = past[i], first = window > 0 && last - window + 1 > 0 ? last - window + 1 : 0;
    size_t q_off = ((size_t)i * Hq + h) * D;
    size_t base = (size_t)slots[i] * slot_floats + (size_t)(h / (Hq / Hkv)) * D;
    const float *kb = k_cache + base, *vb = v_cache + base;
    for (int d = tid; d < D; d += STEP_THREADS)
        qs[d] = q[q_off + d];
    __syncthreads();
    float m = -INFINITY, l = 0.0f, acc[ATT_MAX_D / STEP_THREADS] = {0.0f, 0.0f};
    for (int s0 = first; s0 <= last; s0 += STEP_KEYS) {
        int keys = last + 1 - s0 < STEP_KEYS ? last + 1 - s0 : STEP_KEYS;
        float most = -INFINITY;
        for (int j = tid; j < keys; j += STEP_THREADS) {
            const float *kr = kb + (size_t)(s0 + j) * row;
            float dot = 0.0f;
            for (int d = 0; d < D; d++)
                dot += qs[d] * kr[d];
            p[j] = soft_cap(dot * scale, cap);
            most = fmaxf(most, p[j]);
        }
        float grown = fmaxf(m, block_max(most, red));   // block_max syncs: p is whole
        float sum = 0.0f;
        for (int j = tid; j < keys; j += STEP_THREADS) {
            p[j] = expf(p[j] - grown);
            sum += p[j];
        }
        float shrink = expf(m - grown);                  // 0 on the first chunk
        l = l * shrink + block_sum(sum, red);            // syncs: p is exponentiated
        for (int c = 0; c < ATT_MAX_D / STEP_THREADS; c++) {
            int d = tid + c * STEP_THREADS;
            if (d >= D)
                break;
            float a = acc[c] * shrink;
            for (int j = 0; j < keys; j++)
                a += p[j] * vb[(size_t)(s0 + j) * row + d];
            acc[c] = a;
        }
        m = grown;
        __syncthreads();                                 // p is read before the next chunk
    }
    for (int c = 0; c < ATT_MAX_D / STEP_THREADS; c++) {
        int d = tid + c * STEP_THREADS;
        if (d < D)
            out.put(q_off + d, acc[c] / l);
    }
}

extern "C" void cuda_attention_step_forward(void *ctx, float *out, const float *q,
                                            const float *k, const float *v, float *k_cache,
                                            float *v_cache, const int32_t *slots,
                                            const int32_t *past, int n, int slot_rows, int Hq,
                                            int Hkv, int D, int window, float softcap)
{
    CUDA_OP(ctx);
    if (n <= 0 || !head_dim_ok(c, D, Hq, Hkv))
        return;
    int row = Hkv * D;
    size_t slot_floats = (size_t)slot_rows * row, nq = (size_t)n * Hq * D;
    values_in k_in = read_values(c, k, (size_t)n * row), v_in = read_values(c, v, (size_t)n * row);
    CUDA_LAUNCH(attention_step_store_kernel, n, 128, 0, c->stream, k_cache, v_cache, k_in, v_in,
                slots, past, slot_floats, row);
    values_out to = write_values(c, out, nq, false);
    CUDA_LAUNCH(attention_step_kernel, dim3(Hq, n), STEP_THREADS, 0, c->stream, to,
                read_values(c, q, nq), k_cache, v_cache, slots, past, slot_floats, Hq, Hkv, D,
                window, 1.0f / sqrtf((float)D), softcap);
    CUDA_LAUNCHED(c);
}

// ---- backward ---------------------------------------------------------------------------------

// delta (B, Hq, T) = rowsum(dout * out): one warp per row.
__global__ void attention_delta_kernel(float *delta, values_in dout, values_in out, int B, int T,
                                       int Hq, int D)
{
    size_t row = (size_t)blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= (size_t)B * T * Hq)
        return;
    // row enumerates (b, t, h) in memory order; delta is stored (b, h, t)
    size_t bt = row / Hq;
    int h = (int)(row % Hq), t = (int)(bt % T), b = (int)(bt / T);
    float s = 0.0f;
    for (int d = lane; d < D; d += 32)
        s += dout[row * D + d] * out[row * D + d];
    s = warp_sum(s);
    if (lane == 0)
        delta[((size_t)b * Hq + h) * T + t] = s;
}

// dQ for 16 query rows of one (sequence, head): dq = scale * sum_s P (dP - delta) slope k_s
// with P = exp(y - lse), y = soft_cap(q.k scale), dP = dout.v and slope y's (1 uncapped).
// Overwrites dq.
template <int NC>
__global__ void __launch_bounds__(ATT_WARPS * 32)
attention_dq_kernel(values_out dq, values_in dout, values_in q, values_in k, values_in v,
                    const float *lse, const float *delta, int T, int Hq, int Hkv, int D,
                    int window, const int32_t *seg_start, float scale, float cap)
{
    PESC_DYNAMIC_SHARED(att_smem);
    float *smem = (float *)att_smem;
    float *qs = smem;                              // (ATT_QTILE, D)
    float *dos = qs + ATT_QTILE * D;               // (ATT_QTILE, D)
    float *ks = dos + ATT_QTILE * D;               // (ATT_KTILE, D + 1)
    float *vs = ks + ATT_KTILE * (D + 1);          // (ATT_KTILE, D + 1)
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int h = blockIdx.y, b = blockIdx.z, g = h / (Hq / Hkv);
    int t0 = blockIdx.x * ATT_QTILE;
    int rows_here = min(ATT_QTILE, T - t0);
    const int32_t *seg = seg_start ? seg_start + (size_t)b * T : NULL;
    size_t q_stride = (size_t)Hq * D, kv_stride = (size_t)Hkv * D;
    size_t q_off = (size_t)b * T * q_stride + (size_t)h * D;
    values_in kb = k + ((size_t)b * T * kv_stride + (size_t)g * D);
    values_in vb = v + ((size_t)b * T * kv_stride + (size_t)g * D);

    for (int i = threadIdx.x; i < ATT_QTILE * D; i += blockDim.x) {
        int r = i / D, d = i % D;
        bool in = r < rows_here;
        qs[i] = in ? q[q_off + (size_t)(t0 + r) * q_stride + d] : 0.0f;
        dos[i] = in ? dout[q_off + (size_t)(t0 + r) * q_stride + d] : 0.0f;
    }
    int lo[ATT_ROWS], hi[ATT_ROWS];
    float row_lse[ATT_ROWS], row_delta[ATT_ROWS], acc[ATT_ROWS][NC];
#pragma unroll
    for (int r = 0; r < ATT_ROWS; r++) {
        int t = t0 + warp * ATT_ROWS + r;
        bool in = t < T;
        hi[r] = in ? t : -1;
        lo[r] = in ? first_key(t, window, seg) : 0;
        row_lse[r] = in ? lse[((size_t)b * Hq + h) * T + t] : 0.0f;
        row_delta[r] = in ? delta[((size_t)b * Hq + h) * T + t] : 0.0f;
#pragma unroll
        for (int c = 0; c < NC; c++)
            acc[r][c] = 0.0f;
    }
    int key_lo = first_key(t0, window, seg), key_hi = t0 + rows_here - 1;
    for (int s0 = key_lo; s0 <= key_hi; s0 += ATT_KTILE) {
        __syncthreads();
        for (int i = threadIdx.x; i < ATT_KTILE * D; i += blockDim.x) {
            int j = i / D, d = i % D, s = s0 + j;
            bool in = s <= key_hi;
            ks[j * (D + 1) + d] = in ? kb[(size_t)s * kv_stride + d] : 0.0f;
            vs[j * (D + 1) + d] = in ? vb[(size_t)s * kv_stride + d] : 0.0f;
        }
        __syncthreads();
        int s = s0 + lane;
        float qk[ATT_ROWS], dov[ATT_ROWS];
#pragma unroll
        for (int r = 0; r < ATT_ROWS; r++)
            qk[r] = dov[r] = 0.0f;
        const float *krow = ks + lane * (D + 1), *vrow = vs + lane * (D + 1);
        const float *qrow = qs + warp * ATT_ROWS * D, *dorow = dos + warp * ATT_ROWS * D;
        for (int d = 0; d < D; d++) {
            float kd = krow[d], vd = vrow[d];
#pragma unroll
            for (int r = 0; r < ATT_ROWS; r++) {
                qk[r] += qrow[r * D + d] * kd;
                dov[r] += dorow[r * D + d] * vd;
            }
        }
        float ds[ATT_ROWS];
#pragma unroll
        for (int r = 0; r < ATT_ROWS; r++) {
            bool visible = s >= lo[r] && s <= hi[r];
            float y = soft_cap(qk[r] * scale, cap);
            float p = visible ? expf(y - row_lse[r]) : 0.0f;
            ds[r] = p * (dov[r] - row_delta[r]) * scale * soft_cap_slope(y, cap);
        }
        add_weighted_rows<NC>(acc, ds, ks, D + 1, D, lane);   // dQ += dS K
    }
#pragma unroll
    for (int r = 0; r < ATT_ROWS; r++) {
        int t = t0 + warp * ATT_ROWS + r;
        if (t >= T)
            continue;
        size_t row = q_off + (size_t)t * q_stride;
#pragma unroll
        for (int c = 0; c < NC; c++) {
            int d = lane + 32 * c;
            if (d < D)
                dq.put(row + d, acc[r][c]);
        }
    }
}

// dK, dV for 16 keys of one (sequence, kv head), over every query head of the group:
// dv_s = sum_t P dout_t, dk_s = sum_t dS q_t with dS = P (dP - delta) scale slope (as dQ's).
// Overwrites both.
template <int NC>
__global__ void __launch_bounds__(ATT_WARPS * 32)
attention_dkdv_kernel(values_out dk, values_out dv, values_in dout, values_in q, values_in k,
                      values_in v, const float *lse, const float *delta, int T, int Hq, int Hkv,
                      int D, int window, const int32_t *seg_start, float scale, float cap)
{
    PESC_DYNAMIC_SHARED(att_smem);
    float *smem = (float *)att_smem;
    float *ks = smem;                              // (ATT_KBLOCK, D)
    float *vs = ks + ATT_KBLOCK * D;               // (ATT_KBLOCK, D)
    float *qs = vs + ATT_KBLOCK * D;               // (ATT_RTILE, D + 1): lane i reads row i
    float *dos = qs + ATT_RTILE * (D + 1);         // (ATT_RTILE, D + 1)
    float *lse_s = dos + ATT_RTILE * (D + 1);      // (ATT_RTILE)
    float *delta_s = lse_s + ATT_RTILE;            // (ATT_RTILE)
    int *lo_s = (int *)(delta_s + ATT_RTILE);      // (ATT_RTILE) first visible key per row
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int g = blockIdx.y, b = blockIdx.z, group = Hq / Hkv;
    int s0 = blockIdx.x * ATT_KBLOCK;
    int keys_here = min(ATT_KBLOCK, T - s0), s_last = s0 + keys_here - 1;
    const int32_t *seg = seg_start ? seg_start + (size_t)b * T : NULL;
    size_t q_stride = (size_t)Hq * D, kv_stride = (size_t)Hkv * D;
    size_t kv_off = (size_t)b * T * kv_stride + (size_t)g * D;

    for (int i = threadIdx.x; i < ATT_KBLOCK * D; i += blockDim.x) {
        int j = i / D, d = i % D;
        bool in = j < keys_here;
        ks[i] = in ? k[kv_off + (size_t)(s0 + j) * kv_stride + d] : 0.0f;
        vs[i] = in ? v[kv_off + (size_t)(s0 + j) * kv_stride + d] : 0.0f;
    }
    float dk_acc[ATT_KEYS][NC], dv_acc[ATT_KEYS][NC];
#pragma unroll
    for (int kk = 0; kk < ATT_KEYS; kk++)
#pragma unroll
        for (int c = 0; c < NC; c++)
            dk_acc[kk][c] = dv_acc[kk][c] = 0.0f;
    const float *kw = ks + warp * ATT_KEYS * D, *vw = vs + warp * ATT_KEYS * D;
    for (int hh = 0; hh < group; hh++) {
        int h = g * group + hh;
        size_t q_off = (size_t)b * T * q_stride + (size_t)h * D;
        const float *lse_h = lse + ((size_t)b * Hq + h) * T;
        const float *delta_h = delta + ((size_t)b * Hq + h) * T;
        // rows from the first key on, until a row's first visible key passes the last key
        for (int r0 = s0; r0 < T && first_key(r0, window, seg) <= s_last; r0 += ATT_RTILE) {
            __syncthreads();   // the previous tile is consumed (and ks, vs written at first)
            for (int i = threadIdx.x; i < ATT_RTILE * D; i += blockDim.x) {
                int r = i / D, d = i % D, t = r0 + r;
                bool in = t < T;
                qs[r * (D + 1) + d] = in ? q[q_off + (size_t)t * q_stride + d] : 0.0f;
                dos[r * (D + 1) + d] = in ? dout[q_off + (size_t)t * q_stride + d] : 0.0f;
            }
            for (int r = threadIdx.x; r < ATT_RTILE; r += blockDim.x) {
                int t = r0 + r;
                bool in = t < T;
                lse_s[r] = in ? lse_h[t] : 0.0f;
                delta_s[r] = in ? delta_h[t] : 0.0f;
                lo_s[r] = in ? first_key(t, window, seg) : INT_MAX;
            }
            __syncthreads();
            int t = r0 + lane;
            const float *qrow = qs + lane * (D + 1), *dorow = dos + lane * (D + 1);
            float qk[ATT_KEYS], dov[ATT_KEYS];
#pragma unroll
            for (int kk = 0; kk < ATT_KEYS; kk++)
                qk[kk] = dov[kk] = 0.0f;
            for (int d = 0; d < D; d++) {
                float qd = qrow[d], dod = dorow[d];
#pragma unroll
                for (int kk = 0; kk < ATT_KEYS; kk++) {
                    qk[kk] += qd * kw[kk * D + d];
                    dov[kk] += dod * vw[kk * D + d];
                }
            }
            float p[ATT_KEYS], ds[ATT_KEYS];
#pragma unroll
            for (int kk = 0; kk < ATT_KEYS; kk++) {
                int s = s0 + warp * ATT_KEYS + kk;
                bool visible = s <= s_last && s <= t && s >= lo_s[lane];
                float y = soft_cap(qk[kk] * scale, cap);
                p[kk] = visible ? expf(y - lse_s[lane]) : 0.0f;
                ds[kk] = p[kk] * (dov[kk] - delta_s[lane]) * scale * soft_cap_slope(y, cap);
            }
            for (int i = 0; i < ATT_RTILE; i++) {
                float qi[NC], doi[NC];
#pragma unroll
                for (int c = 0; c < NC; c++) {
                    int d = lane + 32 * c;
                    qi[c] = d < D ? qs[i * (D + 1) + d] : 0.0f;
                    doi[c] = d < D ? dos[i * (D + 1) + d] : 0.0f;
                }
#pragma unroll
                for (int kk = 0; kk < ATT_KEYS; kk++) {
                    float pi = __shfl_sync(0xffffffffu, p[kk], i);
                    float dsi = __shfl_sync(0xffffffffu, ds[kk], i);
#pragma unroll
                    for (int c = 0; c < NC; c++) {
                        dv_acc[kk][c] += pi * doi[c];
                        dk_acc[kk][c] += dsi * qi[c];
                    }
                }
            }
        }
    }
#pragma unroll
    for (int kk = 0; kk < ATT_KEYS; kk++) {
        int s = s0 + warp * ATT_KEYS + kk;
        if (s > s_last)
            continue;
        size_t row = kv_off + (size_t)s * kv_stride;
#pragma unroll
        for (int c = 0; c < NC; c++) {
            int d = lane + 32 * c;
            if (d < D) {
                dk.put(row + d, dk_acc[kk][c]);
                dv.put(row + d, dv_acc[kk][c]);
            }
        }
    }
}

template <int NC>
static void launch_backward(cuda_context *c, float *dq, float *dk, float *dv, const float *dout,
                            const float *q, const float *k, const float *v, const float *lse,
                            const float *delta, int B, int T, int Hq, int Hkv, int D, int window,
                            float cap, const int32_t *seg)
{
    float scale = 1.0f / sqrtf((float)D);
    size_t smem_dq = (2 * (size_t)ATT_QTILE * D + 2 * (size_t)ATT_KTILE * (D + 1)) * sizeof(float);
    size_t smem_kv = (2 * (size_t)ATT_KBLOCK * D + 2 * (size_t)ATT_RTILE * (D + 1) +
                      3 * (size_t)ATT_RTILE) * sizeof(float);
    if (!cuda_shared_limit(c, (const void *)attention_dq_kernel<NC>, smem_dq) ||
        !cuda_shared_limit(c, (const void *)attention_dkdv_kernel<NC>, smem_kv))
        return;
    dim3 grid_q((T + ATT_QTILE - 1) / ATT_QTILE, Hq, B);
    size_t nq = (size_t)B * T * Hq * D, nkv = (size_t)B * T * Hkv * D;
    values_in dout_in = read_values(c, dout, nq), q_in = read_values(c, q, nq);
    values_in k_in = read_values(c, k, nkv), v_in = read_values(c, v, nkv);
    values_out to_dq = write_values(c, dq, nq, false), to_dk = write_values(c, dk, nkv, false);
    values_out to_dv = write_values(c, dv, nkv, false);
    CUDA_LAUNCH(attention_dq_kernel<NC>, grid_q, ATT_WARPS * 32, smem_dq, c->stream, to_dq,
                dout_in, q_in, k_in, v_in, lse, delta, T, Hq, Hkv, D, window, seg, scale, cap);
    dim3 grid_kv((T + ATT_KBLOCK - 1) / ATT_KBLOCK, Hkv, B);
    CUDA_LAUNCH(attention_dkdv_kernel<NC>, grid_kv, ATT_WARPS * 32, smem_kv, c->stream, to_dk,
                to_dv, dout_in, q_in, k_in, v_in, lse, delta, T, Hq, Hkv, D, window, seg, scale,
                cap);
    CUDA_LAUNCHED(c);
}

extern "C" void cuda_attention_backward(void *ctx, float *dq, float *dk, float *dv,
                                        const float *dout, const float *q, const float *k,
                                        const float *v, const float *out, const float *lse,
                                        int B, int T, int Hq, int Hkv, int D, int window,
                                        float softcap, const int32_t *seg_start)
{
    CUDA_OP(ctx);
    cuda_parts_start(c);
    if (!head_dim_ok(c, D, Hq, Hkv) || T <= 0 || B <= 0)
        return;
    if (c->attention == CUDA_ATTENTION_GEMM) {
        gemm_backward(c, dq, dk, dv, dout, q, k, v, out, lse, B, T, Hq, Hkv, D, window, softcap,
                      seg_start);
        return;
    }
    if (flash_takes(c, D, Hq, Hkv, softcap, q, k, v, dout)) {
        flash_backward_any(c, dq, dk, dv, dout, q, k, v, out, lse, B, T, Hq, Hkv, D, window,
                           seg_start);
        return;
    }
    size_t rows = (size_t)B * T * Hq;
    float *delta = (float *)cuda_op_work(c, rows * sizeof(float));
    if (!delta)
        return;
    values_in dout_in = read_values(c, dout, rows * D), out_in = read_values(c, out, rows * D);
    CUDA_LAUNCH(attention_delta_kernel, (unsigned)((rows + 7) / 8), 256, 0, c->stream, delta,
                dout_in, out_in, B, T, Hq, D);
    if (!CUDA_LAUNCHED(c))
        return;
    switch (chunks_for(D)) {
    case 1: launch_backward<1>(c, dq, dk, dv, dout, q, k, v, lse, delta, B, T, Hq, Hkv, D, window, softcap, seg_start); break;
    case 2: launch_backward<2>(c, dq, dk, dv, dout, q, k, v, lse, delta, B, T, Hq, Hkv, D, window, softcap, seg_start); break;
    case 4: launch_backward<4>(c, dq, dk, dv, dout, q, k, v, lse, delta, B, T, Hq, Hkv, D, window, softcap, seg_start); break;
    default: launch_backward<8>(c, dq, dk, dv, dout, q, k, v, lse, delta, B, T, Hq, Hkv, D, window, softcap, seg_start); break;
    }
}

// ---- the tensor-core path: cuBLAS products over tiles of scores ------------------------------
//
// PESC_CUDA_ATTENTION=gemm. The kernels above run in fp32 on the CUDA cores; at a TinyLlama
// shape (T 2048) they took near two thirds of an H200 step. Here the four products of attention
// run through cuBLAS in the context's math (bf16 by default) and only the softmax is a kernel
// of ours. Scores are materialised for a chunk of query rows at a time, against the keys that
// chunk can see (k0 .. q1 - 1): the tile is at most PESC_CUDA_ATTENTION_TILE bytes (128 MiB;
// more only where 16 rows of one head need it), and the backward holds two.
//
// The products want every (sequence, head) at one stride, so q, k, v (and dout) are first
// copied head-major, (B, Hq, T, D), with k and v repeated over the query heads of their group;
// dK and dV come back summed over the group, in a fixed order (deterministic).

// xh (B, Hq, T, D) from x (B*T, H, D): head h of xh is head h / rep of x.
__global__ void heads_gather_kernel(float *xh, values_in x, int B, int T, int Hq, int H, int D,
                                    int rep)
{
    GRID_STRIDE(i, (size_t)B * Hq * T * D) {
        int d = (int)(i % D);
        size_t r = i / D;
        int t = (int)(r % T);
        r /= T;
        int h = (int)(r % Hq), b = (int)(r / Hq);
        xh[i] = x[(((size_t)b * T + t) * H + h / rep) * D + d];
    }
}

// x (B*T, H, D) = the sum over the rep heads of xh (B, H * rep, T, D) that belong to each head.
__global__ void heads_scatter_kernel(values_out x, const float *xh, int B, int T, int H, int D,
                                     int rep)
{
    GRID_STRIDE(i, (size_t)B * T * H * D) {
        int d = (int)(i % D);
        size_t r = i / D;
        int g = (int)(r % H);
        r /= H;
        int t = (int)(r % T), b = (int)(r / T);
        const float *src = xh + (((size_t)b * H * rep + (size_t)g * rep) * T + t) * D + d;
        float s = 0.0f;
        for (int j = 0; j < rep; j++)
            s += src[(size_t)j * T * D];
        x.put(i, s);
    }
}

// A tile of scores s (nbh * C rows, nk columns): row r is query q0 + r % C of (sequence, head)
// bh0 + r / C, column j is key k0 + j. One block a row. cap: the scores' softcap (0: none).
struct tile_shape {
    int C, nk, q0, k0, bh0, Hq, T, window;
    float cap;
    const int32_t *seg;
};

__device__ __forceinline__ void tile_row(const tile_shape &ts, int r, int *bh, int *t, int *lo,
                                         int *hi)
{
    *bh = ts.bh0 + r / ts.C;
    *t = ts.q0 + r % ts.C;
    const int32_t *seg = ts.seg ? ts.seg + (size_t)(*bh / ts.Hq) * ts.T : NULL;
    *lo = first_key(*t, ts.window, seg) - ts.k0;   // the visible columns, lo .. hi
    *hi = *t - ts.k0;
}

// Forward, in place: scaled scores become probabilities (0 where masked) of their capped
// values; lse (B, Hq, T).
__global__ void tile_softmax_kernel(float *s, float *lse, tile_shape ts)
{
    __shared__ float red[32];
    int bh, t, lo, hi;
    tile_row(ts, blockIdx.x, &bh, &t, &lo, &hi);
    float *row = s + (size_t)blockIdx.x * ts.nk;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < ts.nk; j += blockDim.x)
        if (j >= lo && j <= hi) {
            if (ts.cap > 0.0f)   // capped in place: each thread reads back only its own j
                row[j] = soft_cap(row[j], ts.cap);
            m = fmaxf(m, row[j]);
        }
    m = block_max(m, red);
    float l = 0.0f;
    for (int j = threadIdx.x; j < ts.nk; j += blockDim.x)
        if (j >= lo && j <= hi)
            l += expf(row[j] - m);
    float z = m + logf(block_sum(l, red));
    for (int j = threadIdx.x; j < ts.nk; j += blockDim.x)
        row[j] = j >= lo && j <= hi ? expf(row[j] - z) : 0.0f;
    if (lse && threadIdx.x == 0)
        lse[(size_t)bh * ts.T + t] = z;
}

// Backward, in place: s holds the scaled scores and dp holds dout.v; s becomes P of their
// capped values y (from the saved lse) and dp becomes dS = P (dP - delta) times y's slope.
// lse and delta (B, Hq, T).
__global__ void tile_backward_kernel(float *s, float *dp, const float *lse, const float *delta,
                                     tile_shape ts)
{
    int bh, t, lo, hi;
    tile_row(ts, blockIdx.x, &bh, &t, &lo, &hi);
    float *row = s + (size_t)blockIdx.x * ts.nk, *drow = dp + (size_t)blockIdx.x * ts.nk;
    float z = lse[(size_t)bh * ts.T + t], dl = delta[(size_t)bh * ts.T + t];
    for (int j = threadIdx.x; j < ts.nk; j += blockDim.x) {
        float y = soft_cap(row[j], ts.cap), p = j >= lo && j <= hi ? expf(y - z) : 0.0f;
        row[j] = p;
        drow[j] = p * (drow[j] - dl) * soft_cap_slope(y, ts.cap);
    }
}

// Query rows q0 .. q0 + C - 1 (fewer at the end) of the (sequence, head)s from bh0, against
// the keys they can see: from k0, as far back as the window reaches (rounded down to a multiple
// of 16, the rows masking the extra keys, so the products' operands and the tile's rows stay
// aligned for the tensor cores), to their last.
static tile_shape tile_at(int bh0, int q0, int C, int Hq, int T, int window, float cap,
                          const int32_t *seg)
{
    int rows = T - q0 < C ? T - q0 : C;
    int k0 = window > 0 && q0 - window + 1 > 0 ? (q0 - window + 1) & ~15 : 0;
    tile_shape ts = {rows, q0 + rows - k0, q0, k0, bh0, Hq, T, window, cap, seg};
    return ts;
}

// Every tile of the plan (C rows of nbh heads): visit(ts, n, off) with n the (sequence, head)s
// of the tile and off the first one's offset in a head-major buffer.
template <typename Visit>
static void for_each_tile(int B, int T, int Hq, int D, int C, int nbh, int window, float cap,
                          const int32_t *seg, Visit visit)
{
    for (int bh0 = 0; bh0 < B * Hq; bh0 += nbh) {
        int n = B * Hq - bh0 < nbh ? B * Hq - bh0 : nbh;
        for (int q0 = 0; q0 < T; q0 += C)
            if (!visit(tile_at(bh0, q0, C, Hq, T, window, cap, seg), n, (size_t)bh0 * T * D))
                return;
    }
}

// Row-major C_i (M, N) = alpha op(A_i) op(B_i) + beta C_i for i < batch, the operands of i at
// i times their strides (cuda_gemm's convention, batched), in the context's math.
static void gemm_batched(cuda_context *c, int trans_a, int trans_b, int M, int N, int K,
                         float alpha, const float *A, int lda, long long sa, const float *B,
                         int ldb, long long sb, float beta, float *C, int ldc, long long sc,
                         int batch)
{
    if (c->failed)
        return;
    cublasComputeType_t compute = cuda_fp32_compute(c->math);
    CUBLAS_CHECK(c, cublasGemmStridedBatchedEx(
                        c->cublas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                        trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B, CUDA_R_32F, ldb,
                        sb, A, CUDA_R_32F, lda, sa, &beta, C, CUDA_R_32F, ldc, sc, batch, compute,
                        CUBLAS_GEMM_DEFAULT));
}

// The chunking: C query rows of nbh (sequence, head)s a tile of at most `budget` bytes, C a
// multiple of 16 where T allows.
static void tile_plan(size_t budget, int B, int T, int Hq, int *C, int *nbh)
{
    size_t row = (size_t)T * sizeof(float), all = (size_t)B * Hq;
    size_t rows = budget / (all * row);
    if (rows >= 16) {
        *C = rows >= (size_t)T ? T : (int)(rows & ~(size_t)15);
        *nbh = (int)all;
        return;
    }
    *C = T < 16 ? T : 16;
    size_t n = budget / ((size_t)*C * row);
    *nbh = (int)(n < 1 ? 1 : n > all ? all : n);
}

// The device scratch of the gemm path: head-major buffers of (B, Hq, T, D) floats, then tiles.
// The backward's is the larger: q, k, v, dout, dq, dk, dv head-major, two tiles (scores and
// their gradient) and a delta per row.
enum { GEMM_BACKWARD_HEADS = 7, GEMM_BACKWARD_TILES = 2 };

static size_t gemm_work_floats(size_t head_buffers, size_t nh, int tiles, size_t tile,
                               size_t extra)
{
    return head_buffers * nh + tiles * tile + extra;
}

static float *gemm_work(cuda_context *c, size_t head_buffers, size_t nh, int tiles, size_t tile,
                        size_t extra)
{
    return (float *)cuda_op_work(c, gemm_work_floats(head_buffers, nh, tiles, tile, extra) *
                                        sizeof(float));
}

// q, k, v head-major into qh, kh, vh (B, Hq, T, D), k and v repeated over their group.
static void gather_qkv(cuda_context *c, float *qh, float *kh, float *vh, const float *q,
                       const float *k, const float *v, int B, int T, int Hq, int Hkv, int D)
{
    size_t nq = (size_t)B * T * Hq * D, nkv = (size_t)B * T * Hkv * D;
    values_in q_in = read_values(c, q, nq), k_in = read_values(c, k, nkv);
    values_in v_in = read_values(c, v, nkv);
    unsigned blocks = cuda_blocks((size_t)B * Hq * T * D, 256);
    CUDA_LAUNCH(heads_gather_kernel, blocks, 256, 0, c->stream, qh, q_in, B, T, Hq, Hq, D, 1);
    CUDA_LAUNCH(heads_gather_kernel, blocks, 256, 0, c->stream, kh, k_in, B, T, Hq, Hkv, D,
                Hq / Hkv);
    CUDA_LAUNCH(heads_gather_kernel, blocks, 256, 0, c->stream, vh, v_in, B, T, Hq, Hkv, D,
                Hq / Hkv);
}

static unsigned tile_threads(int nk) { return nk >= 512 ? 256 : nk >= 128 ? 128 : 32; }

static void gemm_forward(cuda_context *c, float *out, float *lse, const float *q, const float *k,
                         const float *v, int B, int T, int Hq, int Hkv, int D, int window,
                         float cap, const int32_t *seg)
{
    int C, nbh;
    tile_plan(c->att_tile_bytes, B, T, Hq, &C, &nbh);
    size_t nh = (size_t)B * Hq * T * D, tile = (size_t)nbh * C * T;
    float *qh = gemm_work(c, 4, nh, 1, tile, 0);
    if (!qh)
        return;
    float *kh = qh + nh, *vh = kh + nh, *oh = vh + nh, *s = oh + nh;
    unsigned blocks = cuda_blocks(nh, 256);
    gather_qkv(c, qh, kh, vh, q, k, v, B, T, Hq, Hkv, D);
    if (!CUDA_LAUNCHED(c))
        return;
    float scale = 1.0f / sqrtf((float)D);
    long long hs = (long long)T * D;
    for_each_tile(B, T, Hq, D, C, nbh, window, cap, seg, [&](const tile_shape &ts, int n,
                                                             size_t off) {
        int rows = ts.C, nk = ts.nk, q0 = ts.q0, k0 = ts.k0;
        long long st = (long long)rows * nk;
        gemm_batched(c, 0, 1, rows, nk, D, scale, qh + off + (size_t)q0 * D, D, hs,
                     kh + off + (size_t)k0 * D, D, hs, 0.0f, s, nk, st, n);
        CUDA_LAUNCH(tile_softmax_kernel, (unsigned)(n * rows), tile_threads(nk), 0, c->stream, s,
                    lse, ts);
        if (!CUDA_LAUNCHED(c))
            return false;
        gemm_batched(c, 0, 0, rows, D, nk, 1.0f, s, nk, st, vh + off + (size_t)k0 * D, D, hs,
                     0.0f, oh + off + (size_t)q0 * D, D, hs, n);
        return true;
    });
    if (c->failed)
        return;
    values_out to = write_values(c, out, nh, false);
    CUDA_LAUNCH(heads_scatter_kernel, blocks, 256, 0, c->stream, to, oh, B, T, Hq, D, 1);
    CUDA_LAUNCHED(c);
}

static void gemm_backward(cuda_context *c, float *dq, float *dk, float *dv, const float *dout,
                          const float *q, const float *k, const float *v, const float *out,
                          const float *lse, int B, int T, int Hq, int Hkv, int D, int window,
                          float cap, const int32_t *seg)
{
    int rep = Hq / Hkv, C, nbh;
    tile_plan(c->att_tile_bytes, B, T, Hq, &C, &nbh);
    size_t nh = (size_t)B * Hq * T * D, tile = (size_t)nbh * C * T, rows_all = (size_t)B * Hq * T;
    float *qh = gemm_work(c, GEMM_BACKWARD_HEADS, nh, GEMM_BACKWARD_TILES, tile, rows_all);
    if (!qh)
        return;
    float *kh = qh + nh, *vh = kh + nh, *doh = vh + nh, *dqh = doh + nh, *dkh = dqh + nh;
    float *dvh = dkh + nh, *s = dvh + nh, *dp = s + tile, *delta = dp + tile;
    unsigned blocks = cuda_blocks(nh, 256);
    values_in dout_in = read_values(c, dout, nh), out_in = read_values(c, out, nh);
    CUDA_LAUNCH(attention_delta_kernel, (unsigned)((rows_all + 7) / 8), 256, 0, c->stream, delta,
                dout_in, out_in, B, T, Hq, D);
    gather_qkv(c, qh, kh, vh, q, k, v, B, T, Hq, Hkv, D);
    CUDA_LAUNCH(heads_gather_kernel, blocks, 256, 0, c->stream, doh, dout_in, B, T, Hq, Hq, D, 1);
    if (!CUDA_LAUNCHED(c) ||
        !CUDA_CHECK(c, cudaMemsetAsync(dkh, 0, 2 * nh * sizeof(float), c->stream)))   // dkh, dvh
        return;
    float scale = 1.0f / sqrtf((float)D);
    long long hs = (long long)T * D;
    for_each_tile(B, T, Hq, D, C, nbh, window, cap, seg, [&](const tile_shape &ts, int n,
                                                             size_t off) {
        int rows = ts.C, nk = ts.nk, q0 = ts.q0, k0 = ts.k0;
        long long st = (long long)rows * nk;
        const float *qc = qh + off + (size_t)q0 * D, *doc = doh + off + (size_t)q0 * D;
        const float *kc = kh + off + (size_t)k0 * D, *vc = vh + off + (size_t)k0 * D;
        gemm_batched(c, 0, 1, rows, nk, D, scale, qc, D, hs, kc, D, hs, 0.0f, s, nk, st, n);
        gemm_batched(c, 0, 1, rows, nk, D, 1.0f, doc, D, hs, vc, D, hs, 0.0f, dp, nk, st, n);
        CUDA_LAUNCH(tile_backward_kernel, (unsigned)(n * rows), tile_threads(nk), 0, c->stream, s,
                    dp, lse, delta, ts);
        if (!CUDA_LAUNCHED(c))
            return false;
        // dV += P^T dout, dQ = scale dS K, dK += scale dS^T Q
        gemm_batched(c, 1, 0, nk, D, rows, 1.0f, s, nk, st, doc, D, hs, 1.0f,
                     dvh + off + (size_t)k0 * D, D, hs, n);
        gemm_batched(c, 0, 0, rows, D, nk, scale, dp, nk, st, kc, D, hs, 0.0f,
                     dqh + off + (size_t)q0 * D, D, hs, n);
        gemm_batched(c, 1, 0, nk, D, rows, scale, dp, nk, st, qc, D, hs, 1.0f,
                     dkh + off + (size_t)k0 * D, D, hs, n);
        return true;
    });
    if (c->failed)
        return;
    size_t nkv = (size_t)B * T * Hkv * D;
    values_out to_dq = write_values(c, dq, nh, false), to_dk = write_values(c, dk, nkv, false);
    values_out to_dv = write_values(c, dv, nkv, false);
    CUDA_LAUNCH(heads_scatter_kernel, blocks, 256, 0, c->stream, to_dq, dqh, B, T, Hq, D, 1);
    blocks = cuda_blocks(nkv, 256);
    CUDA_LAUNCH(heads_scatter_kernel, blocks, 256, 0, c->stream, to_dk, dkh, B, T, Hkv, D, rep);
    CUDA_LAUNCH(heads_scatter_kernel, blocks, 256, 0, c->stream, to_dv, dvh, B, T, Hkv, D, rep);
    CUDA_LAUNCHED(c);
}

static size_t flash_backward_work(bool mma, int B, int T, int Hq, int Hkv, int D, size_t ds);
static size_t flash_ds_bytes(const cuda_context *c, bool mma, int B, int T, int Hq);

// The op scratch attention's backward takes (the forward's is smaller): a delta per row for
// the fused kernels, gemm_backward's buffers for the gemm path, and for flash the delta with
// the operands' half and bf16 copies (and the stored dS, PESC_CUDA_FLASH_DQ=stored).
extern "C" size_t cuda_attention_work(void *ctx, int B, int T, int Hq, int Hkv, int D)
{
    cuda_context *c = (cuda_context *)ctx;
    size_t rows_all = (size_t)B * Hq * T;
    if (c->flash_ok && flash_shape_ok(D, Hq, Hkv) && flash_fits(c, D)) {
        bool mma = flash_mma_here(c, D);
        return flash_backward_work(mma, B, T, Hq, Hkv, D, flash_ds_bytes(c, mma, B, T, Hq));
    }
    if (c->attention != CUDA_ATTENTION_GEMM)
        return rows_all * sizeof(float);
    int C, nbh;
    tile_plan(c->att_tile_bytes, B, T, Hq, &C, &nbh);
    return gemm_work_floats(GEMM_BACKWARD_HEADS, rows_all * D, GEMM_BACKWARD_TILES,
                            (size_t)nbh * C * T, rows_all) * sizeof(float);
}

// ---- the tensor-core path: flash attention in half and bf16 ----------------------------------
//
// PESC_CUDA_ATTENTION=flash (cuda_flash_mma.cuh's kernels, or cuda_flash.cuh's where the
// layout check fails) or flash-wmma (cuda_flash.cuh's), for training's forward and backward;
// generation's KV-cache forward stays on the fused kernel. Shapes the kernels do not take
// (flash_shape_ok) and devices before sm_80 run the fused kernels instead.

bool cuda_flash_available(cuda_context *c, int cc_major)
{
    cudaFuncAttributes attr;
    if (cc_major < 8 || !CUDA_CHECK(c, cudaFuncGetAttributes(&attr, flash_forward_kernel<4>)))
        return false;
    return attr.binaryVersion >= 80 || attr.ptxVersion >= 80;
}

// Whether this device's mma.sync products agree with cuda_flash_mma.cuh's reading of the
// fragment layout, in T: one product of small integers (exact in every type here), loaded and
// stored by the layout, against the product computed here. When not, `why` says how, for the
// device line: how many of the 128 results differ, and the first.
template <class T>
static bool mma_probe_one(cuda_context *c, const char *type, char *why, size_t why_size)
{
    int ai[16 * 16], bi[16 * 16];
    T a[16 * 16], b[16 * 16];
    float want[16 * 16], got[FLASH_PROBE_BLOCKS * 16 * 8];   // C = A B, and the probe's blocks
    for (int i = 0; i < 16 * 16; i++) {
        ai[i] = i * 7 % 11 - 5, a[i] = operand_cvt<T>((float)ai[i]);
        bi[i] = i * 5 % 9 - 4, b[i] = operand_cvt<T>((float)bi[i]);
    }
    for (int r = 0; r < 16; r++)
        for (int j = 0; j < 16; j++) {
            int sum = 0;
            for (int k = 0; k < 16; k++)
                sum += ai[r * 16 + k] * bi[k * 16 + j];
            want[r * 16 + j] = (float)sum;
        }
    unsigned char *w = (unsigned char *)cuda_op_work(c, sizeof a + sizeof b + sizeof got);
    if (!w)
        return false;
    T *da = (T *)w, *db = (T *)(w + sizeof a);
    float *dd = (float *)(w + sizeof a + sizeof b);
    if (!CUDA_CHECK(c, cudaMemcpyAsync(da, a, sizeof a, cudaMemcpyHostToDevice, c->stream)) ||
        !CUDA_CHECK(c, cudaMemcpyAsync(db, b, sizeof b, cudaMemcpyHostToDevice, c->stream)))
        return false;
    CUDA_LAUNCH(flash_mma_probe_kernel<T>, 1, 32, FLASH_PROBE_SHARED, c->stream, dd, da, db);
    if (!CUDA_LAUNCHED(c) ||
        !CUDA_CHECK(c, cudaMemcpyAsync(got, dd, sizeof got, cudaMemcpyDeviceToHost, c->stream)) ||
        !CUDA_CHECK(c, cudaStreamSynchronize(c->stream)))
        return false;
    static const char *const how[FLASH_PROBE_BLOCKS] = {
        "", " through ldmatrix", " through ldmatrix", " through ldmatrix .trans",
        " through ldmatrix .trans"};
    for (int blk = 0; blk < FLASH_PROBE_BLOCKS; blk++) {
        int differ = 0, first = -1, c0 = blk == 2 || blk == 4 ? 8 : 0;   // b's columns
        const float *d = got + 128 * blk;
        for (int i = 0; i < 16 * 8; i++)
            if (d[i] != want[i / 8 * 16 + c0 + i % 8] && differ++ == 0)
                first = i;
        if (differ) {
            snprintf(why, why_size, "%s%s: %d of 128 differ, first C[%d][%d] %g not %g", type,
                     how[blk], differ, first / 8, c0 + first % 8, (double)d[first],
                     (double)want[first / 8 * 16 + c0 + first % 8]);
            return false;
        }
    }
    return true;
}

bool cuda_flash_mma_probe(cuda_context *c, char *why, size_t why_size)
{
    return mma_probe_one<__half>(c, "half", why, why_size) &&
           mma_probe_one<__nv_bfloat16>(c, "bf16", why, why_size);
}

static bool aligned16(const float *p) { return ((uintptr_t)p & 15) == 0; }

// The shared memory a kernel set takes at head dimension D: its largest kernel's.
static size_t largest(size_t a, size_t b, size_t c)
{
    size_t ab = a > b ? a : b;
    return ab > c ? ab : c;
}
static size_t flash_mma_shared(int D)   // with PESC_CUDA_FLASH_DQ=stored's dQ kernel
{
    size_t dq = flash_mma_dq_shared(D) > flash_mma_dq_ds_shared(D) ? flash_mma_dq_shared(D)
                                                                     : flash_mma_dq_ds_shared(D);
    return largest(flash_mma_forward_shared(D), dq, flash_mma_dkdv_shared(D));
}
static size_t flash_wmma_shared(int D)
{
    return largest(flash_forward_shared(D), flash_dq_shared(D), flash_dkdv_shared(D));
}

// The mma kernels at D: the layout check passed, and this device has their shared memory (at
// D = 64 their dK/dV takes 92 KiB, within an sm_86 or sm_89 card's 99; at D = 96 and 128 their
// dQ and dK/dV take 105 to 140 KiB).
static bool flash_mma_here(const cuda_context *c, int D)
{
    return c->flash_mma && flash_mma_shared(D) <= (size_t)c->max_shared;
}

// Some flash kernels fit at D: the mma ones, else the wmma ones (which take more at every D:
// they run for lack of room only where the mma ones would not either). Where neither does (D =
// 96 and 128 on those cards), the fused kernels run, as for the shapes flash does not take.
static bool flash_fits(const cuda_context *c, int D)
{
    return flash_mma_here(c, D) || flash_wmma_shared(D) <= (size_t)c->max_shared;
}

// flash_ok: flash asked for, and runs here; no softcap (its kernels have none: the fused ones
// or the gemm path take Gemma 2's). The operands' conversion reads float4s (dout: NULL
// in the forward); the model's tensors start on 64 bytes.
static bool flash_takes(const cuda_context *c, int D, int Hq, int Hkv, float cap, const float *q,
                        const float *k, const float *v, const float *dout)
{
    return cap == 0.0f && c->flash_ok && flash_shape_ok(D, Hq, Hkv) && flash_fits(c, D) && aligned16(q) &&
           aligned16(k) && aligned16(v) && (!dout || aligned16(dout));
}

// Scratch for the kernels' operands, carved in 256-byte pieces from the op work area.
typedef struct flash_carver {
    char *at;
    size_t used;
} flash_carver;

static size_t flash_piece(size_t bytes) { return (bytes + 255) & ~(size_t)255; }

static void *flash_carve(flash_carver *w, size_t bytes)
{
    void *p = w->at + w->used;
    w->used += flash_piece(bytes);
    return p;
}

// Rows of the mma kernels' transposed operands: T rounded up to whole tiles.
static int flash_tp(int T) { return (T + FL_TILE - 1) / FL_TILE * FL_TILE; }

// The stored dS (cuda_flash_mma.cuh, PESC_CUDA_FLASH_DQ=stored) grows with T^2: past this the
// dQ kernel makes S, P and dP again instead.
#define FLASH_DS_MAX_BYTES ((size_t)1 << 30)

// The bytes of the backward's stored dS: B Hq triangles of T's tiles in bf16; 0 where it is not
// asked for, the mma kernels do not run, or it would take more than FLASH_DS_MAX_BYTES.
static size_t flash_ds_bytes(const cuda_context *c, bool mma, int B, int T, int Hq)
{
    size_t bytes = (size_t)B * Hq * flash_ds_tiles(T) * FL_DS_TILE * sizeof(__nv_bfloat16);
    return c->flash_ds && mma && bytes <= FLASH_DS_MAX_BYTES ? bytes : 0;
}

// The backward's scratch: delta (B Hq T floats); q, k in half; dout, v in bf16, and for the
// wmma kernels q and k in bf16, for the mma kernels k and q in bf16 transposed (unused where
// q and k are in bf16 alone, as the kernels read their rows, but for the stored-dS dQ kernel's
// k^T); with
// grouped heads, each query head's part of dk and dv (fp32, q's size).
static size_t flash_backward_work(bool mma, int B, int T, int Hq, int Hkv, int D, size_t ds)
{
    size_t nq = (size_t)B * T * Hq * D, nkv = (size_t)B * T * Hkv * D, h = 2;
    size_t parts = Hq == Hkv ? 0 : 2 * flash_piece(nq * sizeof(float));
    size_t common = flash_piece((size_t)B * Hq * T * sizeof(float)) + 2 * flash_piece(nq * h) +
                    2 * flash_piece(nkv * h) + parts;
    if (mma) {
        size_t tq = (size_t)B * Hq * D * flash_tp(T), tkv = (size_t)B * Hkv * D * flash_tp(T);
        return common + flash_piece(tq * h) + flash_piece(tkv * h) + flash_piece(ds);
    }
    return common + flash_piece(nq * h) + flash_piece(nkv * h);
}

template <class T> __global__ void convert_bf16_kernel(T *out, const __nv_bfloat16 *in, size_t n)
{
    GRID_STRIDE(i, n) out[i] = operand_cvt<T>(__bfloat162float(in[i]));
}

// out = in (n floats, or n bf16 values alone: backend_alloc_compact) as T; false after a
// failure.
template <class T> static bool flash_convert(cuda_context *c, T *out, const float *in, size_t n)
{
    if (const __nv_bfloat16 *h = cuda_compact(c, in, n))
        CUDA_LAUNCH(convert_bf16_kernel<T>, cuda_blocks(n, 256), 256, 0, c->stream, out, h, n);
    else
        CUDA_LAUNCH(convert_kernel<T>, cuda_blocks(n / 4, 256), 256, 0, c->stream, out, in, n,
                    true);
    return CUDA_LAUNCHED(c);
}

// Whether q and k (nq, nkv floats) are both in bf16 alone, 16-byte aligned as the flash
// kernels' tile copies need: then *q16 and *k16 are their values, and the mma kernels take
// them for the scores as they are. Converting them to half would give the same scores (a bf16
// value is a half one within half's range), after two passes.
static bool flash_qk_bf16(const cuda_context *c, const float *q, const float *k, size_t nq,
                          size_t nkv, const __nv_bfloat16 **q16, const __nv_bfloat16 **k16)
{
    *q16 = cuda_compact(c, q, nq);
    *k16 = cuda_compact(c, k, nkv);
    return *q16 && *k16 && ((uintptr_t)*q16 & 15) == 0 && ((uintptr_t)*k16 & 15) == 0;
}

// in's values in bf16 (n): in's own where it is in bf16 alone, else converted into room; NULL
// after a failure.
static const __nv_bfloat16 *flash_bf16(cuda_context *c, __nv_bfloat16 *room, const float *in,
                                       size_t n)
{
    if (const __nv_bfloat16 *h = cuda_compact(c, in, n))
        return h;
    return flash_convert(c, room, in, n) ? room : NULL;
}

// out (B, H, D, flash_tp(T)) = in (B T, H, D) as T, each head's columns as rows, zeros past T;
// in fp32 or in bf16 alone (backend_alloc_compact).
template <class T>
static bool flash_convert_t(cuda_context *c, T *out, const float *in, int B, int T_len, int H,
                            int D)
{
    int tp = flash_tp(T_len);
    dim3 grid(tp / 32, H * D / 32, B);
    if (const __nv_bfloat16 *h = cuda_compact(c, in, (size_t)B * T_len * H * D))
        CUDA_LAUNCH((convert_transpose_kernel<T, __nv_bfloat16>), grid, dim3(32, 8), 0, c->stream,
                    out, h, T_len, tp, H, D);
    else
        CUDA_LAUNCH(convert_transpose_kernel<T>, grid, dim3(32, 8), 0, c->stream, out, in, T_len,
                    tp, H, D);
    return CUDA_LAUNCHED(c);
}

// q and k in TQ: half, or bf16 where they are bf16 values alone (the same scores)
template <int NCH, class TQ>
static void flash_mma_forward(cuda_context *c, float *out, float *lse, const TQ *q, const TQ *k,
                              const __half *vt, int B, int T, int Hq, int Hkv, int window,
                              const int32_t *seg)
{
    // the output feeds the o projection's product next: its bf16 copy beside it (or its bf16
    // values alone)
    values_out to = write_values(c, out, (size_t)B * T * Hq * NCH * 16, true);
    size_t smem = flash_mma_forward_shared(NCH * 16);
    if (!cuda_shared_limit(c, (const void *)flash_mma_forward_kernel<NCH, TQ>, smem))
        return;
    int rows = flash_mma_rows(NCH * 16);   // a block's query rows
    dim3 grid((T + rows - 1) / rows, Hq, B);
    CUDA_LAUNCH((flash_mma_forward_kernel<NCH, TQ>), grid, FL_THREADS, smem, c->stream, to.f, to.h,
                lse, q, k, vt, T, flash_tp(T), Hq, Hkv, window, seg,
                1.0f / sqrtf((float)(NCH * 16)));
    CUDA_LAUNCHED(c);
}

// dk_part, dv_part as for flash_backward; q and k as for flash_mma_forward. ds: NULL, or room
// for the stored dS (flash_ds_bytes): then the dK/dV kernel runs first and stores it, and dQ
// is made from it.
template <int NCH, class TQ>
static void flash_mma_backward(cuda_context *c, values_out dq, values_out dk_part,
                               values_out dv_part, const __nv_bfloat16 *dout, const TQ *q,
                               const TQ *k, const __nv_bfloat16 *v, const __nv_bfloat16 *kt,
                               const __nv_bfloat16 *qt, const float *lse, const float *delta,
                               __nv_bfloat16 *ds, int B, int T, int Hq, int Hkv, int window,
                               const int32_t *seg)
{
    int D = NCH * 16, tp = flash_tp(T);
    float scale = 1.0f / sqrtf((float)D);
    size_t smem_dq = ds ? flash_mma_dq_ds_shared(D) : flash_mma_dq_shared(D);
    size_t smem_kv = flash_mma_dkdv_shared(D);
    const void *dq_kernel = ds ? (const void *)flash_mma_dq_ds_kernel<NCH>
                               : (const void *)flash_mma_dq_kernel<NCH, TQ>;
    const void *kv_kernel = ds ? (const void *)flash_mma_dkdv_kernel<NCH, TQ, true>
                               : (const void *)flash_mma_dkdv_kernel<NCH, TQ>;
    if (!cuda_shared_limit(c, dq_kernel, smem_dq) || !cuda_shared_limit(c, kv_kernel, smem_kv))
        return;
    int rows = flash_mma_rows(D);   // a block's query rows (dQ), or keys (dK, dV)
    dim3 grid((T + rows - 1) / rows, Hq, B);
    if (!ds) {
        CUDA_LAUNCH((flash_mma_dq_kernel<NCH, TQ>), grid, FL_THREADS, smem_dq, c->stream, dq.f,
                    dq.h, dout, q, k, v, kt, lse, delta, T, tp, Hq, Hkv, window, seg, scale);
        cuda_part(c, "dq kernel");
    }
    auto dkdv = ds ? flash_mma_dkdv_kernel<NCH, TQ, true> : flash_mma_dkdv_kernel<NCH, TQ>;
    CUDA_LAUNCH(dkdv, grid, FL_THREADS, smem_kv, c->stream, dk_part.f, dv_part.f, dk_part.h,
                dv_part.h, dout, q, k, v, qt, lse, delta, T, tp, Hq, Hkv, window, seg, scale, ds);
    cuda_part(c, ds ? "dk, dv kernel (dS stored)" : "dk, dv kernel");
    if (ds) {
        CUDA_LAUNCH(flash_mma_dq_ds_kernel<NCH>, grid, FL_THREADS, smem_dq, c->stream, dq.f, dq.h,
                    ds, kt, T, tp, Hq, Hkv, window, seg, scale);
        cuda_part(c, "dq kernel (from the stored dS)");
    }
    CUDA_LAUNCHED(c);
}

// flash_mma_forward at head dimension D (32, 64, 96 or 128)
template <class TQ>
static void flash_mma_forward_d(cuda_context *c, int D, float *out, float *lse, const TQ *q,
                                const TQ *k, const __half *vt, int B, int T, int Hq, int Hkv,
                                int window, const int32_t *seg)
{
    auto run = D == 32 ? flash_mma_forward<2, TQ> : D == 64 ? flash_mma_forward<4, TQ>
             : D == 96 ? flash_mma_forward<6, TQ> : flash_mma_forward<8, TQ>;
    run(c, out, lse, q, k, vt, B, T, Hq, Hkv, window, seg);
}

// The backward's operands and results but q and k, as flash_mma_backward takes them.
struct flash_mma_parts {
    values_out dq, dk_part, dv_part;
    const __nv_bfloat16 *dout, *v, *kt, *qt;   // qt: NULL where q is bf16
    const float *lse, *delta;
    __nv_bfloat16 *ds;   // the stored dS's room, or NULL
};

// flash_mma_backward at head dimension D
template <class TQ>
static void flash_mma_backward_d(cuda_context *c, int D, const flash_mma_parts &p, const TQ *q,
                                 const TQ *k, int B, int T, int Hq, int Hkv, int window,
                                 const int32_t *seg)
{
    auto run = D == 32 ? flash_mma_backward<2, TQ> : D == 64 ? flash_mma_backward<4, TQ>
             : D == 96 ? flash_mma_backward<6, TQ> : flash_mma_backward<8, TQ>;
    run(c, p.dq, p.dk_part, p.dv_part, p.dout, q, k, p.v, p.kt, p.qt, p.lse, p.delta, p.ds, B,
        T, Hq, Hkv, window, seg);
}

template <int NCH>
static void flash_forward(cuda_context *c, float *out, float *lse, const __half *q,
                          const __half *k, const __half *v, int B, int T, int Hq, int Hkv,
                          int window, const int32_t *seg)
{
    size_t smem = flash_forward_shared(NCH * 16);
    if (!cuda_shared_limit(c, (const void *)flash_forward_kernel<NCH>, smem))
        return;
    dim3 grid((T + FL_TILE - 1) / FL_TILE, Hq, B);
    values_out to = write_values(c, out, (size_t)B * T * Hq * NCH * 16, false);
    CUDA_LAUNCH(flash_forward_kernel<NCH>, grid, FL_THREADS, smem, c->stream, to.f, to.h, lse, q,
                k, v, T, Hq, Hkv, window, seg, 1.0f / sqrtf((float)(NCH * 16)));
    CUDA_LAUNCHED(c);
}

// dk_part, dv_part: (B T, Hq, D) for the query heads' parts when heads are grouped, else
// dk and dv.
template <int NCH>
static void flash_backward(cuda_context *c, values_out dq, values_out dk_part, values_out dv_part,
                           const __nv_bfloat16 *dout, const __half *q,
                           const __nv_bfloat16 *q_b, const __half *k, const __nv_bfloat16 *k_b,
                           const __nv_bfloat16 *v, const float *lse, const float *delta, int B,
                           int T, int Hq, int Hkv, int window, const int32_t *seg)
{
    int D = NCH * 16;
    float scale = 1.0f / sqrtf((float)D);
    size_t smem_dq = flash_dq_shared(D), smem_kv = flash_dkdv_shared(D);
    if (!cuda_shared_limit(c, (const void *)flash_dq_kernel<NCH>, smem_dq) ||
        !cuda_shared_limit(c, (const void *)flash_dkdv_kernel<NCH>, smem_kv))
        return;
    dim3 grid_q((T + FL_TILE - 1) / FL_TILE, Hq, B);
    CUDA_LAUNCH(flash_dq_kernel<NCH>, grid_q, FL_THREADS, smem_dq, c->stream, dq.f, dq.h, dout, q,
                k, k_b, v, lse, delta, T, Hq, Hkv, window, seg, scale);
    cuda_part(c, "dq kernel");
    dim3 grid_kv((T + FL_TILE - 1) / FL_TILE, Hq, B);
    CUDA_LAUNCH(flash_dkdv_kernel<NCH>, grid_kv, FL_THREADS, smem_kv, c->stream, dk_part.f,
                dv_part.f, dk_part.h, dv_part.h, dout, q, q_b, k, v, lse, delta, T, Hq, Hkv, window,
                seg, scale);
    cuda_part(c, "dk, dv kernel");
    CUDA_LAUNCHED(c);
}

static void flash_forward_any(cuda_context *c, float *out, float *lse, const float *q,
                              const float *k, const float *v, int B, int T, int Hq, int Hkv,
                              int D, int window, const int32_t *seg)
{
    size_t nq = (size_t)B * T * Hq * D, nkv = (size_t)B * T * Hkv * D;
    bool mma = flash_mma_here(c, D);
    size_t nv = mma ? (size_t)B * Hkv * D * flash_tp(T) : nkv;   // mma: v transposed
    flash_carver w = {
        (char *)cuda_op_work(c, flash_piece(2 * nq) + flash_piece(2 * nkv) + flash_piece(2 * nv)),
        0};
    if (!w.at)
        return;
    __half *qh = (__half *)flash_carve(&w, 2 * nq), *kh = (__half *)flash_carve(&w, 2 * nkv);
    __half *vh = (__half *)flash_carve(&w, 2 * nv);
    // the scores from q and k as they are where they are bf16 values (mma), else in half
    const __nv_bfloat16 *q16 = NULL, *k16 = NULL;
    bool qk16 = mma && flash_qk_bf16(c, q, k, nq, nkv, &q16, &k16);
    if (!qk16 && (!flash_convert(c, qh, q, nq) || !flash_convert(c, kh, k, nkv)))
        return;
    if (mma) {
        if (!flash_convert_t(c, vh, v, B, T, Hkv, D))
            return;
        cuda_part(c, "conversions");
        if (qk16)
            flash_mma_forward_d(c, D, out, lse, q16, k16, vh, B, T, Hq, Hkv, window, seg);
        else
            flash_mma_forward_d(c, D, out, lse, qh, kh, vh, B, T, Hq, Hkv, window, seg);
        cuda_part(c, "flash kernel");
        return;
    }
    if (!flash_convert(c, vh, v, nkv))
        return;
    cuda_part(c, "conversions");
    auto run = D == 32 ? flash_forward<2> : D == 64 ? flash_forward<4>
             : D == 96 ? flash_forward<6> : flash_forward<8>;
    run(c, out, lse, qh, kh, vh, B, T, Hq, Hkv, window, seg);
    cuda_part(c, "flash kernel");
}

static void flash_backward_any(cuda_context *c, float *dq, float *dk, float *dv,
                               const float *dout, const float *q, const float *k, const float *v,
                               const float *out, const float *lse, int B, int T, int Hq, int Hkv,
                               int D, int window, const int32_t *seg)
{
    size_t nq = (size_t)B * T * Hq * D, nkv = (size_t)B * T * Hkv * D, rows = (size_t)B * T * Hq;
    bool mma = flash_mma_here(c, D);
    size_t ds_bytes = flash_ds_bytes(c, mma, B, T, Hq);
    size_t bytes = flash_backward_work(mma, B, T, Hq, Hkv, D, ds_bytes);
    flash_carver w = {(char *)cuda_op_work(c, bytes), 0};
    if (!w.at)
        return;
    float *delta = (float *)flash_carve(&w, rows * sizeof(float));
    __half *qh = (__half *)flash_carve(&w, 2 * nq), *kh = (__half *)flash_carve(&w, 2 * nkv);
    __nv_bfloat16 *dob_room = (__nv_bfloat16 *)flash_carve(&w, 2 * nq);
    __nv_bfloat16 *vb_room = (__nv_bfloat16 *)flash_carve(&w, 2 * nkv);
    // dq, dk and dv in fp32, or in bf16 alone (the kernels write either); a group's parts fp32
    values_out to_dq = write_values(c, dq, nq, false);
    values_out to_dk = write_values(c, dk, nkv, false), to_dv = write_values(c, dv, nkv, false);
    values_out dk_part = to_dk, dv_part = to_dv;
    if (Hq != Hkv) {
        dk_part = {(float *)flash_carve(&w, nq * sizeof(float)), NULL};
        dv_part = {(float *)flash_carve(&w, nq * sizeof(float)), NULL};
    }
    values_in dout_in = read_values(c, dout, nq), out_in = read_values(c, out, nq);
    CUDA_LAUNCH(attention_delta_kernel, (unsigned)((rows + 7) / 8), 256, 0, c->stream, delta,
                dout_in, out_in, B, T, Hq, D);
    // the bf16 operands: dout and v as they are where they are in bf16 alone; the scores' q and
    // k too on the mma kernels, else in half
    const __nv_bfloat16 *dob = flash_bf16(c, dob_room, dout, nq);
    const __nv_bfloat16 *vb = flash_bf16(c, vb_room, v, nkv);
    const __nv_bfloat16 *q16 = NULL, *k16 = NULL;
    bool qk16 = mma && flash_qk_bf16(c, q, k, nq, nkv, &q16, &k16);
    if (!CUDA_LAUNCHED(c) || !dob || !vb ||
        (!qk16 && (!flash_convert(c, qh, q, nq) || !flash_convert(c, kh, k, nkv))))
        return;
    if (mma) {
        size_t tq = (size_t)B * Hq * D * flash_tp(T), tkv = (size_t)B * Hkv * D * flash_tp(T);
        __nv_bfloat16 *kt = (__nv_bfloat16 *)flash_carve(&w, 2 * tkv);
        __nv_bfloat16 *qt = (__nv_bfloat16 *)flash_carve(&w, 2 * tq);
        __nv_bfloat16 *ds = ds_bytes ? (__nv_bfloat16 *)flash_carve(&w, ds_bytes) : NULL;
        // k^T for the dQ kernels but where it reads k's rows, q^T for dK where q is half
        if ((!(qk16 && !ds) && !flash_convert_t(c, kt, k, B, T, Hkv, D)) ||
            (!qk16 && !flash_convert_t(c, qt, q, B, T, Hq, D)))
            return;
        cuda_part(c, "delta, conversions");
        // what is not made is passed as NULL: a read of it faults
        flash_mma_parts parts = {to_dq, dk_part, dv_part, dob, vb, qk16 && !ds ? NULL : kt,
                                 qk16 ? NULL : qt, lse, delta, ds};
        if (qk16)
            flash_mma_backward_d(c, D, parts, q16, k16, B, T, Hq, Hkv, window, seg);
        else
            flash_mma_backward_d(c, D, parts, qh, kh, B, T, Hq, Hkv, window, seg);
    } else {
        __nv_bfloat16 *qb_room = (__nv_bfloat16 *)flash_carve(&w, 2 * nq);
        __nv_bfloat16 *kb_room = (__nv_bfloat16 *)flash_carve(&w, 2 * nkv);
        const __nv_bfloat16 *qb = flash_bf16(c, qb_room, q, nq);
        const __nv_bfloat16 *kb = flash_bf16(c, kb_room, k, nkv);
        if (!qb || !kb)
            return;
        cuda_part(c, "delta, conversions");
        auto run = D == 32 ? flash_backward<2> : D == 64 ? flash_backward<4>
                 : D == 96 ? flash_backward<6> : flash_backward<8>;
        run(c, to_dq, dk_part, dv_part, dob, qh, qb, kh, kb, vb, lse, delta, B, T, Hq, Hkv, window,
            seg);
    }
    if (Hq != Hkv) {   // a group's parts, summed in head order
        CUDA_LAUNCH(flash_group_sum_kernel, cuda_blocks(nkv, 256), 256, 0, c->stream, to_dk.f,
                    to_dv.f, to_dk.h, to_dv.h, dk_part.f, dv_part.f, (size_t)B * T, Hq, Hkv, D);
        CUDA_LAUNCHED(c);
        cuda_part(c, "dk, dv: the groups' sums");
    }
}
