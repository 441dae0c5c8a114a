// cuda_narrow — the dense products with at most NARROW_MAX outputs: a router's (E experts) and
// LoRA's A (its rank). cuBLAS ran the TinyLlama router's products (4096 x 2048 -> 8, batch 2)
// at 46 us forward and 88 us backward a layer on an H200 (profiled), where the forward reads
// 33 MB once: 7 us at the memory's speed (the backward moves three times that). These kernels
// read each operand once, in fp32 arithmetic (the narrow products' math, cuda_backend.cu's
// math_for), in a fixed order (the same sums on every run):
//   forward   out (N, E) = x (N, C) W (E, C)^T: a warp takes NARROW_ROWS rows, each lane 8 of
//             every 256 columns, then the lanes' sums reduce by shuffles;
//   dinp      dinp (N, C) (+)= dout (N, E) W: 8 values a thread;
//   dweight   dW (E, C) (+)= dout^T x: each thread a column of a chunk of rows, then the chunks
//             in order (as cuda_column_sum).
// x may be memory kept in bf16 alone (read as it is: widening is exact); everything else is
// fp32. The weight gradient's partial sums have a fixed room, made with the context
// (NARROW_PARTIAL_FLOATS: 4 MiB), so that no step's memory grows for them. The callers fall
// back to cuBLAS where a launcher returns false (more outputs, rows not of 8 values, compact
// memory elsewhere, a weight gradient too wide for the partial sums).
#include <type_traits>

#include "cuda/cuda_common.cuh"

#define NARROW_MAX 16
#define NARROW_ROWS 4             // rows a warp (forward)
#define NARROW_CHUNKS 64          // row chunks of a weight gradient, at most

template <class T, int EM>
__global__ void narrow_forward_kernel(float *out, const T *x, const float *w, int N, int C, int E)
{
    int warp = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5), lane = threadIdx.x & 31;
    int n0 = warp * NARROW_ROWS;
    if (n0 >= N)
        return;   // the whole warp
    float acc[NARROW_ROWS][EM];
    for (int r = 0; r < NARROW_ROWS; r++)
        for (int e = 0; e < EM; e++)
            acc[r][e] = 0.0f;
    for (int c = 8 * lane; c < C; c += 256) {
        float xv[NARROW_ROWS][8];
#pragma unroll
        for (int r = 0; r < NARROW_ROWS; r++) {
            if (n0 + r < N)
                load8(x + (size_t)(n0 + r) * C + c, xv[r]);
            else
                for (int k = 0; k < 8; k++)
                    xv[r][k] = 0.0f;
        }
#pragma unroll
        for (int e = 0; e < EM; e++) {
            if (e >= E)
                break;
            float wv[8];
            load8(w + (size_t)e * C + c, wv);
#pragma unroll
            for (int r = 0; r < NARROW_ROWS; r++)
#pragma unroll
                for (int k = 0; k < 8; k++)
                    acc[r][e] += xv[r][k] * wv[k];
        }
    }
#pragma unroll
    for (int r = 0; r < NARROW_ROWS; r++)
#pragma unroll
        for (int e = 0; e < EM; e++) {
            float v = acc[r][e];
            for (int off = 16; off > 0; off >>= 1)
                v += __shfl_xor_sync(0xffffffffu, v, off);
            if (lane == 0 && e < E && n0 + r < N)
                out[(size_t)(n0 + r) * E + e] = v;
        }
}

// 8 values of a row a thread: dinp = beta dinp + sum_e dout[n][e] W[e][c .. c + 7]
__global__ void narrow_dinp_kernel(float *dinp, const float *dout, const float *w, int N, int C,
                                   int E, bool add)
{
    size_t vectors = (size_t)N * (C / 8);
    GRID_STRIDE(i, vectors)
    {
        size_t n = i / (C / 8);
        int c = 8 * (int)(i % (C / 8));
        float sum[8] = {0, 0, 0, 0, 0, 0, 0, 0}, wv[8];
        for (int e = 0; e < E; e++) {
            float d = dout[n * E + e];
            load8(w + (size_t)e * C + c, wv);
            for (int k = 0; k < 8; k++)
                sum[k] += d * wv[k];
        }
        float *p = dinp + n * C + c;
        if (add) {
            float old[8];
            load8(p, old);
            for (int k = 0; k < 8; k++)
                sum[k] += old[k];
        }
        PESC_STORE_FLOAT4(p, make_float4(sum[0], sum[1], sum[2], sum[3]));
        PESC_STORE_FLOAT4(p + 4, make_float4(sum[4], sum[5], sum[6], sum[7]));
    }
}

// partial[chunk][e][col] = sum over the chunk's rows n of dout[n][e] x[n][col]
template <class T, int EM>
__global__ void narrow_dweight_partial_kernel(float *partial, const float *dout, const T *x,
                                              int N, int C, int E)
{
    int col = blockIdx.x * blockDim.x + threadIdx.x, chunk = blockIdx.y;
    if (col >= C)
        return;
    int lo = (int)((long long)N * chunk / gridDim.y);
    int hi = (int)((long long)N * (chunk + 1) / gridDim.y);
    float acc[EM];
    for (int e = 0; e < EM; e++)
        acc[e] = 0.0f;
    for (int n = lo; n < hi; n++) {
        float v = value_of(x[(size_t)n * C + col]);
#pragma unroll
        for (int e = 0; e < EM; e++)
            if (e < E)
                acc[e] += dout[(size_t)n * E + e] * v;
    }
#pragma unroll
    for (int e = 0; e < EM; e++)   // unrolled: acc stays in registers
        if (e < E)
            partial[((size_t)chunk * E + e) * C + col] = acc[e];
}

static bool narrow_aligned(const void *p) { return ((uintptr_t)p & 15) == 0; }

// Whether a product of OC outputs from C inputs can run here at all: few outputs, rows of 8s.
static bool narrow_shape(int C, int OC) { return OC >= 1 && OC <= NARROW_MAX && C % 8 == 0; }

// f(std::integral_constant<int, EM>()) for EM the fewest of 4, 8 or 16 accumulators that hold E
// outputs: the kernels' instance for E.
template <class F> static void narrow_accumulators(int E, const F &f)
{
    if (E <= 4)
        f(std::integral_constant<int, 4>());
    else if (E <= 8)
        f(std::integral_constant<int, 8>());
    else
        f(std::integral_constant<int, 16>());
}

template <class T>
static void narrow_forward_of(cuda_context *c, float *out, const T *x, const float *w, int N,
                              int C, int E)
{
    unsigned blocks = (unsigned)(((N + NARROW_ROWS - 1) / NARROW_ROWS + 7) / 8);   // 8 warps
    narrow_accumulators(E, [&](auto em) {
        CUDA_LAUNCH((narrow_forward_kernel<T, decltype(em)::value>), blocks, 256, 0, c->stream,
                    out, x, w, N, C, E);
    });
}

bool cuda_narrow_forward(cuda_context *c, float *out, const float *inp, const float *weight,
                         int N, int C, int OC)
{
    if (!narrow_shape(C, OC) || N <= 0 || cuda_compact(c, out, (size_t)N * OC) ||
        cuda_compact(c, weight, (size_t)OC * C) || !narrow_aligned(weight))
        return false;
    const __nv_bfloat16 *x16 = cuda_compact(c, inp, (size_t)N * C);
    if (!narrow_aligned(x16 ? (const void *)x16 : (const void *)inp))
        return false;
    if (x16)
        narrow_forward_of(c, out, x16, weight, N, C, OC);
    else
        narrow_forward_of(c, out, inp, weight, N, C, OC);
    CUDA_LAUNCHED(c);
    cuda_forget_copies(c, out, (size_t)N * OC);
    return true;
}

bool cuda_narrow_dinp(cuda_context *c, float *dinp, const float *dout, const float *weight,
                      int N, int C, int OC, bool add)
{
    if (!narrow_shape(C, OC) || N <= 0 || cuda_compact(c, dinp, (size_t)N * C) ||
        cuda_compact(c, dout, (size_t)N * OC) || cuda_compact(c, weight, (size_t)OC * C) ||
        !narrow_aligned(dinp) || !narrow_aligned(weight))
        return false;
    CUDA_LAUNCH(narrow_dinp_kernel, cuda_blocks((size_t)N * (C / 8), 256), 256, 0, c->stream,
                dinp, dout, weight, N, C, OC, add);
    CUDA_LAUNCHED(c);
    cuda_forget_copies(c, dinp, (size_t)N * C);
    return true;
}

template <class T>
static void narrow_partial_of(cuda_context *c, float *partial, const float *dout, const T *x,
                              int N, int C, int E, int chunks)
{
    dim3 grid((C + 255) / 256, chunks);
    narrow_accumulators(E, [&](auto em) {
        CUDA_LAUNCH((narrow_dweight_partial_kernel<T, decltype(em)::value>), grid, 256, 0,
                    c->stream, partial, dout, x, N, C, E);
    });
}

// The row chunks of a weight gradient of OC x C: as many as NARROW_CHUNKS and the partial
// sums' room (cuda_context.narrow_partials) allow, never more than the rows; 0 where not one
// fits. Fixed by the shape: the sums add in the same order on every run.
static int narrow_chunks(int N, int C, int OC)
{
    long long fit = NARROW_PARTIAL_FLOATS / ((long long)OC * C);
    long long chunks = fit < NARROW_CHUNKS ? fit : NARROW_CHUNKS;
    return (int)(chunks < N ? chunks : N);
}

bool cuda_narrow_dweight(cuda_context *c, float *dweight, const float *dout, const float *inp,
                         int N, int C, int OC, bool add)
{
    int chunks = narrow_shape(C, OC) ? narrow_chunks(N, C, OC) : 0;
    if (chunks <= 0 || cuda_compact(c, dweight, (size_t)OC * C) ||
        cuda_compact(c, dout, (size_t)N * OC))
        return false;
    float *partial = c->narrow_partials;
    const __nv_bfloat16 *x16 = cuda_compact(c, inp, (size_t)N * C);
    if (x16)
        narrow_partial_of(c, partial, dout, x16, N, C, OC, chunks);
    else
        narrow_partial_of(c, partial, dout, inp, N, C, OC, chunks);
    if (CUDA_LAUNCHED(c))   // dW = (add ? dW : 0) + the chunks' sums in order
        cuda_chunk_sums(c, dweight, partial, (size_t)OC * C, chunks, add);
    cuda_forget_copies(c, dweight, (size_t)OC * C);
    return true;
}
