// cuda_moe — PESC routing and the expert adapters on the GPU.
//
// Routing (top-k, gate softmax, softmax over all experts, log-sum-exp) and its backward run one
// thread per token, in the CPU backend's own code (moe_route.h). The grouping of (token, slot)
// pairs by expert and the routing statistics are computed here too (moe_group, cuda_group.cuh);
// model_forward.c's route_start downloads the statistics with the group sizes, MOE_STATS doubles,
// and route_finish collects them after the frozen FFN is queued: a forward's one wait per layer,
// with the FFN's products still to run on the GPU (a recomputed layer's replay waits for nothing).
// `offsets` arrive in host memory and fix the product shapes here without another wait.
//
// The adapters of one layer: gather the routed rows (times the dropout mask, drawn from its seed
// where it is applied: no mask in memory) into expert order, the products of D_e and of U_e over
// each expert's group (a contiguous slice), the exact GELU between them, and a combine that adds
// each token's k weighted adapter outputs in slot order. The combine reads through the inverse
// permutation, so no two threads add into one element and the result is deterministic. The
// experts' products of one step go to cuBLAS as one grouped call (experts_gemm): an expert's slice
// alone (about 1000 rows by 512 at TinyLlama's shape) is too few tiles to fill a large GPU. In
// bf16 math the rows are bf16 throughout (see "the adapters" below): what cuBLAS groups in bf16,
// at twice TF32's rate.
// PESC_CUDA_EXPERTS=mma runs the products of bf16 math on kernels of our own instead, one
// launch over every expert's tiles (cuda_experts_mma.cuh): the row products, and the weights'
// gradients straight into their fp32 sums.
// PESC_CUDA_EXPERT_ALIGN and _ROOM lay the rows out by expert instead of in perm's order
// (moe_rows.h): a block of every expert's first rows, alike, whose products are strided
// batched calls (experts_batched), then each expert's rest on a multiple of some rows; rows
// of zeros fill both, which the gather writes and every product passes through as zeros.
#include "cuda/cuda_common.cuh"
#include "cuda/cuda_convert.cuh"
#include "cuda/cuda_experts_mma.cuh"
#include "cuda/cuda_group.cuh"
#include "dropout_hash.h"
#include "moe_route.h"
#include "moe_rows.h"


// ---- routing --------------------------------------------------------------------------------

__global__ void route_forward_kernel(int32_t *topk_idx, float *topk_w, float *probs, float *lse,
                                     const float *logits, const int32_t *sources, int N, int E,
                                     int K)
{
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N)
        return;
    int32_t *idx = topk_idx + (size_t)n * K;
    float *w = topk_w + (size_t)n * K, *p = probs + (size_t)n * E;
    if (sources && sources[n] < 0)   // padding: routed nowhere
        pesc_route_none(idx, w, p, lse + n, E, K);
    else
        pesc_route_token(idx, w, p, lse + n, logits + (size_t)n * E, E, K);
}

extern "C" void cuda_moe_route_forward(void *ctx, int32_t *topk_idx, float *topk_w, float *probs,
                                       float *lse, const float *logits, const int32_t *sources,
                                       int N, int E, int K)
{
    // the routing runs between the FFN's norm and its products: the norm's bf16 copy stays
    CUDA_OP_WRITING(ctx, (const float *)topk_idx, (size_t)N * K);
    cuda_forget_copies(c, topk_w, (size_t)N * K);
    cuda_forget_copies(c, probs, (size_t)N * E);
    cuda_forget_copies(c, lse, (size_t)N);
    CUDA_LAUNCH(route_forward_kernel, (N + 127) / 128, 128, 0, c->stream, topk_idx, topk_w, probs,
                lse, logits, sources, N, E, K);
    CUDA_LAUNCHED(c);
}

__global__ void route_backward_kernel(float *dlogits, const float *dtopk_w,
                                      const int32_t *topk_idx, const float *topk_w,
                                      const float *probs, const float *lse,
                                      const float *aux_grad, float z_scale, int N, int E, int K)
{
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N)
        return;
    pesc_route_token_backward(dlogits + (size_t)n * E, dtopk_w + (size_t)n * K,
                              topk_idx + (size_t)n * K, topk_w + (size_t)n * K,
                              probs + (size_t)n * E, lse[n], aux_grad, z_scale, E, K);
}

extern "C" void cuda_moe_route_backward(void *ctx, float *dlogits, const float *dtopk_w,
                                        const int32_t *topk_idx, const float *topk_w,
                                        const float *probs, const float *lse,
                                        const float *aux_grad, float z_scale, int N, int E, int K)
{
    CUDA_OP_WRITING(ctx, dlogits, (size_t)N * E);   // dh's copy stays for the down product
    CUDA_LAUNCH(route_backward_kernel, (N + 127) / 128, 128, 0, c->stream, dlogits, dtopk_w,
                topk_idx, topk_w, probs, lse, aux_grad, z_scale, N, E, K);
    CUDA_LAUNCHED(c);
}

// ---- adapter pieces -------------------------------------------------------------------------
//
// The adapters' rows are float, or bf16 in bf16 math (adapters16 below): the kernels read and
// write either, computing in fp32.

__device__ __forceinline__ float gelu(float x)
{
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

__device__ __forceinline__ float gelu_grad(float x)
{
    return 0.5f * (1.0f + erff(x * 0.70710678118654752f)) +
           x * expf(-0.5f * x * x) * 0.3989422804014327f;
}

// inverse[pair] = its place j in the grouped order (a pair in no group, padding's, keeps the
// -1 it was filled with)
__global__ void invert_kernel(int32_t *inverse, const int32_t *perm, int pairs)
{
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j < pairs)
        inverse[perm[j]] = j;
}

// The adapters' dropout: the mask dropout_mask would draw, element by element where it is
// applied, never stored (p 0: none).
struct dropout_draw {
    float p, keep;
    uint64_t seed;
};

static dropout_draw dropout_of(float p, uint64_t seed)
{
    return {p, p > 0 ? 1.0f / (1.0f - p) : 1.0f, seed};
}

__device__ __forceinline__ float dropped(const dropout_draw &d, size_t i, float v)
{
    return d.p > 0 ? v * pesc_dropout_value(d.seed, i, d.p, d.keep) : v;
}

// The adapters' rows of one layer (moe_rows.h), on the host: block (0: none), the block's
// groups (block_starts: e * block) and those after it (starts: the offsets themselves where
// the rows are perm's order, else rest), the rows the products run over; and on the device the
// maps between a pair's place r in perm and its row: row_of (pairs) and pair_at (rows; -1 for
// a row of zeros). Both NULL where the rows are perm's order.
struct adapter_rows {
    const int *starts;   // never copied: starts may point into it
    int block, rows;
    int rest[PESC_ADAPTER_ROWS_EXPERTS + 1], block_starts[PESC_ADAPTER_ROWS_EXPERTS + 1];
    int32_t *row_of, *pair_at;
};

// The bounds of a layout, passed by value to rows_map_kernel.
struct group_bounds {
    int offsets[PESC_ADAPTER_ROWS_EXPERTS + 1], starts[PESC_ADAPTER_ROWS_EXPERTS + 1];
    int block;
};

// Block e: expert e's rows, in the block and after it: its pairs' places, then -1s.
__global__ void rows_map_kernel(int32_t *row_of, int32_t *pair_at, group_bounds g)
{
    int e = blockIdx.x, first = g.offsets[e], n = g.offsets[e + 1] - first, B = g.block;
    int start = g.starts[e], span = g.starts[e + 1] - start;
    for (int i = threadIdx.x; i < B + span; i += blockDim.x) {
        int row = i < B ? e * B + i : start + i - B;
        pair_at[row] = i < n ? first + i : -1;
        if (i < n)
            row_of[first + i] = row;
    }
}

// Whether rows of `width` values at these places (NULL: none) take the kernels' 8-value
// accesses: width a multiple of 8, each place 16-byte aligned, so every row's are.
static bool units8(int width, const void *a, const void *b = NULL, const void *c = NULL)
{
    return width % 8 == 0 && aligned16(a) && aligned16(b) && aligned16(c);
}

// rows[j] = src[token of pair perm[r]] (times the mask's row r), r = pair_at[j] (j without
// the map; a row of zeros for -1), over the layout's rows; 8 values a thread where vector8
// (C a multiple of 8, rows and src 16-byte aligned: a row's 8 values are one unit)
template <class T>
__global__ void gather_kernel(T *rows, const float *src, dropout_draw drop, const int32_t *perm,
                              const int32_t *pair_at, int n_rows, int K, int C, bool vector8)
{
    size_t n = (size_t)n_rows * C, units = vector8 ? C / 8 : 1;
    GRID_STRIDE8(u, n, vector8)
    {
        size_t j = u / units, col = 8 * (u % units);
        int r = pair_at ? pair_at[j] : (int)j;
        float v[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        if (r >= 0) {
            load8(src + (size_t)(perm[r] / K) * C + col, v);
            for (int k = 0; k < 8; k++)
                v[k] = dropped(drop, (size_t)r * C + col + k, v[k]);
        }
        store8(rows + j * C + col, v);
    }
    GRID_STRIDE_REST(i, n, vector8)
    {
        size_t j = i / C, col = i % C;
        int r = pair_at ? pair_at[j] : (int)j;
        rows[i] = operand_cvt<T>(r < 0 ? 0.0f
                                       : dropped(drop, (size_t)r * C + col,
                                                 src[(size_t)(perm[r] / K) * C + col]));
    }
}

template <class T> __global__ void gelu_kernel(T *act, const T *pre, size_t n, bool vector8)
{
    GRID_STRIDE8(u, n, vector8)
    {
        float v[8];
        load8(pre + 8 * u, v);
        for (int k = 0; k < 8; k++)
            v[k] = gelu(v[k]);
        store8(act + 8 * u, v);
    }
    GRID_STRIDE_REST(i, n, vector8) act[i] = operand_cvt<T>(gelu(value_of(pre[i])));
}

// y[n] = base[n] (+ base2[n]) + sum over slots s of weight(n, s) * rows[row_of[j]] (j
// without the map), j = inverse[n K + s], times the mask's row j: weight = scale * topk_w in
// the forward (no mask; base x, base2 h: the FFN's residual), 1 in the backward (the weights
// are already in rows; base dy); a slot in no group (inverse -1) adds nothing. y may be base;
// with its bf16 copy in the backward (cuda_keep_copy). 8 values a thread where vector8 (C a
// multiple of 8, every tensor 16-byte aligned).
template <class T>
__global__ void combine_kernel(values_out y, const float *base, const float *base2,
                               const T *rows, dropout_draw drop, const int32_t *inverse,
                               const int32_t *row_of, const float *topk_w, float scale, int N,
                               int K, int C, bool vector8)
{
    size_t n_values = (size_t)N * C, units = vector8 ? C / 8 : 1;
    GRID_STRIDE8(u, n_values, vector8)
    {
        size_t n = u / units, col = 8 * (u % units);
        float s[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f}, v[8], b[8];
        for (int slot = 0; slot < K; slot++) {
            size_t pair = n * K + slot;
            if (inverse[pair] < 0)
                continue;
            size_t j = (size_t)inverse[pair], row = row_of ? (size_t)row_of[j] : j;
            load8(rows + row * C + col, v);
            float w = topk_w ? scale * topk_w[pair] : 1.0f;
            for (int k = 0; k < 8; k++)
                s[k] += w * dropped(drop, j * C + col + k, v[k]);
        }
        load8(base + n * C + col, b);
        if (base2) {
            load8(base2 + n * C + col, v);
            for (int k = 0; k < 8; k++)
                b[k] = b[k] + v[k];
        }
        for (int k = 0; k < 8; k++)
            b[k] = b[k] + s[k];
        y.put8(n * C + col, b);
    }
    GRID_STRIDE_REST(i, n_values, vector8)
    {
        size_t n = i / C, col = i % C;
        float s = 0.0f;
        for (int slot = 0; slot < K; slot++) {
            size_t pair = n * K + slot;
            if (inverse[pair] < 0)
                continue;
            size_t j = (size_t)inverse[pair], row = row_of ? (size_t)row_of[j] : j;
            float v = dropped(drop, j * C + col, value_of(rows[row * C + col]));
            s += topk_w ? scale * topk_w[pair] * v : v;
        }
        y.put(i, (base2 ? base[i] + base2[i] : base[i]) + s);
    }
}

// One block per row j of the layout, its pair's place in perm pair_at[j] (j without the map;
// a row of zeros, -1, has nothing to do): dtopk_w[pair] = scale * p_j . act_j; p_j becomes
// d pre_j = w p_j gelu'(pre_j), and dy_j becomes d out_j = w dy_j, w = scale * gate. 8 values
// a thread where vector8 (C and R multiples of 8, the rows 16-byte aligned).
template <class T>
__global__ void adapter_pair_kernel(float *dtopk_w, T *p, T *dyg, const T *act, const T *pre,
                                    const int32_t *perm, const int32_t *pair_at,
                                    const float *topk_w, float scale, int C, int R, bool vector8)
{
    __shared__ float shared[32];
    size_t j = blockIdx.x;
    int place = pair_at ? pair_at[j] : (int)j;
    if (place < 0)   // the whole block's row
        return;
    int pair = perm[place];
    float w = scale * topk_w[pair];
    T *pj = p + j * R, *dyj = dyg + j * C;
    const T *sj = act + j * R, *aj = pre + j * R;
    int r8 = vector8 ? R / 8 : 0, c8 = vector8 ? C / 8 : 0;   // the units; values past them
    float dw = 0.0f, a[8], b[8];
    for (int u = threadIdx.x; u < r8; u += blockDim.x) {
        load8(pj + 8 * u, a);
        load8(sj + 8 * u, b);
        for (int k = 0; k < 8; k++)
            dw += a[k] * b[k];
    }
    for (int r = 8 * r8 + threadIdx.x; r < R; r += blockDim.x)
        dw += value_of(pj[r]) * value_of(sj[r]);
    dw = block_sum(dw, shared);
    for (int u = threadIdx.x; u < r8; u += blockDim.x) {
        load8(pj + 8 * u, a);
        load8(aj + 8 * u, b);
        for (int k = 0; k < 8; k++)
            a[k] = w * a[k] * gelu_grad(b[k]);
        store8(pj + 8 * u, a);
    }
    for (int r = 8 * r8 + threadIdx.x; r < R; r += blockDim.x)
        pj[r] = operand_cvt<T>(w * value_of(pj[r]) * gelu_grad(value_of(aj[r])));
    for (int u = threadIdx.x; u < c8; u += blockDim.x) {
        load8(dyj + 8 * u, a);
        for (int k = 0; k < 8; k++)
            a[k] = a[k] * w;
        store8(dyj + 8 * u, a);
    }
    for (int col = 8 * c8 + threadIdx.x; col < C; col += blockDim.x)
        dyj[col] = operand_cvt<T>(value_of(dyj[col]) * w);
    if (threadIdx.x == 0)
        dtopk_w[pair] = scale * dw;
}

// out[i] += in[i] (or = in[i], first: its zeroing pending): a weight's gradient, made in
// bf16, into its fp32 accumulator
__global__ void accumulate_kernel(float *out, const __nv_bfloat16 *in, size_t n, bool first)
{
    GRID_STRIDE(i, n) out[i] = (first ? 0.0f : out[i]) + __bfloat162float(in[i]);
}

extern "C" void cuda_moe_group(void *ctx, int32_t *perm, double *stats, const int32_t *topk_idx,
                               const float *topk_w, const float *probs, const float *lse,
                               const int32_t *sources, int N, int E, int K, int S)
{
    CUDA_OP_WRITING(ctx, (const float *)perm, (size_t)N * K);   // as the routing's forward
    cuda_forget_copies(c, (const float *)stats, MOE_STATS(E, K, S) * 2);
    if (S > GROUP_MAX_SOURCES) {
        cuda_check_rc(c, cudaErrorInvalidValue, "moe_group: more sources than 16", __FILE__,
                      __LINE__);
        return;
    }
    if (N <= 0)
        return;
    CUDA_LAUNCH(group_stats_kernel, E + 1, GROUP_THREADS, group_stats_shared(S), c->stream, stats,
                topk_idx, topk_w, probs, lse, S ? sources : NULL, N, E, K, S);
    CUDA_LAUNCH(group_perm_kernel, E, GROUP_THREADS, group_perm_shared(), c->stream, perm, stats,
                topk_idx, N * K);
    CUDA_LAUNCHED(c);
}

// ---- the experts' products -----------------------------------------------------------------
//
// T is float (the products in the context's math, or TF32 where grouped) or __nv_bfloat16
// (bf16 math: bf16 operands and results, fp32 accumulation; cuBLAS groups bf16 products only
// with bf16 results).

// expert_operand, an operand of an expert's product, and expert_at, where expert e's starts:
// cuda_experts_mma.cuh, whose kernels take them too.

// Row-major C_e = alpha op(A_e) op(B_e) + beta C_e for each expert e with rows (as cuda_gemm);
// a dimension of -1 is the expert's row count.
template <class T> struct expert_gemm {
    int trans_a, trans_b, m, n, k;
    float alpha, beta;
    expert_operand<T> a, b, c;
};

// The pointer arrays of a grouped call, made on the device from the experts' places, passed by
// value (no host buffer the call could outlive).
template <class T> struct expert_places {
    int count;
    int expert[CUDA_GROUP_MAX], first[CUDA_GROUP_MAX];
    expert_operand<T> a, b, c;
};

// ptrs: cuBLAS's A, B, C arrays (column-major: cuBLAS's A is our B), count each.
template <class T> __global__ void expert_pointers_kernel(void **ptrs, expert_places<T> p)
{
    int j = threadIdx.x;
    if (j >= p.count)
        return;
    ptrs[j] = (void *)expert_at(p.b, p.first[j], p.expert[j]);
    ptrs[p.count + j] = (void *)expert_at(p.a, p.first[j], p.expert[j]);
    ptrs[2 * p.count + j] = (void *)expert_at(p.c, p.first[j], p.expert[j]);
}

template <class T> static bool narrow() { return sizeof(T) == sizeof(__nv_bfloat16); }

// Whether every expert's piece of an operand starts 16 bytes aligned: cuBLAS documents that
// grouped products of 16-bit operands, or in a FAST compute type (TF32), fault on some less
// aligned pointers (narrow adapters, R below 8 in bf16 or 4 in fp32, run one product an
// expert instead).
template <class T> static bool aligned16(const expert_operand<T> &o)
{
    size_t unit = 16 / sizeof(T);
    return aligned16(o.base) && o.row % unit == 0 && o.expert % unit == 0 &&
           o.ld % unit == 0;
}

#if CUBLAS_VERSION >= 120500
// The math of the experts' grouped products, -1 for none. bf16 operands group in bf16 until
// cuBLAS refuses them (grouped16). fp32 ones group in the context's math, except where that
// would cost more or cuBLAS refuses it: fast-bf16 math is tried once (cuBLAS documents fp32
// operands grouped in 32F and 32F_FAST_TF32 only), then TF32, which rounds less than bf16;
// fp32 math is never rounded: refused, it runs one product an expert.
static int grouped_math(const cuda_context *c, bool narrow)
{
    if (narrow)
        return c->grouped16 ? CUDA_MATH_BF16 : -1;
    int m = c->math == CUDA_MATH_BF16 ? CUDA_MATH_TF32 : c->math;
    if (m == CUDA_MATH_FAST_BF16 && (c->grouped_off >> m & 1u))
        m = CUDA_MATH_TF32;
    return c->grouped_off >> m & 1u ? -1 : m;
}

// A refusal: never again in this math (bf16 operands: never again grouped).
static void grouped_refused(cuda_context *c, bool narrow, int math)
{
    if (narrow)
        c->grouped16 = 0;
    else
        c->grouped_off |= 1u << math;
}
#endif

// One grouped cuBLAS call; -1, nothing done, when this cuBLAS has none or refuses the call in
// every math grouped_math allows (then the caller runs one product an expert, and later calls
// do at once); else the math it ran in (any after a failure, which is recorded).
template <class T>
static int experts_gemm_grouped(cuda_context *c, const expert_gemm<T> &g, const int *offsets,
                                int E)
{
#if CUBLAS_VERSION >= 120500
    bool is16 = narrow<T>();
    if (!c->grouped || E > CUDA_GROUP_MAX || grouped_math(c, is16) < 0 ||
        !(aligned16(g.a) && aligned16(g.b) && aligned16(g.c)))
        return -1;
    expert_places<T> places = {0, {0}, {0}, g.a, g.b, g.c};
    int m[CUDA_GROUP_MAX], n[CUDA_GROUP_MAX], k[CUDA_GROUP_MAX], one[CUDA_GROUP_MAX];
    int lda[CUDA_GROUP_MAX], ldb[CUDA_GROUP_MAX], ldc[CUDA_GROUP_MAX];
    float alpha[CUDA_GROUP_MAX], beta[CUDA_GROUP_MAX];
    cublasOperation_t op_a[CUDA_GROUP_MAX], op_b[CUDA_GROUP_MAX];
    for (int e = 0; e < E; e++) {
        int rows = offsets[e + 1] - offsets[e], j = places.count;
        if (rows == 0)
            continue;
        places.expert[j] = e;
        places.first[j] = offsets[e];
        // column-major: C^T = op(B)^T op(A)^T, so B goes first and M, N swap
        m[j] = g.n < 0 ? rows : g.n;
        n[j] = g.m < 0 ? rows : g.m;
        k[j] = g.k < 0 ? rows : g.k;
        op_a[j] = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
        op_b[j] = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
        lda[j] = g.b.ld, ldb[j] = g.a.ld, ldc[j] = g.c.ld;
        alpha[j] = g.alpha, beta[j] = g.beta, one[j] = 1;
        places.count++;
    }
    if (places.count == 0)
        return grouped_math(c, is16);
    CUDA_LAUNCH(expert_pointers_kernel<T>, 1, CUDA_GROUP_MAX, 0, c->stream, c->group_ptrs,
                places);
    if (!CUDA_LAUNCHED(c))
        return grouped_math(c, is16);   // failed: recorded, nothing more to do
    void **ptrs = c->group_ptrs;
    cudaDataType_t type = is16 ? CUDA_R_16BF : CUDA_R_32F;
    for (int math; (math = grouped_math(c, is16)) >= 0;) {
        cublasStatus_t rc = cublasGemmGroupedBatchedEx(
            c->cublas, op_a, op_b, m, n, k, alpha, (const void *const *)ptrs, type, lda,
            (const void *const *)(ptrs + places.count), type, ldb, beta,
            ptrs + 2 * places.count, type, ldc, places.count, one,
            is16 ? CUBLAS_COMPUTE_32F : cuda_fp32_compute(math));
        // refused (a type combination this cuBLAS does not group, or arguments it takes only
        // one product at a time): never again in this math; the next one grouped_math allows
        if (rc != CUBLAS_STATUS_NOT_SUPPORTED && rc != CUBLAS_STATUS_INVALID_VALUE) {
            CUBLAS_CHECK(c, rc);
            return math;
        }
        grouped_refused(c, is16, math);
    }
    return -1;
#else
    (void)c, (void)g, (void)offsets, (void)E;
    return -1;
#endif
}

// At start: the math the experts' products group in (-1: one product an expert), asked with
// one 1 x 1 x 1 product on scratch, of bf16 operands in bf16 math. A refusal turns grouping
// off for that math, and the device line says what is left.
int cuda_grouped_probe(cuda_context *c)
{
    int offsets[2] = {0, 1}, math;
    if (c->math == CUDA_MATH_BF16) {
        __nv_bfloat16 *x = (__nv_bfloat16 *)c->partials;   // rows of 8, 16-byte aligned
        math = experts_gemm_grouped<__nv_bfloat16>(
            c, {0, 1, -1, 1, 1, 1.0f, 0.0f, {x, 8, 0, 8}, {x + 64, 0, 0, 8}, {x + 128, 8, 0, 8}},
            offsets, 1);
    } else {
        float *x = (float *)c->partials;   // rows of 4, 16-byte aligned
        math = experts_gemm_grouped<float>(
            c, {0, 1, -1, 1, 1, 1.0f, 0.0f, {x, 4, 0, 4}, {x + 32, 0, 0, 4}, {x + 64, 4, 0, 4}},
            offsets, 1);
    }
    return c->failed ? -1 : math;
}

// count products at once, operand i of each `stride` elements after the one before (a
// strided batched call; one product: a plain one)
struct gemm_batch {
    int count;
    long long a, b, c;
};

// One product of bf16 operands, its result bf16 or (c_type CUDA_R_32F) fp32 (cuBLAS
// column-major, as cuda_gemm_math), or a batch of them.
static void gemm16(cuda_context *c, int trans_a, int trans_b, int M, int N, int K, float alpha,
                   const __nv_bfloat16 *A, int lda, const __nv_bfloat16 *B, int ldb, float beta,
                   void *C, cudaDataType_t c_type, int ldc, gemm_batch batch = {1, 0, 0, 0})
{
    cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (batch.count == 1)
        CUBLAS_CHECK(c, cublasGemmEx(c->cublas, op_b, op_a, N, M, K, &alpha, B, CUDA_R_16BF,
                                     ldb, A, CUDA_R_16BF, lda, &beta, C, c_type, ldc,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    else
        CUBLAS_CHECK(c, cublasGemmStridedBatchedEx(
                            c->cublas, op_b, op_a, N, M, K, &alpha, B, CUDA_R_16BF, ldb, batch.b,
                            A, CUDA_R_16BF, lda, batch.a, &beta, C, c_type, ldc, batch.c,
                            batch.count, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

static void expert_gemm_one(cuda_context *c, int ta, int tb, int M, int N, int K, float alpha,
                            const float *A, int lda, const float *B, int ldb, float beta,
                            const float *C, int ldc)
{
    cuda_gemm(c, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, (float *)C, ldc);
}

static void expert_gemm_one(cuda_context *c, int ta, int tb, int M, int N, int K, float alpha,
                            const __nv_bfloat16 *A, int lda, const __nv_bfloat16 *B, int ldb,
                            float beta, const __nv_bfloat16 *C, int ldc)
{
    gemm16(c, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, (void *)C, CUDA_R_16BF, ldc);
}

// PESC_CUDA_EXPERTS=mma: a row product (C_e (rows, n) = A_e (rows, k) op(B_e), alpha 1, beta 0)
// of bf16 operands on experts_mma_kernel, one launch for every expert (cuda_experts_mma.cuh).
// False, nothing done, where it does not apply: fp32 operands, a weight's gradient, N or K not
// a multiple of 8, operands not 16-byte aligned, more experts than a launch takes, too little
// shared memory; then cuBLAS runs it.
static bool experts_mma(cuda_context *, const expert_gemm<float> &, const int *, int)
{
    return false;
}

template <int BN, bool B_K>
static void experts_mma_launch(cuda_context *c, const expert_gemm<__nv_bfloat16> &g,
                               const experts_tiles &tiles)
{
    size_t bytes = experts_shared(BN, B_K);
    if (!cuda_shared_limit(c, (const void *)experts_mma_kernel<BN, B_K>, bytes))
        return;
    CUDA_LAUNCH((experts_mma_kernel<BN, B_K>), tiles.tile_end[tiles.count - 1],
                experts_threads(BN), bytes, c->stream, g.c, g.a, g.b, g.n, g.k, tiles);
    CUDA_LAUNCHED(c);
}

// The tiles of every expert with rows (every expert, `all`), BN columns wide: by its rows (M
// 0), or by M rows whatever its own (a weight's gradient).
static int experts_tile_table(experts_tiles *tiles, const int *offsets, int E, int N, int BN,
                              int M = 0, bool all = false)
{
    tiles->count = 0;
    tiles->n_tiles = (N + BN - 1) / BN;
    int total = 0;
    for (int e = 0; e < E; e++) {
        int rows = offsets[e + 1] - offsets[e], j = tiles->count;
        if (rows == 0 && !all)
            continue;
        total += ((M ? M : rows) + EM_BM - 1) / EM_BM * tiles->n_tiles;
        tiles->expert[j] = e, tiles->first[j] = offsets[e], tiles->rows[j] = rows;
        tiles->tile_end[j] = total;
        tiles->count++;
    }
    return total;
}

static bool experts_mma(cuda_context *c, const expert_gemm<__nv_bfloat16> &g, const int *offsets,
                        int E)
{
    if (!c->experts_mma || E > CUDA_GROUP_MAX || g.trans_a || g.m >= 0 || g.n <= 0 ||
        g.k <= 0 || g.n % 8 || g.k % 8 || g.alpha != 1.0f || g.beta != 0.0f ||
        !(aligned16(g.a) && aligned16(g.b) && aligned16(g.c)))
        return false;
    bool b_k = g.trans_b;   // B_e (n, k): the forward's; else (k, n), the backward's
    // 128 columns a block where that makes at least 4 blocks a multiprocessor, else 64: at
    // TinyLlama's shape the rows x R products (R 512: 4 tiles across) make about 290 blocks of
    // 128 x 128 for an H200's 132 multiprocessors, a second wave mostly idle
    experts_tiles tiles = {};
    int BN = experts_tile_table(&tiles, offsets, E, g.n, 128) >= 4 * c->multiprocessors ? 128
                                                                                          : 64;
    if (BN == 64)
        experts_tile_table(&tiles, offsets, E, g.n, 64);
    if (experts_shared(BN, b_k) > (size_t)c->max_shared)
        return false;
    if (tiles.count == 0)
        return true;
    if (BN == 128 && b_k)
        experts_mma_launch<128, true>(c, g, tiles);
    else if (BN == 128)
        experts_mma_launch<128, false>(c, g, tiles);
    else if (b_k)
        experts_mma_launch<64, true>(c, g, tiles);
    else
        experts_mma_launch<64, false>(c, g, tiles);
    return true;
}

// PESC_CUDA_EXPERTS=mma: a weight's gradient, G_e (M, N) = beta G_e + A_e^T B_e over the
// expert's rows of groups (offsets), bf16 operands into the fp32 accumulator, on
// experts_grad_kernel (one launch, every expert's tiles; with beta 0 those of an expert
// without rows too, which write its zeros). Tiles as experts_mma's.
template <int BN>
static void experts_grad_launch(cuda_context *c, float *grad, const __nv_bfloat16 *a,
                                const __nv_bfloat16 *b, int M, int N, float beta,
                                const experts_tiles &tiles)
{
    size_t bytes = experts_grad_shared(BN);
    if (!cuda_shared_limit(c, (const void *)experts_grad_kernel<BN>, bytes))
        return;
    CUDA_LAUNCH(experts_grad_kernel<BN>, tiles.tile_end[tiles.count - 1], experts_threads(BN),
                bytes, c->stream, grad, expert_operand<__nv_bfloat16>{a, (size_t)M, 0, M},
                expert_operand<__nv_bfloat16>{b, (size_t)N, 0, N}, M, N, beta, tiles);
    CUDA_LAUNCHED(c);
}

static void experts_grad(cuda_context *c, float *grad, const __nv_bfloat16 *a,
                         const __nv_bfloat16 *b, int M, int N, const int *offsets, int E,
                         float beta)
{
    experts_tiles tiles = {};
    bool all = beta == 0.0f;
    int BN = experts_tile_table(&tiles, offsets, E, N, 128, M, all) >= 4 * c->multiprocessors
                 ? 128
                 : 64;
    if (BN == 64)
        experts_tile_table(&tiles, offsets, E, N, 64, M, all);
    if (tiles.count == 0)
        return;
    if (BN == 128)
        experts_grad_launch<128>(c, grad, a, b, M, N, beta, tiles);
    else
        experts_grad_launch<64>(c, grad, a, b, M, N, beta, tiles);
}

// A weight's gradient over a layout's rows on experts_grad_kernel: its block, then its rows
// after the block (adding). False, nothing done, where the kernel does not apply (as
// experts_mma: not asked for, M or N not a multiple of 8, operands not 16-byte aligned, too
// many experts or too little shared memory); then cuBLAS runs it.
static bool experts_mma_gradient(cuda_context *c, float *grad, int M, int N,
                                 const __nv_bfloat16 *a, const __nv_bfloat16 *b,
                                 const adapter_rows &L, int E, float beta)
{
    if (!c->experts_mma || E > CUDA_GROUP_MAX || M % 8 || N % 8 || !aligned16(a) ||
        !aligned16(b) || experts_grad_shared(128) > (size_t)c->max_shared)
        return false;
    if (L.block > 0) {
        experts_grad(c, grad, a, b, M, N, L.block_starts, E, beta);
        beta = 1.0f;
    }
    if (L.block == 0 || L.starts[E] > L.starts[0])
        experts_grad(c, grad, a, b, M, N, L.starts, E, beta);
    return true;
}

// Experts' rows laid out alike (a layout's block: every expert S rows, S apart; 0: not so):
// their products of bf16 operands as one strided batched call, where products may group
// (PESC_CUDA_GROUPED=0 asks for one an expert). False, nothing done, otherwise.
static bool experts_batched(cuda_context *, const expert_gemm<float> &, int, int)
{
    return false;
}

static bool experts_batched(cuda_context *c, const expert_gemm<__nv_bfloat16> &g, int alike,
                            int E)
{
    long long S = alike;
    if (S == 0 || !c->grouped)
        return false;
    auto stride = [S](const expert_operand<__nv_bfloat16> &o) {
        return S * (long long)o.row + (long long)o.expert;
    };
    gemm16(c, g.trans_a, g.trans_b, g.m < 0 ? (int)S : g.m, g.n < 0 ? (int)S : g.n,
           g.k < 0 ? (int)S : g.k, g.alpha, g.a.base, g.a.ld, g.b.base, g.b.ld, g.beta,
           (void *)g.c.base, CUDA_R_16BF, g.c.ld, {E, stride(g.a), stride(g.b), stride(g.c)});
    return true;
}

// The experts' products over groups of rows (offsets, E + 1; alike: each of that many rows,
// or 0): on the mma kernels (asked for), else batched where they are alike, grouped, or one
// product an expert.
template <class T>
static void experts_region(cuda_context *c, const expert_gemm<T> &g, const int *offsets,
                           int alike, int E)
{
    if (experts_mma(c, g, offsets, E) || experts_batched(c, g, alike, E) ||
        experts_gemm_grouped(c, g, offsets, E) >= 0)
        return;
    for (int e = 0; e < E && !c->failed; e++) {
        int first = offsets[e], rows = offsets[e + 1] - first;
        if (rows == 0)
            continue;
        expert_gemm_one(c, g.trans_a, g.trans_b, g.m < 0 ? rows : g.m, g.n < 0 ? rows : g.n,
                        g.k < 0 ? rows : g.k, g.alpha, expert_at(g.a, first, e), g.a.ld,
                        expert_at(g.b, first, e), g.b.ld, g.beta, expert_at(g.c, first, e),
                        g.c.ld);
    }
}

// The experts' products over the layout's rows: over the block, then over the groups after it
// (a product that sums over the rows, a weight's gradient, adds the second part to the first).
template <class T>
static void experts_gemm(cuda_context *c, const expert_gemm<T> &g, const adapter_rows &L, int E)
{
    if (L.block > 0)
        experts_region(c, g, L.block_starts, L.block, E);
    if (L.block == 0 || L.starts[E] > L.starts[0]) {
        expert_gemm<T> rest = g;
        if (L.block > 0 && g.k < 0)
            rest.beta = 1.0f;
        experts_region(c, rest, L.starts, 0, E);
    }
}

// ---- the adapters ---------------------------------------------------------------------------
//
// In bf16 math the adapters run on bf16 (adapters16): the gather writes bf16 rows, the products
// over the experts' rows take bf16 operands and give bf16 results, the GELU and the pair kernel
// read and write bf16. So gathered, pre and act hold bf16 values (what the backward reads back;
// the model sizes them by backend_activation_bytes), and scratch and scratch_r, float-sized,
// hold bf16 too. The weights' bf16 values are the ones the last update wrote
// (cuda_train_values), else converted in the op; a weight's gradient is made from bf16 operands
// into its fp32 accumulator, one product an expert (PESC_CUDA_EXPERTS=mma: one launch of
// experts_grad_kernel; PESC_CUDA_GROUPED=all: grouped in bf16 and then added). In the other
// maths everything stays fp32, products grouped as experts_gemm can.

// the format the model sized the saved rows by (backend_activation_bytes)
static bool adapters16(const cuda_context *c)
{
    return cuda_activation_bytes((void *)c) == sizeof(__nv_bfloat16);
}

static size_t aligned(size_t bytes) { return (bytes + 255) & ~(size_t)255; }

// The bytes of the rows' maps (row_of, pair_at) for slots pairs of E experts: none where the
// rows keep perm's order.
static size_t maps_bytes(const cuda_context *c, size_t slots, int E)
{
    if (!pesc_adapter_layout_on(slots, E, c->expert_align, c->expert_room))
        return 0;
    size_t rows = pesc_adapter_rows(slots, E, c->expert_align, c->expert_room);
    return aligned(slots * sizeof(int32_t)) + aligned(rows * sizeof(int32_t));
}

size_t cuda_adapter_work(const cuda_context *c, size_t slots, int E, int C, int R)
{
    size_t inverse = aligned(slots * sizeof(int32_t)) + maps_bytes(c, slots, E);
    // the weights in bf16 and, in the backward, a weight gradient grouped in bf16
    size_t weights = (c->grouped_grads ? 3 : 2) * aligned((size_t)E * C * R * 2);
    return adapters16(c) ? inverse + weights : inverse;
}

// The layout of the rows (L, moe_rows.h) and its maps, made in `maps`.
static void adapter_layout(cuda_context *c, adapter_rows *L, char *maps, const int *offsets,
                           size_t slots, int E)
{
    L->starts = offsets, L->rows = offsets[E], L->block = 0;
    L->row_of = L->pair_at = NULL;
    if (!pesc_adapter_layout_on(slots, E, c->expert_align, c->expert_room))
        return;   // any E: no more than PESC_ADAPTER_ROWS_EXPERTS where laid out
    L->block = pesc_adapter_starts(L->rest, offsets, E, c->expert_align, c->expert_room, slots);
    L->starts = L->rest, L->rows = L->rest[E];
    for (int e = 0; e <= E; e++)
        L->block_starts[e] = e * L->block;
    L->row_of = (int32_t *)maps;
    L->pair_at = (int32_t *)(maps + aligned(slots * sizeof(int32_t)));
    group_bounds bounds;
    memcpy(bounds.offsets, offsets, (size_t)(E + 1) * sizeof(int));
    memcpy(bounds.starts, L->starts, (size_t)(E + 1) * sizeof(int));
    bounds.block = L->block;
    if (L->rows > 0)
        CUDA_LAUNCH(rows_map_kernel, E, 256, 0, c->stream, L->row_of, L->pair_at, bounds);
    CUDA_LAUNCHED(c);
}

// The op's work: the inverse permutation of the N K slots (inverse[pair] = its place in
// perm's order, -1 for padding's, in no group), the rows' layout (L), and in bf16 the weights
// (*down16, *up16: the trainables' values, or converted here) and room for a gradient
// (*grad16, when asked and the gradients are grouped; else NULL).
static int32_t *adapter_work(cuda_context *c, adapter_rows *L, const int32_t *perm,
                             const int *offsets, size_t slots, int E, int C, int R,
                             const float *down, const float *up, __nv_bfloat16 **down16,
                             __nv_bfloat16 **up16, __nv_bfloat16 **grad16)
{
    int pairs = offsets[E];
    size_t inverse_bytes = aligned(slots * sizeof(int32_t)) + maps_bytes(c, slots, E);
    size_t w = aligned((size_t)E * C * R * sizeof(__nv_bfloat16));
    char *work = (char *)cuda_op_work(c, cuda_adapter_work(c, slots, E, C, R));
    if (!work)
        return NULL;
    int32_t *inverse = (int32_t *)work;
    if ((size_t)pairs < slots)
        CUDA_CHECK(c, cudaMemsetAsync(inverse, 0xff, slots * sizeof(int32_t), c->stream));
    if (pairs > 0)
        CUDA_LAUNCH(invert_kernel, (pairs + 255) / 256, 256, 0, c->stream, inverse, perm, pairs);
    adapter_layout(c, L, work + aligned(slots * sizeof(int32_t)), offsets, slots, E);
    if (!CUDA_LAUNCHED(c))
        return NULL;
    if (!adapters16(c))
        return inverse;
    size_t n = (size_t)E * C * R;
    __nv_bfloat16 *room = (__nv_bfloat16 *)(work + inverse_bytes);
    if (grad16)
        *grad16 = c->grouped_grads ? (__nv_bfloat16 *)(work + inverse_bytes + 2 * w) : NULL;
    const float *weights[2] = {down, up};
    __nv_bfloat16 **values[2] = {down16, up16};
    for (int i = 0; i < 2; i++) {
        *values[i] = (__nv_bfloat16 *)cuda_train_values(c, weights[i], n);
        if (!*values[i]) {
            *values[i] = (__nv_bfloat16 *)((char *)room + i * w);
            if (!cuda_to_bf16(c, *values[i], weights[i], n))
                return NULL;
        }
    }
    return inverse;
}

// pre (rows, R) = gathered (rows, C) @ D_e^T per expert, GELU over every row at once,
// out (rows, C) = act (rows, R) @ U_e^T per expert, then y = x + h + the weighted outputs.
template <class T>
static void adapter_forward(cuda_context *c, float *y, const float *x, T *gathered, T *pre,
                            T *act, T *out, const float *h, dropout_draw drop, const T *down,
                            const T *up, const int32_t *perm, const int32_t *inverse,
                            const adapter_rows &L, const float *topk_w, int N, int K, int E,
                            int C, int R, float scale)
{
    size_t CR = (size_t)C * R;
    bool v8 = units8(C, gathered, h);
    CUDA_LAUNCH(gather_kernel<T>, cuda_blocks8((size_t)L.rows * C, v8), 256, 0, c->stream,
                gathered, h, drop, perm, L.pair_at, L.rows, K, C, v8);
    CUDA_LAUNCHED(c);
    cuda_part(c, "gather");
    experts_gemm<T>(c, {0, 1, -1, R, C, 1.0f, 0.0f, {gathered, (size_t)C, 0, C}, {down, 0, CR, C},
                        {pre, (size_t)R, 0, R}}, L, E);
    cuda_part(c, "down's products");
    v8 = aligned16(act) && aligned16(pre);   // one run of values: any count, its tail alone
    CUDA_LAUNCH(gelu_kernel<T>, cuda_blocks8((size_t)L.rows * R, v8), 256, 0, c->stream, act,
                pre, (size_t)L.rows * R, v8);
    CUDA_LAUNCHED(c);
    cuda_part(c, "GELU");
    experts_gemm<T>(c, {0, 1, -1, C, R, 1.0f, 0.0f, {act, (size_t)R, 0, R}, {up, 0, CR, R},
                        {out, (size_t)C, 0, C}}, L, E);
    cuda_part(c, "up's products");
    values_out to = write_values(c, y, (size_t)N * C, false);
    v8 = units8(C, out, x, h) && to.aligned();
    CUDA_LAUNCH(combine_kernel<T>, cuda_blocks8((size_t)N * C, v8), 256, 0, c->stream, to,
                x ? x : h, x ? h : NULL, out, dropout_of(0.0f, 0), inverse, L.row_of, topk_w,
                scale, N, K, C, v8);
    CUDA_LAUNCHED(c);
    cuda_part(c, "combine");
}

extern "C" void cuda_moe_adapter_forward(void *ctx, float *y, const float *x,
                                         float *gathered, float *pre, float *act, float *scratch,
                                         const float *h, float dropout, uint64_t seed,
                                         const float *down, const float *up, const int32_t *perm,
                                         const int *offsets, const float *topk_w, int N, int K,
                                         int E, int C, int R, float scale)
{
    CUDA_OP(ctx);
    cuda_parts_start(c);
    __nv_bfloat16 *down16 = NULL, *up16 = NULL;
    adapter_rows L;   // no rows at all: y = x + h
    int32_t *inverse = adapter_work(c, &L, perm, offsets, (size_t)N * K, E, C, R, down, up,
                                    &down16, &up16, NULL);
    if (!inverse)
        return;
    cuda_part(c, "setup: inverse, layout, weights");
    typedef __nv_bfloat16 b16;
    if (adapters16(c))
        adapter_forward<b16>(c, y, x, (b16 *)gathered, (b16 *)pre, (b16 *)act, (b16 *)scratch,
                             h, dropout_of(dropout, seed), down16, up16, perm, inverse, L,
                             topk_w, N, K, E, C, R, scale);
    else
        adapter_forward<float>(c, y, x, gathered, pre, act, scratch, h, dropout_of(dropout, seed),
                               down, up, perm, inverse, L, topk_w, N, K, E, C, R, scale);
}

// G_e = beta G_e + A_e^T @ B_e over expert e's rows of groups (offsets, E + 1), bf16 operands
// into the fp32 accumulator, one product an expert; an expert without rows there is zeroed
// where `zero` (its first write), else left.
static void gradient_each(cuda_context *c, float *grad, int g_rows, int g_cols,
                          const __nv_bfloat16 *a, const __nv_bfloat16 *b, const int *offsets,
                          int E, float beta, bool zero)
{
    size_t each = (size_t)g_rows * g_cols;
    for (int e = 0; e < E && !c->failed; e++) {
        int rows = offsets[e + 1] - offsets[e];
        float *g = grad + e * each;
        if (rows > 0)
            gemm16(c, 1, 0, g_rows, g_cols, rows, 1.0f, a + (size_t)offsets[e] * g_rows, g_rows,
                   b + (size_t)offsets[e] * g_cols, g_cols, beta, g, CUDA_R_32F, g_cols);
        else if (zero)
            CUDA_CHECK(c, cudaMemsetAsync(g, 0, each * sizeof(float), c->stream));
    }
}

// A weight's gradient, G_e (g_rows, g_cols) += A_e^T @ B_e over the expert's rows (a row of
// zeros adds nothing): onto the fp32 accumulator itself (bf16 operands: on the mma kernel
// where asked, else one product an expert, or one batched call over a layout's block, as
// experts_batched); or, given grad16, grouped (or batched) in bf16 into grad16, which then
// adds to it (an expert without rows, whose product does not run, adds zeros). Its first
// write since the gradients' zeroing (backend_gradients) writes instead of adding; a layout's
// rows after its block add to it.
template <class T>
static void weight_gradient(cuda_context *c, float *grad, T *grad16, int g_rows, int g_cols,
                            const T *a, const T *b, const adapter_rows &L, int E)
{
    size_t each = (size_t)g_rows * g_cols, n = E * each;
    const int *offsets = L.starts;
    bool is16 = narrow<T>() && grad16, first = cuda_grads_first_write(c, grad, n);
    if (narrow<T>() && !grad16) {
        typedef const __nv_bfloat16 *b16p;
        float beta = first ? 0.0f : 1.0f;
        if (experts_mma_gradient(c, grad, g_rows, g_cols, (b16p)a, (b16p)b, L, E, beta))
            return;
        long long S = L.block;
        if (S == 0) {
            gradient_each(c, grad, g_rows, g_cols, (b16p)a, (b16p)b, offsets, E, beta, first);
            return;
        }
        if (c->grouped)   // experts_batched's, into fp32
            gemm16(c, 1, 0, g_rows, g_cols, (int)S, 1.0f, (b16p)a, g_rows, (b16p)b, g_cols,
                   beta, grad, CUDA_R_32F, g_cols, {E, S * g_rows, S * g_cols, (long long)each});
        else
            gradient_each(c, grad, g_rows, g_cols, (b16p)a, (b16p)b, L.block_starts, E, beta,
                          false);
        gradient_each(c, grad, g_rows, g_cols, (b16p)a, (b16p)b, offsets, E, 1.0f, false);
        return;
    }
    // experts whose product does not run (with a block, every expert's does)
    for (int e = 0; L.block == 0 && (is16 || first) && e < E; e++)
        if (offsets[e + 1] == offsets[e])
            CUDA_CHECK(c, cudaMemsetAsync(is16 ? (void *)(grad16 + e * each)
                                               : (void *)(grad + e * each),
                                          0, each * (is16 ? sizeof(T) : sizeof(float)),
                                          c->stream));
    T *out = is16 ? grad16 : (T *)grad;
    experts_gemm<T>(c, {1, 0, g_rows, g_cols, -1, 1.0f, is16 || first ? 0.0f : 1.0f,
                        {a, (size_t)g_rows, 0, g_rows}, {b, (size_t)g_cols, 0, g_cols},
                        {out, 0, (size_t)g_rows * g_cols, g_cols}}, L, E);
    if (is16) {
        CUDA_LAUNCH(accumulate_kernel, cuda_blocks(n, 256), 256, 0, c->stream, grad,
                    (const __nv_bfloat16 *)out, n, first);
        CUDA_LAUNCHED(c);
    }
}

template <class T>
static void adapter_backward(cuda_context *c, float *dh, float *ddown, float *dup,
                             float *dtopk_w, T *dyg, T *p, T *grad16, const float *dy,
                             const T *gathered, const T *pre, const T *act, dropout_draw drop,
                             const T *down, const T *up, const int32_t *perm,
                             const int32_t *inverse, const adapter_rows &L, int pairs,
                             const float *topk_w, int N, int K, int E, int C, int R, float scale)
{
    size_t CR = (size_t)C * R;
    bool v8 = units8(C, dyg, dy);
    CUDA_LAUNCH(gather_kernel<T>, cuda_blocks8((size_t)L.rows * C, v8), 256, 0, c->stream, dyg,
                dy, dropout_of(0.0f, 0), perm, L.pair_at, L.rows, K, C, v8);
    CUDA_LAUNCHED(c);
    cuda_part(c, "gather");
    // p (rows, R) = dy_g (rows, C) @ U_e (C, R)
    experts_gemm<T>(c, {0, 0, -1, R, C, 1.0f, 0.0f, {dyg, (size_t)C, 0, C}, {up, 0, CR, R},
                        {p, (size_t)R, 0, R}}, L, E);
    cuda_part(c, "up's input gradient products");
    if (pairs < N * K)   // padding's slots, which no pair writes
        CUDA_CHECK(c, cudaMemsetAsync(dtopk_w, 0, (size_t)N * K * sizeof(float), c->stream));
    if (L.rows > 0)
        CUDA_LAUNCH(adapter_pair_kernel<T>, L.rows, 128, 0, c->stream, dtopk_w, p, dyg, act, pre,
                    perm, L.pair_at, topk_w, scale, C, R,
                    units8(C, dyg) && units8(R, p, act, pre));
    CUDA_LAUNCHED(c);
    cuda_part(c, "pair kernel: GELU', the gates'");
    // dout_g: dy_g; dpre_g: p
    if (dup)     // dU_e (C, R) += dout^T @ act
        weight_gradient<T>(c, dup, grad16, C, R, dyg, act, L, E);
    cuda_part(c, "up's weight gradients");
    if (ddown)   // dD_e (R, C) += dpre^T @ gathered
        weight_gradient<T>(c, ddown, grad16, R, C, p, gathered, L, E);
    cuda_part(c, "down's weight gradients");
    // d gathered (rows, C) = dpre @ D_e, over dout_g once its last reader above is queued
    experts_gemm<T>(c, {0, 0, -1, C, R, 1.0f, 0.0f, {p, (size_t)R, 0, R}, {down, 0, CR, C},
                        {dyg, (size_t)C, 0, C}}, L, E);
    cuda_part(c, "down's input gradient products");
    // dh is complete: its copy serves the down projection's product next (cuda_keep_copy)
    values_out to = write_values(c, dh, (size_t)N * C, true);
    v8 = units8(C, dyg, dy) && to.aligned();
    CUDA_LAUNCH(combine_kernel<T>, cuda_blocks8((size_t)N * C, v8), 256, 0, c->stream, to, dy,
                (const float *)NULL, dyg, drop, inverse, L.row_of, (const float *)NULL, 1.0f, N,
                K, C, v8);
    CUDA_LAUNCHED(c);
    cuda_part(c, "combine");
}

extern "C" void cuda_moe_adapter_backward(void *ctx, float *dh, float *ddown, float *dup,
                                          float *dtopk_w, float *scratch, float *scratch_r,
                                          const float *dy, const float *gathered,
                                          const float *pre, const float *act, float dropout,
                                          uint64_t seed, const float *down, const float *up,
                                          const int32_t *perm, const int *offsets,
                                          const float *topk_w, int N, int K, int E, int C, int R,
                                          float scale)
{
    CUDA_OP(ctx);
    cuda_parts_start(c);
    int pairs = offsets[E];
    __nv_bfloat16 *down16 = NULL, *up16 = NULL, *grad16 = NULL;
    adapter_rows L;
    int32_t *inverse = adapter_work(c, &L, perm, offsets, (size_t)N * K, E, C, R, down, up,
                                    &down16, &up16, &grad16);
    if (!inverse)
        return;
    cuda_part(c, "setup: inverse, layout, weights");
    typedef __nv_bfloat16 b16;
    if (adapters16(c))
        adapter_backward<b16>(c, dh, ddown, dup, dtopk_w, (b16 *)scratch, (b16 *)scratch_r,
                              grad16, dy, (const b16 *)gathered, (const b16 *)pre,
                              (const b16 *)act, dropout_of(dropout, seed), down16, up16, perm,
                              inverse, L, pairs, topk_w, N, K, E, C, R, scale);
    else
        adapter_backward<float>(c, dh, ddown, dup, dtopk_w, scratch, scratch_r, NULL, dy,
                                gathered, pre, act, dropout_of(dropout, seed), down, up, perm,
                                inverse, L, pairs, topk_w, N, K, E, C, R, scale);
}
