// cuda_ops — the row-wise and elementwise ops on the GPU: embedding, RMSNorm, RoPE, SwiGLU,
// residual, the fused cross-entropy, vectors and AdamW, forward and backward. Same semantics
// as kernels/cpu (the specification); fp32 throughout. Where several threads would add into
// one element, the sums go through a fixed order instead of atomics, so two identical runs
// give identical numbers.
#include <type_traits>

#include "cuda/cuda_common.cuh"
#include "cuda/cuda_convert.cuh"
#include "dropout_hash.h"


// ---- embedding ------------------------------------------------------------------------------

__global__ void embedding_forward_kernel(float *out, const int32_t *tokens, const float *table,
                                         int N, int C)
{
    GRID_STRIDE(i, (size_t)N * C)
    {
        size_t n = i / C, col = i % C;
        out[i] = table[(size_t)tokens[n] * C + col];
    }
}

extern "C" void cuda_embedding_forward(void *ctx, float *out, const int32_t *tokens,
                                       const float *table, int N, int C)
{
    CUDA_OP(ctx);
    CUDA_LAUNCH(embedding_forward_kernel, cuda_blocks((size_t)N * C, 256), 256, 0, c->stream, out,
                tokens, table, N, C);
    CUDA_LAUNCHED(c);
}

// Each thread owns one column of the vocabulary rows v with v % EMBED_SHARES == blockIdx.y and
// walks the tokens in order, adding the ones in its rows: a token repeated in the batch adds in
// the same order as on the CPU, every run, with no atomics (only the full-training mode trains
// the table). The shares make C x EMBED_SHARES threads instead of C; every thread reads every
// token id, a broadcast across the warp.
#define EMBED_SHARES 32

__global__ void embedding_backward_kernel(float *dtable, const float *dout, const int32_t *tokens,
                                          int N, int C)
{
    int col = blockIdx.x * blockDim.x + threadIdx.x, share = blockIdx.y;
    if (col >= C)
        return;
    for (int n = 0; n < N; n++) {
        int v = tokens[n];
        if (v % EMBED_SHARES == share)
            dtable[(size_t)v * C + col] += dout[(size_t)n * C + col];
    }
}

extern "C" void cuda_embedding_backward(void *ctx, float *dtable, const float *dout,
                                        const int32_t *tokens, int N, int C)
{
    CUDA_OP(ctx);
    cuda_settle_grads(c, dtable, sizeof *dtable);   // it adds to the table's gradient
    CUDA_LAUNCH(embedding_backward_kernel, dim3((C + 127) / 128, EMBED_SHARES), 128, 0, c->stream,
                dtable, dout, tokens, N, C);
    CUDA_LAUNCHED(c);
}

// ---- RMSNorm: one block of RMSNORM_THREADS a row ----------------------------------------------

// Thread t sums the row's values t, t + 256, ... in that order, then the block adds the
// threads' sums (block_sum): the order every RMSNorm here has had, kept so results stay the
// same bit for bit. The same fp32 expressions, one a value, whichever way the values load.
#define RMSNORM_THREADS 256

__device__ __forceinline__ float rmsnorm_value(float x, float w, float offset, float r)
{
    return (offset + w) * (x * r);
}

// dx's addition for dy at x, k = r^3 / C * sum(w dy x)
__device__ __forceinline__ float rmsnorm_grad(float dx, float x, float dy, float w,
                                              float offset, float r, float k)
{
    return dx + (r * (offset + w) * dy - k * x);
}

// Rows whose C is not a multiple of 8, or not aligned: a value an access.
// out: fp32 with its bf16 copy for the products next (cuda_keep_copy), or bf16 alone
__global__ void rmsnorm_forward_kernel(values_out out, float *rstd, const float *inp,
                                       const float *weight, float offset, int C, float eps)
{
    __shared__ float shared[32];
    size_t row = (size_t)blockIdx.x * C;
    const float *x = inp + row;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x)
        ss += x[i] * x[i];
    ss = block_sum(ss, shared);
    float r = rsqrtf(ss / C + eps);
    for (int i = threadIdx.x; i < C; i += blockDim.x)
        out.put(row + i, rmsnorm_value(x[i], weight[i], offset, r));
    if (rstd && threadIdx.x == 0)
        rstd[blockIdx.x] = r;
}

// dx += r w dy - r^3 / C * x * sum(w dy x), w = offset + weight; dx with its bf16 copy
__global__ void rmsnorm_backward_kernel(values_out dx, const float *dout, const float *inp,
                                        const float *weight, float offset, const float *rstd,
                                        int C)
{
    __shared__ float shared[32];
    size_t row = (size_t)blockIdx.x * C;
    const float *x = inp + row, *dy = dout + row;
    float dot = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x)
        dot += (offset + weight[i]) * dy[i] * x[i];
    dot = block_sum(dot, shared);
    float r = rstd[blockIdx.x], k = r * r * r * dot / C;
    for (int i = threadIdx.x; i < C; i += blockDim.x)
        dx.put(row + i, rmsnorm_grad(dx.get(row + i), x[i], dy[i], weight[i], offset, r, k));
}

// Rows of C a multiple of 8, up to 8 * RMSNORM_THREADS * UNITS, with every tensor aligned:
// each thread loads its UNITS units of 8 (units t, t + 256, ...) in 16-byte accesses and keeps
// them in registers for the write; the sum reads the values back from shared memory (C floats
// a tensor summed) in the order above. TinyLlama's forward moves 8 KB in and 12 KB out a row
// (34 MB in, 50 MB out at 4,096 tokens: ~20 us at 4.3 TB/s), its backward 24 KB in and 12 KB
// out (151 MB: ~35 us).
#define RMSNORM_MAX_UNITS 4

// The thread's units of a row p: kept in v, and staged in shared memory (the row's, for the sum)
template <int UNITS>
__device__ __forceinline__ void rmsnorm_load(float (*v)[8], float *stage, const float *p, int C)
{
#pragma unroll
    for (int j = 0; j < UNITS; j++) {
        int u = threadIdx.x + j * RMSNORM_THREADS;
        if (8 * u < C) {
            load8(p + 8 * u, v[j]);
            store8(stage + 8 * u, v[j]);
        }
    }
}

template <int UNITS>
__global__ void __launch_bounds__(RMSNORM_THREADS)
    rmsnorm_forward8_kernel(values_out out, float *rstd, const float *inp, const float *weight,
                            float offset, int C, float eps)
{
    __shared__ float shared[32];
    PESC_DYNAMIC_SHARED(stage_bytes);
    float *xs = (float *)stage_bytes;   // (C)
    size_t row = (size_t)blockIdx.x * C;
    float x[UNITS][8];
    rmsnorm_load<UNITS>(x, xs, inp + row, C);
    __syncthreads();
    float ss = 0.0f;
    for (int i = threadIdx.x; i < C; i += RMSNORM_THREADS)
        ss += xs[i] * xs[i];
    ss = block_sum(ss, shared);
    float r = rsqrtf(ss / C + eps);
#pragma unroll
    for (int j = 0; j < UNITS; j++) {
        int u = threadIdx.x + j * RMSNORM_THREADS;
        if (8 * u < C) {
            float w[8], o[8];
            load8(weight + 8 * u, w);
            for (int k = 0; k < 8; k++)
                o[k] = rmsnorm_value(x[j][k], w[k], offset, r);
            out.put8(row + 8 * u, o);
        }
    }
    if (rstd && threadIdx.x == 0)
        rstd[blockIdx.x] = r;
}

// dx's own values load with the others, before the sum, so that they are in flight together
template <int UNITS>
__global__ void __launch_bounds__(RMSNORM_THREADS)
    rmsnorm_backward8_kernel(values_out dx, const float *dout, const float *inp,
                             const float *weight, float offset, const float *rstd, int C)
{
    __shared__ float shared[32];
    PESC_DYNAMIC_SHARED(stage_bytes);
    float *xs = (float *)stage_bytes, *dys = xs + C;   // (C) each
    size_t row = (size_t)blockIdx.x * C;
    float x[UNITS][8], dy[UNITS][8], before[UNITS][8];
    rmsnorm_load<UNITS>(x, xs, inp + row, C);
    rmsnorm_load<UNITS>(dy, dys, dout + row, C);
#pragma unroll
    for (int j = 0; j < UNITS; j++) {
        int u = threadIdx.x + j * RMSNORM_THREADS;
        if (8 * u < C)
            dx.get8(row + 8 * u, before[j]);
    }
    __syncthreads();
    float dot = 0.0f;
    for (int i = threadIdx.x; i < C; i += RMSNORM_THREADS)
        dot += (offset + weight[i]) * dys[i] * xs[i];
    dot = block_sum(dot, shared);
    float r = rstd[blockIdx.x], k = r * r * r * dot / C;
#pragma unroll
    for (int j = 0; j < UNITS; j++) {
        int u = threadIdx.x + j * RMSNORM_THREADS;
        if (8 * u < C) {
            float w[8], o[8];
            load8(weight + 8 * u, w);
            for (int e = 0; e < 8; e++)
                o[e] = rmsnorm_grad(before[j][e], x[j][e], dy[j][e], w[e], offset, r, k);
            dx.put8(row + 8 * u, o);
        }
    }
}

// The units a thread of the 16-byte kernels takes for rows of C (a power of two, at most
// RMSNORM_MAX_UNITS), or 0: the scalar kernels.
static int rmsnorm_units(int C, bool aligned)
{
    if (C % 8 || !aligned)
        return 0;
    int units = 1;
    while (8 * RMSNORM_THREADS * units < C)
        units *= 2;
    return units <= RMSNORM_MAX_UNITS ? units : 0;
}

// f(std::integral_constant<int, U>()) for units U of 1, 2 or 4 (the 16-byte kernels'
// instances); false for 0, where the scalar kernels run.
template <class F> static bool rmsnorm_by_units(int units, F f)
{
    switch (units) {
    case 1:
        f(std::integral_constant<int, 1>());
        return true;
    case 2:
        f(std::integral_constant<int, 2>());
        return true;
    case 4:
        f(std::integral_constant<int, 4>());
        return true;
    default:
        return false;
    }
}

extern "C" void cuda_rmsnorm_forward(void *ctx, float *out, float *rstd, const float *inp,
                                     const float *weight, float offset, int N, int C, float eps)
{
    CUDA_OP(ctx);
    values_out to = write_values(c, out, (size_t)N * C, true);
    size_t stage = (size_t)C * sizeof(float);
    int units = rmsnorm_units(C, to.aligned() && aligned16(inp) && aligned16(weight));
    if (!rmsnorm_by_units(units, [&](auto u) {
            constexpr int U = decltype(u)::value;
            CUDA_LAUNCH(rmsnorm_forward8_kernel<U>, N, RMSNORM_THREADS, stage, c->stream, to,
                        rstd, inp, weight, offset, C, eps);
        }))
        CUDA_LAUNCH(rmsnorm_forward_kernel, N, RMSNORM_THREADS, 0, c->stream, to, rstd, inp,
                    weight, offset, C, eps);
    CUDA_LAUNCHED(c);
}

extern "C" void cuda_rmsnorm_backward(void *ctx, float *dinp, float *dweight, const float *dout,
                                      const float *inp, const float *weight, float offset,
                                      const float *rstd, int N, int C)
{
    CUDA_OP(ctx);
    // the input's gradient feeds the products of the layer below (o's, q's, k's, v's)
    values_out to = write_values(c, dinp, (size_t)N * C, true);
    size_t stage = 2 * (size_t)C * sizeof(float);
    int units = rmsnorm_units(C, to.aligned() && aligned16(dout) && aligned16(inp) &&
                                     aligned16(weight));
    // rows past 6,144 values stage more than the default 48 KB
    const void *kernel = NULL;
    rmsnorm_by_units(units, [&](auto u) {
        kernel = (const void *)rmsnorm_backward8_kernel<decltype(u)::value>;
    });
    if (units && ((int)stage > c->max_shared || !cuda_shared_limit(c, kernel, stage)))
        units = 0;
    if (!rmsnorm_by_units(units, [&](auto u) {
            constexpr int U = decltype(u)::value;
            CUDA_LAUNCH(rmsnorm_backward8_kernel<U>, N, RMSNORM_THREADS, stage, c->stream, to,
                        dout, inp, weight, offset, rstd, C);
        }))
        CUDA_LAUNCH(rmsnorm_backward_kernel, N, RMSNORM_THREADS, 0, c->stream, to, dout, inp,
                    weight, offset, rstd, C);
    CUDA_LAUNCHED(c);
    if (dweight) {   // dw[c] += sum_n dy[n,c] x[n,c] r[n]
        cuda_settle_grads(c, dweight, (size_t)C * sizeof *dweight);
        cuda_column_sum(c, dweight, dout, inp, rstd, N, C);
    }
}

// ---- RoPE (rotate-half) ------------------------------------------------------------------------

// direction +1 rotates (forward), -1 rotates back (backward), the first R of each head's D
// values, cos and sin times scale; the values past R pass through (written, so that out's bf16
// copy holds them too). The angle is formed in double, as on the CPU: positions times
// frequencies reach thousands of radians. out may be inp (its bf16 copy beside it or not).
__device__ __forceinline__ void rope_angle(int32_t pos, float inv_freq, float scale,
                                           float direction, float *cs, float *sn)
{
    double angle = (double)pos * inv_freq;
    *cs = scale * (float)cos(angle), *sn = scale * direction * (float)sin(angle);
}

// the pair (x1, x2) = values (i, i + R / 2) of a head, rotated
__device__ __forceinline__ void rope_rotate(float x1, float x2, float cs, float sn, float *y1,
                                            float *y2)
{
    *y1 = x1 * cs - x2 * sn;
    *y2 = x2 * cs + x1 * sn;
}

// One thread per (token, frequency), all heads: any shape.
__global__ void rope_kernel(values_out out, values_in inp, const int32_t *pos,
                            const float *inv_freq, int N, int H, int D, int R, float scale,
                            float direction)
{
    int half = R / 2, rest = D - R;
    GRID_STRIDE(idx, (size_t)N * (half + rest))
    {
        size_t n = idx / (half + rest);
        int i = (int)(idx % (half + rest));
        if (i >= half) {   // a value past the rotated ones
            for (int h = 0; h < H; h++) {
                size_t at = ((size_t)n * H + h) * D + R + (i - half);
                out.put(at, inp[at]);
            }
            continue;
        }
        float cs, sn;
        rope_angle(pos[n], inv_freq[i], scale, direction, &cs, &sn);
        for (int h = 0; h < H; h++) {
            size_t base = ((size_t)n * H + h) * D;
            float y1, y2;
            rope_rotate(inp[base + i], inp[base + i + half], cs, sn, &y1, &y2);
            out.put(base + i, y1);
            out.put(base + i + half, y2);
        }
    }
}

// R / 2 and D - R multiples of 8, every tensor aligned: a block takes `tokens` tokens. Their
// angles' cos and sin go to shared memory (2 x tokens x R / 2 floats), each once, as above;
// then a thread a unit of 8 values of one head (a rotated pair of units, or one passed
// through), in 16-byte accesses, so that the block's loads are in flight together. TinyLlama's
// q in bf16: 17 MB in, 17 MB out (~8 us at 4.3 TB/s), its k an eighth of that.
#define ROPE_THREADS 256

__global__ void __launch_bounds__(ROPE_THREADS)
    rope8_kernel(values_out out, values_in inp, const int32_t *pos, const float *inv_freq, int N,
                 int H, int D, int R, float scale, float direction, int tokens)
{
    PESC_DYNAMIC_SHARED(angle_bytes);
    int half = R / 2, pairs = half / 8, units = pairs + (D - R) / 8;   // a head's
    float *cs = (float *)angle_bytes, *sn = cs + tokens * half;        // (tokens, half)
    int n0 = blockIdx.x * tokens;
    for (int j = threadIdx.x; j < tokens * half; j += blockDim.x) {
        int n = n0 + j / half;
        if (n < N)
            rope_angle(pos[n], inv_freq[j % half], scale, direction, &cs[j], &sn[j]);
    }
    __syncthreads();
    for (int j = threadIdx.x; j < tokens * H * units; j += blockDim.x) {
        int t = j / (H * units), unit = j % units, n = n0 + t;
        if (n >= N)
            break;
        size_t base = ((size_t)n * H + j / units % H) * D;
        float x1[8], x2[8];
        if (unit >= pairs) {   // values past the rotated ones
            size_t at = base + R + 8 * (unit - pairs);
            inp.get8(at, x1);
            out.put8(at, x1);
            continue;
        }
        int i = 8 * unit;
        inp.get8(base + i, x1);
        inp.get8(base + i + half, x2);
        for (int k = 0; k < 8; k++)
            rope_rotate(x1[k], x2[k], cs[t * half + i + k], sn[t * half + i + k], &x1[k], &x2[k]);
        out.put8(base + i, x1);
        out.put8(base + i + half, x2);
    }
}

static void launch_rope(cuda_context *c, values_out out, values_in inp, const int32_t *pos,
                        const float *inv_freq, int N, int H, int D, int R, float scale,
                        float direction)
{
    int half = R / 2, head_units = (D - half) / 8;
    if (N <= 0)   // no tokens: no blocks to launch (a grid of none is refused)
        return;
    if (half % 8 == 0 && (D - R) % 8 == 0 && out.aligned() && inp.aligned() && H > 0 &&
        head_units > 0) {
        // about a unit a thread; at least a token a block
        int tokens = (ROPE_THREADS + H * head_units - 1) / (H * head_units);
        CUDA_LAUNCH(rope8_kernel, (N + tokens - 1) / tokens, ROPE_THREADS,
                    2 * (size_t)tokens * half * sizeof(float), c->stream, out, inp, pos, inv_freq,
                    N, H, D, R, scale, direction, tokens);
    } else {
        CUDA_LAUNCH(rope_kernel, cuda_blocks((size_t)N * (D - R / 2), 256), 256, 0, c->stream,
                    out, inp, pos, inv_freq, N, H, D, R, scale, direction);
    }
    CUDA_LAUNCHED(c);
}

extern "C" void cuda_rope_forward(void *ctx, float *out, const float *inp, const int32_t *pos,
                                  const float *inv_freq, int N, int H, int D, int R, float scale)
{
    CUDA_OP(ctx);
    values_out to = write_values(c, out, (size_t)N * H * D, false);
    values_in from = read_values(c, inp, (size_t)N * H * D);
    launch_rope(c, to, from, pos, inv_freq, N, H, D, R, scale, 1.0f);
}

extern "C" void cuda_rope_backward(void *ctx, float *dinp, const float *dout, const int32_t *pos,
                                   const float *inv_freq, int N, int H, int D, int R, float scale)
{
    // dq and dk, one after the other, each for its product after: the copies of what this
    // does not write stay
    size_t n = (size_t)N * H * D;
    CUDA_OP_WRITING(ctx, dinp, n);
    values_out to = write_values(c, dinp, n, true);
    values_in from = read_values(c, dout, n);
    launch_rope(c, to, from, pos, inv_freq, N, H, D, R, scale, -1.0f);
}

// ---- elementwise ------------------------------------------------------------------------------

// A GLU's activation of the gate is g sigmoid(z(g)): SiLU's z = g (Llama's FFN), GELU's tanh
// approximation's z = 2 sqrt(2/pi) (g + 0.044715 g^3) (Gemma's); dz its derivative.
struct silu_act {
    __device__ static float z(float g) { return g; }
    __device__ static float dz(float) { return 1.0f; }
};
struct gelu_tanh_act {
    __device__ static float z(float g) { return 1.5957691216057308f * (g + 0.044715f * g * g * g); }
    __device__ static float dz(float g) { return 1.5957691216057308f * (1.0f + 0.134145f * g * g); }
};

// out = act(g) u, and the gradients of g and u from out's d: the same fp32 expressions
// whichever way the kernels load the values.
template <class A> __device__ __forceinline__ float glu_value(float g, float u)
{
    return g / (1.0f + expf(-A::z(g))) * u;
}

template <class A>
__device__ __forceinline__ void glu_grads(float d, float g, float u, float *dg, float *du)
{
    float sig = 1.0f / (1.0f + expf(-A::z(g)));
    *du = d * g * sig;
    *dg = d * u * (sig + g * sig * (1.0f - sig) * A::dz(g));
}

// In bf16 math every tensor here is bf16 (compact): TinyLlama's step moves 138 MB forward and
// 230 MB backward a layer, 8 values an access where aligned (vector8).
template <class A>
__global__ void glu_forward_kernel(values_out out, values_in gate, values_in up, size_t n,
                                   bool vector8)
{
    GRID_STRIDE8(u8, n, vector8)
    {
        float g[8], u[8], o[8];
        gate.get8(8 * u8, g);
        up.get8(8 * u8, u);
        for (int k = 0; k < 8; k++)
            o[k] = glu_value<A>(g[k], u[k]);
        out.put8(8 * u8, o);
    }
    GRID_STRIDE_REST(i, n, vector8) out.put(i, glu_value<A>(gate[i], up[i]));
}

template <class A>
__global__ void glu_backward_kernel(values_out dgate, values_out dup, values_in dout,
                                    values_in gate, values_in up, size_t n, bool vector8)
{
    GRID_STRIDE8(u8, n, vector8)
    {
        float d[8], g[8], u[8], dg[8], du[8];
        dout.get8(8 * u8, d);
        gate.get8(8 * u8, g);
        up.get8(8 * u8, u);
        for (int k = 0; k < 8; k++)
            glu_grads<A>(d[k], g[k], u[k], &dg[k], &du[k]);
        dup.put8(8 * u8, du);
        dgate.put8(8 * u8, dg);
    }
    GRID_STRIDE_REST(i, n, vector8)
    {
        float dg, du;
        glu_grads<A>(dout[i], gate[i], up[i], &dg, &du);
        dup.put(i, du);
        dgate.put(i, dg);
    }
}

// TinyLlama's residual moves 100 MB (~23 us at 4.3 TB/s)
__global__ void residual_kernel(float *out, const float *x, const float *y, size_t n,
                                bool vector8)
{
    GRID_STRIDE8(u, n, vector8)
    {
        float a[8], b[8];
        load8(x + 8 * u, a);
        load8(y + 8 * u, b);
        for (int k = 0; k < 8; k++)
            a[k] = a[k] + b[k];
        store8(out + 8 * u, a);
    }
    GRID_STRIDE_REST(i, n, vector8) out[i] = x[i] + y[i];
}

__global__ void axpy_kernel(values_out y, values_in x, float alpha, size_t n, bool vector8)
{
    GRID_STRIDE8(u, n, vector8)
    {
        float a[8], b[8];
        y.get8(8 * u, a);
        x.get8(8 * u, b);
        for (int k = 0; k < 8; k++)
            a[k] = a[k] + alpha * b[k];
        y.put8(8 * u, a);
    }
    GRID_STRIDE_REST(i, n, vector8) y.put(i, y.get(i) + alpha * x[i]);
}

__global__ void scale_kernel(float *x, float alpha, size_t n, bool vector8)
{
    GRID_STRIDE8(u, n, vector8)
    {
        float a[8];
        load8(x + 8 * u, a);
        for (int k = 0; k < 8; k++)
            a[k] *= alpha;
        store8(x + 8 * u, a);
    }
    GRID_STRIDE_REST(i, n, vector8) x[i] *= alpha;
}

template <class A>
static void glu_forward(void *ctx, float *out, const float *gate, const float *up, size_t n)
{
    CUDA_OP(ctx);
    values_out to = write_values(c, out, n, true);
    values_in g = read_values(c, gate, n), u = read_values(c, up, n);
    bool vector8 = to.aligned() && g.aligned() && u.aligned();
    CUDA_LAUNCH(glu_forward_kernel<A>, cuda_blocks8(n, vector8), 256, 0, c->stream, to, g, u, n,
                vector8);
    CUDA_LAUNCHED(c);
}

template <class A>
static void glu_backward(void *ctx, float *dgate, float *dup, const float *dout,
                         const float *gate, const float *up, size_t n)
{
    CUDA_OP(ctx);
    // two slots: the gate and the up products read one each
    values_out to_dgate = write_values(c, dgate, n, true);
    values_out to_dup = write_values(c, dup, n, true, to_dgate.h);
    values_in d = read_values(c, dout, n), g = read_values(c, gate, n), u = read_values(c, up, n);
    bool vector8 = to_dgate.aligned() && to_dup.aligned() && d.aligned() && g.aligned() &&
                   u.aligned();
    CUDA_LAUNCH(glu_backward_kernel<A>, cuda_blocks8(n, vector8), 256, 0, c->stream, to_dgate,
                to_dup, d, g, u, n, vector8);
    CUDA_LAUNCHED(c);
}

extern "C" void cuda_swiglu_forward(void *ctx, float *out, const float *gate, const float *up,
                                    size_t n)
{
    glu_forward<silu_act>(ctx, out, gate, up, n);
}

extern "C" void cuda_geglu_forward(void *ctx, float *out, const float *gate, const float *up,
                                   size_t n)
{
    glu_forward<gelu_tanh_act>(ctx, out, gate, up, n);
}

extern "C" void cuda_swiglu_backward(void *ctx, float *dgate, float *dup, const float *dout,
                                     const float *gate, const float *up, size_t n)
{
    glu_backward<silu_act>(ctx, dgate, dup, dout, gate, up, n);
}

extern "C" void cuda_geglu_backward(void *ctx, float *dgate, float *dup, const float *dout,
                                    const float *gate, const float *up, size_t n)
{
    glu_backward<gelu_tanh_act>(ctx, dgate, dup, dout, gate, up, n);
}

extern "C" void cuda_residual_forward(void *ctx, float *out, const float *x, const float *y,
                                      size_t n)
{
    CUDA_OP(ctx);
    bool vector8 = aligned16(out) && aligned16(x) && aligned16(y);
    CUDA_LAUNCH(residual_kernel, cuda_blocks8(n, vector8), 256, 0, c->stream, out, x, y, n,
                vector8);
    CUDA_LAUNCHED(c);
}

// Deferred (cuda_context.zero_at): made by the next op, or skipped by a product onto it.
extern "C" void cuda_vector_zero(void *ctx, float *x, size_t n)
{
    CUDA_OP_WRITING(ctx, x, n);   // an earlier one made
    if (n == 0)
        return;
    if (x == c->grads && n == c->grads_n) {   // all the gradients: kept pending, all again
        c->grads_zero = 1;
        c->grads_count = 0;
        return;
    }
    cuda_settle_grads(c, x, n * sizeof *x);
    c->zero_at = x;
    c->zero_n = n;
}

extern "C" void cuda_vector_axpy(void *ctx, float *y, const float *x, float alpha, size_t n)
{
    CUDA_OP(ctx);
    cuda_settle_grads(c, y, n * sizeof *y);
    cuda_settle_grads(c, x, n * sizeof *x);
    values_out to = write_values(c, y, n, false);
    values_in add = read_values(c, x, n);
    bool vector8 = to.aligned() && add.aligned();
    CUDA_LAUNCH(axpy_kernel, cuda_blocks8(n, vector8), 256, 0, c->stream, to, add, alpha, n,
                vector8);
    CUDA_LAUNCHED(c);
}

__global__ void dropout_mask_kernel(float *mask, size_t n, float p, float keep, uint64_t seed)
{
    GRID_STRIDE(i, n) mask[i] = pesc_dropout_value(seed, i, p, keep);
}

// The mask is made where it is used: no host loop, no upload (DESIGN: no host work per token).
extern "C" void cuda_dropout_mask(void *ctx, float *mask, size_t n, float p, uint64_t seed)
{
    CUDA_OP(ctx);
    CUDA_LAUNCH(dropout_mask_kernel, cuda_blocks(n, 256), 256, 0, c->stream, mask, n, p,
                1.0f / (1.0f - p), seed);
    CUDA_LAUNCHED(c);
}

__global__ void add_uniform_kernel(float *x, size_t n, float magnitude, uint64_t seed)
{
    GRID_STRIDE(i, n) x[i] += magnitude * (2.0f * pesc_dropout_uniform(seed, i) - 1.0f);
}

extern "C" void cuda_vector_add_uniform(void *ctx, float *x, size_t n, float magnitude,
                                        uint64_t seed)
{
    CUDA_OP_WRITING(ctx, x, n);
    CUDA_LAUNCH(add_uniform_kernel, cuda_blocks(n, 256), 256, 0, c->stream, x, n, magnitude,
                seed);
    CUDA_LAUNCHED(c);
}

extern "C" void cuda_vector_scale(void *ctx, float *x, float alpha, size_t n)
{
    CUDA_OP(ctx);
    cuda_settle_grads(c, x, n * sizeof *x);
    bool vector8 = aligned16(x);
    CUDA_LAUNCH(scale_kernel, cuda_blocks8(n, vector8), 256, 0, c->stream, x, alpha, n,
                vector8);
    CUDA_LAUNCHED(c);
}

// ---- sum of squares: blocks of doubles fixed by the length, then the blocks in order -------

// The blocks a chunk of n values is summed in: one a 2,048 values, at most CUDA_REDUCE_BLOCKS
// (enough to fill an H200: 256 left the 1.5 GB of TinyLlama's trainables at 2.2 ms, about a
// fifth of its bandwidth). A function of n alone, so a chunk's sum is vector_sumsq's of it.
static int sumsq_blocks(size_t n)
{
    size_t b = (n + 2047) / 2048;
    return b < 1 ? 1 : b > CUDA_REDUCE_BLOCKS ? CUDA_REDUCE_BLOCKS : (int)b;
}

// Chunk blockIdx.y of consecutive chunks of n values (one chunk: vector_sumsq): its partial
// sums go to partials + blockIdx.y * gridDim.x, the same for a chunk whatever the others.
__global__ void sumsq_partial_kernel(double *partials, const float *x, size_t n)
{
    __shared__ double shared[256];
    x += (size_t)blockIdx.y * n;
    double s = 0.0;
    GRID_STRIDE(i, n) s += (double)x[i] * x[i];
    shared[threadIdx.x] = s;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if ((int)threadIdx.x < stride)
            shared[threadIdx.x] += shared[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0)
        partials[(size_t)blockIdx.y * gridDim.x + blockIdx.x] = shared[0];
}

// sums[i] = the `blocks` partials of chunk i, in order; one thread a chunk.
__global__ void sumsq_finish_kernel(double *sums, const double *partials, int chunks,
                                    int blocks)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= chunks)
        return;
    double s = 0.0;
    for (int b = 0; b < blocks; b++)
        s += partials[(size_t)i * blocks + b];
    sums[i] = s;
}

// sums[i] = the sum of squares of x[i chunk .. (i + 1) chunk) for i < n; partials holds
// n * sumsq_blocks(chunk) doubles. Nothing waits.
static bool launch_sumsq(cuda_context *c, double *sums, double *partials, const float *x,
                         size_t chunk, int n)
{
    int blocks = sumsq_blocks(chunk);
    for (int i0 = 0; i0 < n; i0 += 65535) {   // gridDim.y's limit
        int m = n - i0 < 65535 ? n - i0 : 65535;
        CUDA_LAUNCH(sumsq_partial_kernel, dim3(blocks, m), 256, 0, c->stream,
                    partials + (size_t)i0 * blocks, x + (size_t)i0 * chunk, chunk);
    }
    CUDA_LAUNCH(sumsq_finish_kernel, (n + 127) / 128, 128, 0, c->stream, sums, partials, n,
                blocks);
    return CUDA_LAUNCHED(c);
}

// Host sync: the result goes to the host (the gradient-clipping norm).
extern "C" double cuda_vector_sumsq(void *ctx, const float *x, size_t n)
{
    cuda_context *c = (cuda_context *)ctx;
    double s = NAN, *sum = c->partials + CUDA_REDUCE_BLOCKS;
    if (c->failed || !cuda_device_current(c))
        return s;
    cuda_settle_zero(c);
    cuda_settle_grads(c, x, n * sizeof *x);
    if (launch_sumsq(c, sum, c->partials, x, n, 1) &&
        CUDA_CHECK(c, cudaMemcpyAsync(&s, sum, sizeof s, cudaMemcpyDeviceToHost, c->stream)) &&
        CUDA_CHECK(c, cudaStreamSynchronize(c->stream)))
        return s;
    return NAN;
}

// No host sync: the sums stay on the device (out) until the caller downloads them.
extern "C" void cuda_vector_sumsq_chunks(void *ctx, double *out, const float *x, size_t chunk,
                                         int n)
{
    CUDA_OP(ctx);
    if (n <= 0)
        return;
    cuda_settle_grads(c, x, (size_t)n * chunk * sizeof *x);
    double *partials =
        (double *)cuda_op_work(c, (size_t)n * sumsq_blocks(chunk) * sizeof(double));
    if (partials)
        launch_sumsq(c, out, partials, x, chunk, n);
}

// ---- AdamW ----------------------------------------------------------------------------------

// One value's step: AdamW's moments m and v and the parameter p, from its gradient g (scaled)
struct adamw_step {
    float lr, beta1, beta2, eps, weight_decay, step_size, sqrt_c2;
    __device__ __forceinline__ void operator()(float g_in, float grad_scale, float *p, float *m,
                                               float *v) const
    {
        float g = grad_scale == 1.0f ? g_in : g_in * grad_scale;
        float q = *p * (1.0f - lr * weight_decay);
        *m = beta1 * *m + (1.0f - beta1) * g;
        *v = beta2 * *v + (1.0f - beta2) * g * g;
        *p = q - step_size * *m / (sqrtf(*v) / sqrt_c2 + eps);
    }
};

// values: NULL, or the trainables' bf16 values to write with the new ones (cuda_trainables).
// TinyLlama's 369M trainables: 16 bytes read and 14 written a value, 11 GB (~2.6 ms at 4.3
// TB/s); 8 values an access where every tensor is aligned (vector8).
__global__ void adamw_kernel(float *params, __nv_bfloat16 *values, const float *grads,
                             float grad_scale, float *m, float *v, float *delta, size_t n,
                             adamw_step step, bool vector8)
{
    GRID_STRIDE8(u, n, vector8)
    {
        size_t at = 8 * u;
        float g[8], p[8], mi[8], vi[8], before[8];
        load8(grads + at, g);
        load8(params + at, p);
        load8(m + at, mi);
        load8(v + at, vi);
        for (int k = 0; k < 8; k++) {
            before[k] = p[k];
            step(g[k], grad_scale, &p[k], &mi[k], &vi[k]);
        }
        store8(m + at, mi);
        store8(v + at, vi);
        store8(params + at, p);
        if (values)
            store8(values + at, p);
        if (delta) {
            for (int k = 0; k < 8; k++)
                before[k] = before[k] - p[k];
            store8(delta + at, before);
        }
    }
    GRID_STRIDE_REST(i, n, vector8)
    {
        float before = params[i], p = before, mi = m[i], vi = v[i];
        step(grads[i], grad_scale, &p, &mi, &vi);
        m[i] = mi;
        v[i] = vi;
        params[i] = p;
        if (values)
            values[i] = operand_cvt<__nv_bfloat16>(p);
        if (delta)
            delta[i] = before - p;
    }
}

extern "C" void cuda_adamw_update(void *ctx, float *params, const float *grads,
                                  float grad_scale, float *m, float *v, float *delta, size_t n,
                                  float lr, float beta1, float beta2, float eps,
                                  float weight_decay, int step)
{
    CUDA_OP(ctx);
    cuda_settle_grads(c, NULL, 0);   // the gradients (or anything the update touches)
    double correction1 = 1.0 - pow(beta1, step), correction2 = 1.0 - pow(beta2, step);
    // the trainables' step writes their bf16 values too; any other over them makes them stale
    bool all = c->train16 && params == c->train && n == c->train_n;
    if (!all)
        cuda_forget_copies(c, params, n);
    __nv_bfloat16 *values = all ? (__nv_bfloat16 *)c->train16 : NULL;
    adamw_step step_of = {lr, beta1, beta2, eps, weight_decay, (float)(lr / correction1),
                          (float)sqrt(correction2)};
    bool vector8 = aligned16(params) && aligned16(values) && aligned16(grads) && aligned16(m) &&
                   aligned16(v) && aligned16(delta);
    CUDA_LAUNCH(adamw_kernel, cuda_blocks8(n, vector8), 256, 0, c->stream, params, values, grads,
                grad_scale, m, v, delta, n, step_of, vector8);
    if (CUDA_LAUNCHED(c) && all)
        c->train_valid = 1;
}

// ---- cross-entropy: one block per row, the logits read from device memory once (twice where
// the backward writes the gradient)

#define CE_THREADS 512

// The row's max and sum of exp(y - max), y the logits capped (soft_cap); every thread gets
// both. One pass: each thread keeps its values' max and their sum relative to it (rescaled as
// the max grows), then the block's sum rescales each thread's to the row's max.
__device__ void row_softmax_stats(const float *row, int V, float cap, float *m_out,
                                  float *sum_out, float *shared)
{
    float m = -INFINITY, s = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float y = soft_cap(row[i], cap);
        if (y > m) {
            s = s * expf(m - y) + 1.0f;   // expf(-inf) is 0: the first value
            m = y;
        } else if (y != -INFINITY) {   // -inf adds nothing (and -inf - -inf would be NaN)
            s += expf(y - m);   // a NaN stays in s, as the two passes kept it
        }
    }
    float row_m = block_max(m, shared);
    // a thread with nothing (no values, or all -inf) adds 0; NaN and +inf give NaN as before
    *sum_out = block_sum(s == 0.0f ? 0.0f : s * expf(m - row_m), shared);
    *m_out = row_m;
}

__global__ void crossentropy_forward_kernel(float *losses, const float *logits,
                                            const int32_t *targets, int V, float cap)
{
    __shared__ float shared[32];
    int target = targets[blockIdx.x];
    if (target < 0) {
        if (threadIdx.x == 0)
            losses[blockIdx.x] = 0.0f;
        return;
    }
    const float *row = logits + (size_t)blockIdx.x * V;
    float m, sum;
    row_softmax_stats(row, V, cap, &m, &sum, shared);
    if (threadIdx.x == 0)
        losses[blockIdx.x] = logf(sum) + m - soft_cap(row[target], cap);
}

// dlogits may equal logits: the target's logit is read, and both reductions finish (their
// barriers), before any thread writes; each thread then rewrites only the elements it read.
// dlogits: with its bf16 copy (cuda_keep_copy).
__global__ void crossentropy_backward_kernel(values_out dlogits, float *losses,
                                             const float *logits, const int32_t *targets,
                                             float scale, int V, float cap)
{
    __shared__ float shared[32];
    int target = targets[blockIdx.x];
    size_t first = (size_t)blockIdx.x * V;
    const float *row = logits + first;
    if (target < 0) {
        for (int i = threadIdx.x; i < V; i += blockDim.x)
            dlogits.put(first + i, 0.0f);
        if (losses && threadIdx.x == 0)
            losses[blockIdx.x] = 0.0f;
        return;
    }
    float target_logit = soft_cap(row[target], cap);
    float m, sum;
    row_softmax_stats(row, V, cap, &m, &sum, shared);
    float inv = scale / sum;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float y = soft_cap(row[i], cap), d = expf(y - m) * inv;
        dlogits.put(first + i, (i == target ? d - scale : d) * soft_cap_slope(y, cap));
    }
    if (losses && threadIdx.x == 0)
        losses[blockIdx.x] = logf(sum) + m - target_logit;
}

// argmax_rows: a block a row. Each thread keeps the first of the largest of its stride (NaN
// never; index -1 while it has seen none), then the warps and the block keep the larger of
// two, the lower index of equals: the row's first largest, as the CPU's scan finds it; -1
// when it is not finite (a row of NaN, an infinity), as the CPU's.
__device__ __forceinline__ bool argmax_better(float v, int i, float than, int than_i)
{
    return i >= 0 && (than_i < 0 || v > than || (v == than && i < than_i));
}

__device__ __forceinline__ void warp_argmax(float *v, int *i)
{
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, *v, o);
        int oi = __shfl_xor_sync(0xffffffffu, *i, o);
        if (argmax_better(ov, oi, *v, *i)) {
            *v = ov;
            *i = oi;
        }
    }
}

__global__ void argmax_rows_kernel(int32_t *out, const float *x, int cols)
{
    __shared__ float shared_v[32];
    __shared__ int shared_i[32];
    const float *row = x + (size_t)blockIdx.x * cols;
    float v = -INFINITY;
    int idx = -1;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        float y = row[i];
        if (y == y && (idx < 0 || y > v)) {
            v = y;
            idx = i;
        }
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    warp_argmax(&v, &idx);
    if (lane == 0) {
        shared_v[warp] = v;
        shared_i[warp] = idx;
    }
    __syncthreads();
    if (warp == 0) {
        v = lane < warps ? shared_v[lane] : -INFINITY;
        idx = lane < warps ? shared_i[lane] : -1;
        warp_argmax(&v, &idx);
        if (lane == 0)
            out[blockIdx.x] = idx >= 0 && isfinite(v) ? idx : -1;
    }
}

extern "C" void cuda_argmax_rows(void *ctx, int32_t *out, const float *x, int rows, int cols)
{
    CUDA_OP(ctx);
    if (rows > 0)
        CUDA_LAUNCH(argmax_rows_kernel, rows, 256, 0, c->stream, out, x, cols);
    CUDA_LAUNCHED(c);
}

extern "C" void cuda_crossentropy_forward(void *ctx, float *losses, const float *logits,
                                          const int32_t *targets, int N, int V, float softcap)
{
    CUDA_OP(ctx);
    CUDA_LAUNCH(crossentropy_forward_kernel, N, CE_THREADS, 0, c->stream, losses, logits, targets,
                V, softcap);
    CUDA_LAUNCHED(c);
}

extern "C" void cuda_crossentropy_backward(void *ctx, float *dlogits, float *losses,
                                           const float *logits, const int32_t *targets,
                                           float scale, int N, int V, float softcap)
{
    CUDA_OP(ctx);
    // for the head's products next (its input's gradient, and in full mode its own)
    values_out to = write_values(c, dlogits, (size_t)N * V, true);
    CUDA_LAUNCH(crossentropy_backward_kernel, N, CE_THREADS, 0, c->stream, to, losses, logits,
                targets, scale, V, softcap);
    CUDA_LAUNCHED(c);
}
