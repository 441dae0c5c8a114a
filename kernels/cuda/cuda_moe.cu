// cuda_moe — PESC routing and the expert adapters on the GPU.
//
// Routing (top-k, gate softmax, softmax over all experts, log-sum-exp) and its backward run
// one thread per token. The grouping of (token, slot) pairs by expert and the routing
// statistics are computed here too (moe_group, cuda_group.cuh); model_forward.c's route_layer
// downloads the statistics with the group sizes, MOE_STATS doubles: that download is a
// forward's one wait per layer (a recomputed layer's replay waits for nothing). `offsets`
// arrive in host memory and fix the product shapes here without another wait.
//
// The adapters of one layer: gather the routed rows (with the dropout mask) into expert order,
// one product per expert for D_e and for U_e (cuBLAS, bf16 operands with fp32 accumulation by
// default; each expert's group is a contiguous slice, so all of them are queued back to back
// on the stream), the exact GELU between them, and a combine that adds each token's k weighted
// adapter outputs in slot order. The combine reads through the inverse permutation, so no two
// threads add into one element and the result is deterministic.
#include "cuda/cuda_common.cuh"
#include "cuda/cuda_group.cuh"


// ---- routing --------------------------------------------------------------------------------

__global__ void route_forward_kernel(int32_t *topk_idx, float *topk_w, float *probs, float *lse,
                                     const float *logits, int N, int E, int K)
{
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N)
        return;
    const float *r = logits + (size_t)n * E;
    int32_t *idx = topk_idx + (size_t)n * K;
    // k is small: repeated arg-max over the experts not yet taken, the lower index winning a tie
    for (int j = 0; j < K; j++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            bool taken = false;
            for (int i = 0; i < j; i++)
                taken = taken || idx[i] == e;
            if (!taken && (best < 0 || r[e] > r[best]))
                best = e;
        }
        idx[j] = best;
    }
    double m = r[idx[0]], sum = 0.0, kept = 0.0;
    for (int e = 0; e < E; e++)
        sum += exp((double)r[e] - m);
    for (int e = 0; e < E; e++)
        probs[(size_t)n * E + e] = (float)(exp((double)r[e] - m) / sum);
    lse[n] = (float)(m + log(sum));
    for (int j = 0; j < K; j++)
        kept += exp((double)r[idx[j]] - m);
    for (int j = 0; j < K; j++)
        topk_w[(size_t)n * K + j] = (float)(exp((double)r[idx[j]] - m) / kept);
}

extern "C" void cuda_moe_route_forward(void *ctx, int32_t *topk_idx, float *topk_w, float *probs,
                                       float *lse, const float *logits, int N, int E, int K)
{
    CUDA_OP(ctx);
    CUDA_LAUNCH(route_forward_kernel, (N + 127) / 128, 128, 0, c->stream, topk_idx, topk_w, probs,
                lse, logits, N, E, K);
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
    float *dr = dlogits + (size_t)n * E;
    const float *p = probs + (size_t)n * E;
    const float *w = topk_w + (size_t)n * K, *dw = dtopk_w + (size_t)n * K;
    double pg = 0.0, wdw = 0.0;
    if (aux_grad)
        for (int e = 0; e < E; e++)
            pg += (double)p[e] * aux_grad[e];
    for (int e = 0; e < E; e++) {
        double g = aux_grad ? (double)p[e] * (aux_grad[e] - pg) / N : 0.0;
        dr[e] = (float)(g + 2.0 * z_scale * lse[n] * p[e]);
    }
    for (int j = 0; j < K; j++)
        wdw += (double)w[j] * dw[j];
    for (int j = 0; j < K; j++)
        dr[topk_idx[(size_t)n * K + j]] += (float)(w[j] * (dw[j] - wdw));
}

extern "C" void cuda_moe_route_backward(void *ctx, float *dlogits, const float *dtopk_w,
                                        const int32_t *topk_idx, const float *topk_w,
                                        const float *probs, const float *lse,
                                        const float *aux_grad, float z_scale, int N, int E, int K)
{
    CUDA_OP(ctx);
    CUDA_LAUNCH(route_backward_kernel, (N + 127) / 128, 128, 0, c->stream, dlogits, dtopk_w,
                topk_idx, topk_w, probs, lse, aux_grad, z_scale, N, E, K);
    CUDA_LAUNCHED(c);
}

// ---- adapter pieces -------------------------------------------------------------------------

__device__ __forceinline__ float gelu(float x)
{
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

__device__ __forceinline__ float gelu_grad(float x)
{
    return 0.5f * (1.0f + erff(x * 0.70710678118654752f)) +
           x * expf(-0.5f * x * x) * 0.3989422804014327f;
}

// inverse[pair] = its place j in the grouped order
__global__ void invert_kernel(int32_t *inverse, const int32_t *perm, int pairs)
{
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j < pairs)
        inverse[perm[j]] = j;
}

// rows[j] = src[token of pair perm[j]] (* mask[j] when mask is not NULL)
__global__ void gather_kernel(float *rows, const float *src, const float *mask,
                              const int32_t *perm, int pairs, int K, int C)
{
    GRID_STRIDE(i, (size_t)pairs * C)
    {
        size_t j = i / C, col = i % C;
        float v = src[(size_t)(perm[j] / K) * C + col];
        rows[i] = mask ? v * mask[i] : v;
    }
}

__global__ void gelu_kernel(float *act, const float *pre, size_t n)
{
    GRID_STRIDE(i, n) act[i] = gelu(pre[i]);
}

// y[n] += sum over slots s of weight(n, s) * rows[inverse[n K + s]] (* mask of that row):
// weight = scale * topk_w in the forward, 1 in the backward (the weights are already in rows).
__global__ void combine_kernel(float *y, const float *rows, const float *mask,
                               const int32_t *inverse, const float *topk_w, float scale, int N,
                               int K, int C)
{
    GRID_STRIDE(i, (size_t)N * C)
    {
        size_t n = i / C, col = i % C;
        float s = 0.0f;
        for (int slot = 0; slot < K; slot++) {
            size_t pair = n * K + slot, j = (size_t)inverse[pair];
            float v = rows[j * C + col];
            if (mask)
                v *= mask[j * C + col];
            s += topk_w ? scale * topk_w[pair] * v : v;
        }
        y[i] += s;
    }
}

// One block per routed pair j (grouped order): dtopk_w[pair] = scale * p_j . act_j;
// p_j becomes d pre_j = w p_j gelu'(pre_j), and dy_j becomes d out_j = w dy_j, w = scale * gate.
__global__ void adapter_pair_kernel(float *dtopk_w, float *p, float *dyg, const float *act,
                                    const float *pre, const int32_t *perm, const float *topk_w,
                                    float scale, int C, int R)
{
    __shared__ float shared[32];
    size_t j = blockIdx.x;
    int pair = perm[j];
    float w = scale * topk_w[pair];
    float *pj = p + j * R, *dyj = dyg + j * C;
    const float *sj = act + j * R, *aj = pre + j * R;
    float dw = 0.0f;
    for (int r = threadIdx.x; r < R; r += blockDim.x)
        dw += pj[r] * sj[r];
    dw = block_sum(dw, shared);
    for (int r = threadIdx.x; r < R; r += blockDim.x)
        pj[r] = w * pj[r] * gelu_grad(aj[r]);
    for (int col = threadIdx.x; col < C; col += blockDim.x)
        dyj[col] *= w;
    if (threadIdx.x == 0)
        dtopk_w[pair] = scale * dw;
}

extern "C" void cuda_moe_group(void *ctx, int32_t *perm, double *stats, const int32_t *topk_idx,
                               const float *topk_w, const float *probs, const float *lse,
                               const int32_t *sources, int N, int E, int K, int S)
{
    CUDA_OP(ctx);
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

// ---- the adapters ---------------------------------------------------------------------------

static int32_t *inverse_of(cuda_context *c, const int32_t *perm, int pairs)
{
    int32_t *inverse = (int32_t *)cuda_op_work(c, (size_t)pairs * sizeof(int32_t));
    if (!inverse)
        return NULL;
    CUDA_LAUNCH(invert_kernel, (pairs + 255) / 256, 256, 0, c->stream, inverse, perm, pairs);
    return CUDA_LAUNCHED(c) ? inverse : NULL;
}

extern "C" void cuda_moe_adapter_forward(void *ctx, float *y, float *gathered, float *pre,
                                         float *act, float *scratch, const float *h,
                                         const float *mask, const float *down, const float *up,
                                         const int32_t *perm, const int *offsets,
                                         const float *topk_w, int N, int K, int E, int C, int R,
                                         float scale)
{
    CUDA_OP(ctx);
    int pairs = offsets[E];   // N * K
    if (pairs <= 0)
        return;
    int32_t *inverse = inverse_of(c, perm, pairs);
    if (!inverse)
        return;
    CUDA_LAUNCH(gather_kernel, cuda_blocks((size_t)pairs * C, 256), 256, 0, c->stream, gathered, h,
                mask, perm, pairs, K, C);
    CUDA_LAUNCHED(c);
    // pre (n, R) = gathered (n, C) @ D_e^T per expert, GELU over every row at once,
    // out (n, C) = act (n, R) @ U_e^T per expert
    for (int e = 0; e < E; e++) {
        int first = offsets[e], n = offsets[e + 1] - first;
        if (n > 0)
            cuda_gemm(c, 0, 1, n, R, C, 1.0f, gathered + (size_t)first * C, C,
                      down + (size_t)e * R * C, C, 0.0f, pre + (size_t)first * R, R);
    }
    CUDA_LAUNCH(gelu_kernel, cuda_blocks((size_t)pairs * R, 256), 256, 0, c->stream, act, pre,
                (size_t)pairs * R);
    CUDA_LAUNCHED(c);
    for (int e = 0; e < E; e++) {
        int first = offsets[e], n = offsets[e + 1] - first;
        if (n > 0)
            cuda_gemm(c, 0, 1, n, C, R, 1.0f, act + (size_t)first * R, R,
                      up + (size_t)e * C * R, R, 0.0f, scratch + (size_t)first * C, C);
    }
    CUDA_LAUNCH(combine_kernel, cuda_blocks((size_t)N * C, 256), 256, 0, c->stream, y, scratch,
                NULL, inverse, topk_w, scale, N, K, C);
    CUDA_LAUNCHED(c);
}

extern "C" void cuda_moe_adapter_backward(void *ctx, float *dh, float *ddown, float *dup,
                                          float *dtopk_w, float *scratch, float *scratch_r,
                                          const float *dy, const float *gathered,
                                          const float *pre, const float *act, const float *mask,
                                          const float *down, const float *up,
                                          const int32_t *perm, const int *offsets,
                                          const float *topk_w, int N, int K, int E, int C, int R,
                                          float scale)
{
    CUDA_OP(ctx);
    int pairs = offsets[E];
    if (pairs <= 0)
        return;
    int32_t *inverse = inverse_of(c, perm, pairs);
    if (!inverse)
        return;
    float *dyg = scratch, *p = scratch_r;
    CUDA_LAUNCH(gather_kernel, cuda_blocks((size_t)pairs * C, 256), 256, 0, c->stream, dyg, dy,
                NULL, perm, pairs, K, C);
    CUDA_LAUNCHED(c);
    // p (n, R) = dy_g (n, C) @ U_e (C, R)
    for (int e = 0; e < E; e++) {
        int first = offsets[e], n = offsets[e + 1] - first;
        if (n > 0)
            cuda_gemm(c, 0, 0, n, R, C, 1.0f, dyg + (size_t)first * C, C,
                      up + (size_t)e * C * R, R, 0.0f, p + (size_t)first * R, R);
    }
    CUDA_LAUNCH(adapter_pair_kernel, pairs, 256, 0, c->stream, dtopk_w, p, dyg, act, pre, perm,
                topk_w, scale, C, R);
    CUDA_LAUNCHED(c);
    for (int e = 0; e < E; e++) {
        int first = offsets[e], n = offsets[e + 1] - first;
        if (n == 0)
            continue;
        float *dout_e = dyg + (size_t)first * C, *dpre_e = p + (size_t)first * R;
        if (dup)     // dU_e (C, R) += dout^T @ act
            cuda_gemm(c, 1, 0, C, R, n, 1.0f, dout_e, C, act + (size_t)first * R, R, 1.0f,
                      dup + (size_t)e * C * R, R);
        if (ddown)   // dD_e (R, C) += dpre^T @ gathered
            cuda_gemm(c, 1, 0, R, C, n, 1.0f, dpre_e, R, gathered + (size_t)first * C, C, 1.0f,
                      ddown + (size_t)e * R * C, C);
        // d gathered (n, C) = dpre @ D_e, over dout_e once its last reader above is queued
        cuda_gemm(c, 0, 0, n, C, R, 1.0f, dpre_e, R, down + (size_t)e * R * C, C, 0.0f, dout_e,
                  C);
    }
    CUDA_LAUNCH(combine_kernel, cuda_blocks((size_t)N * C, 256), 256, 0, c->stream, dh, dyg, mask,
                inverse, NULL, 1.0f, N, K, C);
    CUDA_LAUNCHED(c);
}
