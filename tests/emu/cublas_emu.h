/* cublas_emu.h — the cuBLAS v2 calls the CUDA backend makes, emulated on the CPU for
 * -DPESC_CUDA_EMU builds (cuda_runtime_emu.h is the runtime beneath them).
 *
 * cublasGetVersion; cublasGemmEx, cublasGemmStridedBatchedEx and cublasGemmGroupedBatchedEx
 * (cuBLAS 12.5's grouped products, whose pointer arrays must be in device memory; here the
 * documented combinations the backend uses: fp32 operands and result in 32F or 32F_FAST_TF32,
 * bf16 operands and result in 32F; anything else, and everything with PESC_EMU_NO_GROUPED=1,
 * is refused with CUBLAS_STATUS_NOT_SUPPORTED, so the caller's fallbacks run too) with
 * cuBLAS's column-major
 * semantics, argument checks and status codes, for the type combinations the backend uses:
 *   A, B fp32 -> C fp32, compute 32F (exact fp32 inputs), 32F_FAST_TF32 (inputs rounded to
 *     TF32, 10 explicit mantissa bits) or 32F_FAST_16BF (inputs rounded to bf16), both to
 *     nearest even; CUBLAS_TF32_TENSOR_OP_MATH on the handle makes 32F behave as FAST_TF32;
 *   A, B bf16 -> C fp32 or bf16, compute 32F;
 * anything else is CUBLAS_STATUS_NOT_SUPPORTED. The products of the rounded inputs are exact in
 * double and summed in double, p = 0 .. k-1 in order, whatever the thread count (so results are
 * deterministic); the sum is rounded to float, then C = alpha sum + beta C in float (rounded to
 * bf16 for a bf16 C). With beta == 0, C is not read (cuBLAS's rule: it may hold NaN).
 *
 * A, B and C must lie inside memory from cudaMalloc, as on the GPU; where they do not, the
 * emulator aborts naming the operand (a GPU faults, later and less helpfully). A product is
 * issued like a kernel (cuda_runtime_emu.h: with PESC_EMU_DEFER=1 it runs when the host waits);
 * alpha, beta and the grouped call's host arrays are read at the call, its pointer arrays when
 * the products run.
 *
 * Speed: operands are packed into panels of 4 rows / 4 columns of doubles and multiplied 4 x 4
 * at a time, in blocks that stay in cache, on up to hardware_concurrency threads (over batches
 * and column ranges); about 5 GFLOP/s per core at -O2 (SSE2), so 512 x 2048 x 512 takes 0.1 s
 * on two cores. */
#ifndef PESC_CUBLAS_EMU_H
#define PESC_CUBLAS_EMU_H

#include "cuda_runtime_emu.h"

#include <atomic>
#include <thread>
#include <vector>

/* ---- types and statuses ---------------------------------------------------------------------- */
enum cudaDataType_t { CUDA_R_32F = 0, CUDA_R_64F = 1, CUDA_R_16F = 2, CUDA_R_16BF = 14 };
typedef cudaDataType_t cudaDataType;

enum cublasStatus_t {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_ALLOC_FAILED = 3,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_ARCH_MISMATCH = 8,
    CUBLAS_STATUS_MAPPING_ERROR = 11,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_INTERNAL_ERROR = 14,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
};

enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 };

enum cublasMath_t {
    CUBLAS_DEFAULT_MATH = 0,
    CUBLAS_PEDANTIC_MATH = 2,
    CUBLAS_TF32_TENSOR_OP_MATH = 3,
};

enum cublasComputeType_t {
    CUBLAS_COMPUTE_16F = 64,
    CUBLAS_COMPUTE_32F = 68,
    CUBLAS_COMPUTE_32F_PEDANTIC = 69,
    CUBLAS_COMPUTE_64F = 70,
    CUBLAS_COMPUTE_32F_FAST_16F = 74,
    CUBLAS_COMPUTE_32F_FAST_16BF = 75,
    CUBLAS_COMPUTE_32F_FAST_TF32 = 77,
};

enum cublasGemmAlgo_t { CUBLAS_GEMM_DEFAULT = -1 };

struct cublasContext {
    cudaStream_t stream;
    cublasMath_t math;
    int device;                     /* current when it was made: cuBLAS's handles stay there */
};
typedef cublasContext *cublasHandle_t;

inline const char *cublasGetStatusName(cublasStatus_t status)
{
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

inline const char *cublasGetStatusString(cublasStatus_t status)
{
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "the operation completed successfully";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH:
        return "an absent device architectural feature is required";
    case CUBLAS_STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    }
    return "unknown error";
}

/* ---- handles --------------------------------------------------------------------------------- */
inline cublasStatus_t cublasCreate(cublasHandle_t *handle)
{
    if (!handle)
        return CUBLAS_STATUS_INVALID_VALUE;
    *handle = new cublasContext{nullptr, CUBLAS_DEFAULT_MATH, emu_detail::current_device};
    return CUBLAS_STATUS_SUCCESS;
}

inline cublasStatus_t cublasDestroy(cublasHandle_t handle)
{
    if (!handle)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

inline cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream)
{
    if (!handle)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}

inline cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode)
{
    if (!handle)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if (mode != CUBLAS_DEFAULT_MATH && mode != CUBLAS_PEDANTIC_MATH &&
        mode != CUBLAS_TF32_TENSOR_OP_MATH)
        return CUBLAS_STATUS_INVALID_VALUE;
    handle->math = mode;
    return CUBLAS_STATUS_SUCCESS;
}

/* ---- the product ----------------------------------------------------------------------------- */
namespace emu_detail {

enum input_rounding { round_exact, round_tf32, round_bf16 };

/* fp32 to TF32 (the fp32 format with 10 explicit mantissa bits), to nearest even; infinities
 * and NaNs pass unchanged. */
inline float round_to_tf32(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7f800000u) != 0x7f800000u)
        u = (u + 0xfffu + ((u >> 13) & 1u)) & ~0x1fffu;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* One operand of a product as cuBLAS sees it: op(X) is rows x cols, X stored column-major. */
struct gemm_operand {
    const void *data;
    cudaDataType_t type;
    cublasOperation_t op;
    int ld;
    long long stride; /* elements from one batch to the next */
    int rows, cols;   /* of op(X) */

    int stored_rows() const { return op == CUBLAS_OP_N ? rows : cols; }
    int stored_cols() const { return op == CUBLAS_OP_N ? cols : rows; }
    /* Elements from the first to one past the last that X covers (0 when empty). */
    size_t extent() const
    {
        return stored_rows() == 0 || stored_cols() == 0
                   ? 0
                   : (size_t)(stored_cols() - 1) * ld + stored_rows();
    }
    size_t element_size() const { return type == CUDA_R_16BF ? 2 : 4; }
    const char *batch_start(int batch) const
    {
        return (const char *)data + batch * stride * (long long)element_size();
    }
    /* op(X)[row, col] of one batch, as the compute type rounds it. */
    double at(const char *base, int row, int col, input_rounding rounding) const
    {
        size_t index = op == CUBLAS_OP_N ? (size_t)col * ld + row : (size_t)row * ld + col;
        if (type == CUDA_R_16BF)
            return __bfloat162float(((const __nv_bfloat16 *)base)[index]);
        float value = ((const float *)base)[index];
        if (rounding == round_tf32)
            value = round_to_tf32(value);
        else if (rounding == round_bf16)
            value = __bfloat162float(__float2bfloat16_rn(value));
        return value;
    }
};

struct gemm_problem {
    int m, n, k, batches;
    float alpha, beta;
    gemm_operand a, b;
    input_rounding rounding;
    void *c;
    cudaDataType_t c_type;
    int ldc;
    long long stride_c;
};

constexpr int gemm_panel = 4;    /* rows of op(A), columns of op(B) per micro-kernel */
constexpr int gemm_k_block = 256; /* k per pass: A's block (128 rows) and B's panel stay cached */
constexpr int gemm_m_block = 128;

typedef double double2 __attribute__((vector_size(16)));

/* sum[4 x 4] (column j at sum + 4 j) += a_panel^T b_panel over kc steps; a_panel and b_panel
 * hold 4 values per step. */
inline void gemm_micro(double *sum, const double *a_panel, const double *b_panel, int kc)
{
    double2 acc[gemm_panel][2];
    for (int j = 0; j < gemm_panel; j++)
        for (int h = 0; h < 2; h++)
            memcpy(&acc[j][h], sum + j * gemm_panel + 2 * h, sizeof(double2));
    for (int p = 0; p < kc; p++) {
        double2 a_low, a_high;
        memcpy(&a_low, a_panel + p * gemm_panel, sizeof a_low);
        memcpy(&a_high, a_panel + p * gemm_panel + 2, sizeof a_high);
        for (int j = 0; j < gemm_panel; j++) {
            double2 b = {b_panel[p * gemm_panel + j], b_panel[p * gemm_panel + j]};
            acc[j][0] += a_low * b;
            acc[j][1] += a_high * b;
        }
    }
    for (int j = 0; j < gemm_panel; j++)
        for (int h = 0; h < 2; h++)
            memcpy(sum + j * gemm_panel + 2 * h, &acc[j][h], sizeof(double2));
}

/* C[:, j_first .. j_end) of one batch. Panels, zero-padded to multiples of 4:
 *   a_packed[i / 4][p][i % 4] = op(A)[i, p],  b_packed[j / 4][p][j % 4] = op(B)[p, j],
 *   sums[j / 4][i / 4][j % 4][i % 4] = the running sum of C[i, j]. */
inline void gemm_columns(const gemm_problem &g, int batch, int j_first, int j_end)
{
    const int m = g.m, k = g.k, n_local = j_end - j_first;
    const int i_panels = (m + gemm_panel - 1) / gemm_panel;
    const int j_panels = (n_local + gemm_panel - 1) / gemm_panel;
    const size_t square = gemm_panel * gemm_panel;
    std::vector<double> a_packed((size_t)i_panels * k * gemm_panel, 0.0);
    std::vector<double> b_packed((size_t)j_panels * k * gemm_panel, 0.0);
    std::vector<double> sums((size_t)i_panels * j_panels * square, 0.0);
    const char *a_base = g.a.batch_start(batch), *b_base = g.b.batch_start(batch);
    for (int i = 0; i < m; i++)
        for (int p = 0; p < k; p++)
            a_packed[((size_t)(i / gemm_panel) * k + p) * gemm_panel + i % gemm_panel] =
                g.a.at(a_base, i, p, g.rounding);
    for (int j = 0; j < n_local; j++)
        for (int p = 0; p < k; p++)
            b_packed[((size_t)(j / gemm_panel) * k + p) * gemm_panel + j % gemm_panel] =
                g.b.at(b_base, p, j_first + j, g.rounding);

    for (int p0 = 0; p0 < k; p0 += gemm_k_block) {
        int kc = std::min(gemm_k_block, k - p0);
        for (int i0 = 0; i0 < i_panels; i0 += gemm_m_block / gemm_panel)
            for (int jp = 0; jp < j_panels; jp++)
                for (int ip = i0; ip < std::min(i_panels, i0 + gemm_m_block / gemm_panel); ip++)
                    gemm_micro(&sums[((size_t)jp * i_panels + ip) * square],
                               &a_packed[((size_t)ip * k + p0) * gemm_panel],
                               &b_packed[((size_t)jp * k + p0) * gemm_panel], kc);
    }

    char *c_base = (char *)g.c + batch * g.stride_c * (long long)(g.c_type == CUDA_R_16BF ? 2 : 4);
    for (int j = 0; j < n_local; j++)
        for (int i = 0; i < m; i++) {
            double sum = sums[((size_t)(j / gemm_panel) * i_panels + i / gemm_panel) * square +
                              (j % gemm_panel) * gemm_panel + i % gemm_panel];
            size_t index = (size_t)(j_first + j) * g.ldc + i;
            float result = g.alpha * (float)sum;
            if (g.c_type == CUDA_R_16BF) {
                __nv_bfloat16 *c = (__nv_bfloat16 *)c_base;
                if (g.beta != 0.0f) /* with beta 0, C is not read: it may hold NaN */
                    result += g.beta * __bfloat162float(c[index]);
                c[index] = __float2bfloat16_rn(result);
            } else {
                float *c = (float *)c_base;
                if (g.beta != 0.0f)
                    result += g.beta * c[index];
                c[index] = result;
            }
        }
}

/* Work is (batch, range of columns) pieces: whole batches when there are enough of them,
 * otherwise each batch's columns split so every thread has some. */
inline void gemm_run(const gemm_problem &g)
{
    double flops = 2.0 * g.m * g.n * (double)g.k * g.batches;
    unsigned threads = flops < 4e6 ? 1u : std::max(1u, std::thread::hardware_concurrency());
    int pieces_per_batch = 1;
    if ((unsigned)g.batches < threads)
        pieces_per_batch = std::min((int)((threads + g.batches - 1) / g.batches),
                                    (g.n + gemm_panel - 1) / gemm_panel);
    long pieces = (long)g.batches * pieces_per_batch;
    threads = (unsigned)std::min<long>(threads, pieces);
    int panels_per_piece = ((g.n + gemm_panel - 1) / gemm_panel + pieces_per_batch - 1) /
                           pieces_per_batch;
    std::atomic<long> next(0);
    auto worker = [&] {
        for (long piece; (piece = next++) < pieces;) {
            int batch = (int)(piece / pieces_per_batch);
            int j_first = (int)(piece % pieces_per_batch) * panels_per_piece * gemm_panel;
            int j_end = std::min(g.n, j_first + panels_per_piece * gemm_panel);
            if (j_first < j_end)
                gemm_columns(g, batch, j_first, j_end);
        }
    };
    std::vector<std::thread> pool;
    for (unsigned t = 1; t < threads; t++)
        pool.emplace_back(worker);
    worker();
    for (std::thread &t : pool)
        t.join();
}

/* k == 0: C = beta C, without reading C when beta is 0. */
inline void gemm_scale(const gemm_problem &g)
{
    for (int batch = 0; batch < g.batches; batch++)
        for (int j = 0; j < g.n; j++)
            for (int i = 0; i < g.m; i++) {
                size_t index = (size_t)batch * g.stride_c + (size_t)j * g.ldc + i;
                if (g.c_type == CUDA_R_16BF) {
                    __nv_bfloat16 *c = (__nv_bfloat16 *)g.c + index;
                    *c = __float2bfloat16_rn(g.beta == 0.0f ? 0.0f
                                                            : g.beta * __bfloat162float(*c));
                } else {
                    float *c = (float *)g.c + index;
                    *c = g.beta == 0.0f ? 0.0f : g.beta * *c;
                }
            }
}

/* What the GPU would fault on: an operand outside cudaMalloc's memory. */
inline void check_device_operand(const char *call, const char *name, const void *data,
                                 size_t extent, size_t element_size, long long stride,
                                 int batches)
{
    for (int batch = 0; batch < batches; batch++) {
        const char *start = (const char *)data + batch * stride * (long long)element_size;
        if (!is_device_range(start, extent * element_size))
            fail("%s: %s of batch %d, %zu bytes at %p, is not inside memory from cudaMalloc",
                 call, name, batch, extent * element_size, (const void *)start);
    }
}

/* cuBLAS's checks of a product's handle, shape and types, in cuBLAS's order; g takes its
 * rounding, alpha and beta (host values, read now). */
inline cublasStatus_t gemm_prepare(const char *call, cublasHandle_t handle, gemm_problem &g,
                                   cublasComputeType_t compute, const float *alpha,
                                   const float *beta)
{
    if (!handle)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    /* "the device associated with a cuBLAS context is assumed to remain unchanged": undefined
     * otherwise, so the emulator stops there */
    if (handle->device != emu_detail::current_device)
        emu_detail::fail("%s: a cuBLAS handle made on device %d used while device %d is current",
                         call, handle->device, emu_detail::current_device);
    if (handle->stream && handle->stream->device != handle->device)
        emu_detail::fail("%s: a cuBLAS handle of device %d set to a stream of device %d", call,
                         handle->device, handle->stream->device);
    auto valid_op = [](cublasOperation_t op) {
        return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C;
    };
    if (!valid_op(g.a.op) || !valid_op(g.b.op) || g.m < 0 || g.n < 0 || g.k < 0 ||
        g.batches < 0 || g.a.ld < std::max(1, g.a.stored_rows()) ||
        g.b.ld < std::max(1, g.b.stored_rows()) || g.ldc < std::max(1, g.m))
        return CUBLAS_STATUS_INVALID_VALUE;
    bool fp32_in = g.a.type == CUDA_R_32F && g.b.type == CUDA_R_32F && g.c_type == CUDA_R_32F;
    bool bf16_in = g.a.type == CUDA_R_16BF && g.b.type == CUDA_R_16BF &&
                   (g.c_type == CUDA_R_32F || g.c_type == CUDA_R_16BF);
    bool exact = compute == CUBLAS_COMPUTE_32F || compute == CUBLAS_COMPUTE_32F_PEDANTIC;
    if (fp32_in && compute == CUBLAS_COMPUTE_32F_FAST_TF32)
        g.rounding = round_tf32;
    else if (fp32_in && compute == CUBLAS_COMPUTE_32F_FAST_16BF)
        g.rounding = round_bf16;
    else if ((fp32_in || bf16_in) && exact)
        g.rounding = fp32_in && compute == CUBLAS_COMPUTE_32F &&
                             handle->math == CUBLAS_TF32_TENSOR_OP_MATH
                         ? round_tf32
                         : round_exact;
    else
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (!alpha || !beta)
        return CUBLAS_STATUS_INVALID_VALUE;
    g.alpha = *alpha, g.beta = *beta;
    return CUBLAS_STATUS_SUCCESS;
}

/* A prepared product's operands must lie in device memory (the emulator stops otherwise). */
inline void gemm_check_operands(const char *call, const gemm_problem &g)
{
    if (g.m == 0 || g.n == 0 || g.batches == 0)
        return;
    if (g.k > 0) {
        check_device_operand(call, "A", g.a.data, g.a.extent(), g.a.element_size(), g.a.stride,
                             g.batches);
        check_device_operand(call, "B", g.b.data, g.b.extent(), g.b.element_size(), g.b.stride,
                             g.batches);
    }
    check_device_operand(call, "C", g.c, (size_t)(g.n - 1) * g.ldc + g.m,
                         g.c_type == CUDA_R_16BF ? 2 : 4, g.stride_c, g.batches);
}

/* A prepared, checked product. */
inline void gemm_compute(const gemm_problem &g)
{
    if (g.m == 0 || g.n == 0 || g.batches == 0)
        return;
    if (g.k == 0)
        gemm_scale(g);
    else
        gemm_run(g);
}

/* cuBLAS's checks, then the product, issued to the handle's stream (see PESC_EMU_DEFER). */
inline cublasStatus_t gemm(const char *call, cublasHandle_t handle, gemm_problem g,
                           cublasComputeType_t compute, const float *alpha, const float *beta)
{
    cublasStatus_t rc = gemm_prepare(call, handle, g, compute, alpha, beta);
    if (rc != CUBLAS_STATUS_SUCCESS)
        return rc;
    gemm_check_operands(call, g);
    issue([g] { gemm_compute(g); });
    return CUBLAS_STATUS_SUCCESS;
}

} /* namespace emu_detail */

/* C (m, n) = alpha op(A) op(B) + beta C, column-major; op(A) is m x k, op(B) k x n. alpha and
 * beta are host floats (compute 32F). */
inline cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                                   cublasOperation_t transb, int m, int n, int k,
                                   const void *alpha, const void *A, cudaDataType_t Atype, int lda,
                                   const void *B, cudaDataType_t Btype, int ldb, const void *beta,
                                   void *C, cudaDataType_t Ctype, int ldc,
                                   cublasComputeType_t computeType, cublasGemmAlgo_t algo)
{
    (void)algo;
    emu_detail::gemm_problem g = {};
    g.m = m, g.n = n, g.k = k, g.batches = 1;
    g.a = {A, Atype, transa, lda, 0, m, k};
    g.b = {B, Btype, transb, ldb, 0, k, n};
    g.c = C, g.c_type = Ctype, g.ldc = ldc, g.stride_c = 0;
    return emu_detail::gemm("cublasGemmEx", handle, g, computeType, (const float *)alpha,
                            (const float *)beta);
}

/* batchCount products, operand i at i times its stride (in elements) from the first. */
inline cublasStatus_t cublasGemmStridedBatchedEx(
    cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
    const void *alpha, const void *A, cudaDataType_t Atype, int lda, long long strideA,
    const void *B, cudaDataType_t Btype, int ldb, long long strideB, const void *beta, void *C,
    cudaDataType_t Ctype, int ldc, long long strideC, int batchCount,
    cublasComputeType_t computeType, cublasGemmAlgo_t algo)
{
    (void)algo;
    emu_detail::gemm_problem g = {};
    g.m = m, g.n = n, g.k = k, g.batches = batchCount;
    g.a = {A, Atype, transa, lda, strideA, m, k};
    g.b = {B, Btype, transb, ldb, strideB, k, n};
    g.c = C, g.c_type = Ctype, g.ldc = ldc, g.stride_c = strideC;
    return emu_detail::gemm("cublasGemmStridedBatchedEx", handle, g, computeType,
                            (const float *)alpha, (const float *)beta);
}

/* The version this emulates: 13.1, with grouped products. */
#define CUBLAS_VERSION 130100

/* The library's version as the running program has it (major 10000 + minor 100 + patch). */
inline cublasStatus_t cublasGetVersion(cublasHandle_t handle, int *version)
{
    if (!handle)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    *version = CUBLAS_VERSION;
    return CUBLAS_STATUS_SUCCESS;
}

/* group_count groups, group i of group_size[i] products with its own shapes, transposes,
 * leading dimensions, alpha and beta; Aarray, Barray, Carray are device arrays of every
 * product's pointers, group after group. */
inline cublasStatus_t cublasGemmGroupedBatchedEx(
    cublasHandle_t handle, const cublasOperation_t transa_array[],
    const cublasOperation_t transb_array[], const int m_array[], const int n_array[],
    const int k_array[], const void *alpha_array, const void *const Aarray[],
    cudaDataType_t Atype, const int lda_array[], const void *const Barray[],
    cudaDataType_t Btype, const int ldb_array[], const void *beta_array, void *const Carray[],
    cudaDataType_t Ctype, const int ldc_array[], int group_count, const int group_size[],
    cublasComputeType_t computeType)
{
    if (!handle)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if (group_count < 0)
        return CUBLAS_STATUS_INVALID_VALUE;
    const char *none = getenv("PESC_EMU_NO_GROUPED");   /* a cuBLAS that groups nothing */
    bool fp32 = Atype == CUDA_R_32F && Btype == CUDA_R_32F && Ctype == CUDA_R_32F &&
                (computeType == CUBLAS_COMPUTE_32F || computeType == CUBLAS_COMPUTE_32F_FAST_TF32);
    bool bf16 = Atype == CUDA_R_16BF && Btype == CUDA_R_16BF && Ctype == CUDA_R_16BF &&
                computeType == CUBLAS_COMPUTE_32F;
    if (!(fp32 || bf16) || (none && strcmp(none, "1") == 0))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    long total = 0;
    for (int i = 0; i < group_count; i++) {
        if (group_size[i] < 0)
            return CUBLAS_STATUS_INVALID_VALUE;
        total += group_size[i];
    }
    const char *call = "cublasGemmGroupedBatchedEx";
    size_t bytes = (size_t)total * sizeof(void *);
    if (total > 0 && (!emu_detail::is_device_range(Aarray, bytes) ||
                      !emu_detail::is_device_range(Barray, bytes) ||
                      !emu_detail::is_device_range(Carray, bytes)))
        emu_detail::fail("%s: the pointer arrays must be in memory from cudaMalloc", call);
    /* Every group's shape checked now, with its alpha and beta; the pointers, which live on
     * the device, read when the products run. */
    const float *alpha = (const float *)alpha_array, *beta = (const float *)beta_array;
    std::vector<emu_detail::gemm_problem> groups(group_count);
    std::vector<int> sizes(group_size, group_size + group_count);
    for (int i = 0; i < group_count; i++) {
        emu_detail::gemm_problem &g = groups[i];
        g.m = m_array[i], g.n = n_array[i], g.k = k_array[i], g.batches = 1;
        g.a = {nullptr, Atype, transa_array[i], lda_array[i], 0, m_array[i], k_array[i]};
        g.b = {nullptr, Btype, transb_array[i], ldb_array[i], 0, k_array[i], n_array[i]};
        g.c = nullptr, g.c_type = Ctype, g.ldc = ldc_array[i], g.stride_c = 0;
        cublasStatus_t rc =
            emu_detail::gemm_prepare(call, handle, g, computeType, alpha + i, beta + i);
        if (rc != CUBLAS_STATUS_SUCCESS)
            return rc;
    }
    emu_detail::issue([=] {
        for (int i = 0, at = 0; i < group_count; i++)
            for (int j = 0; j < sizes[i]; j++, at++) {
                emu_detail::gemm_problem g = groups[i];
                g.a.data = Aarray[at], g.b.data = Barray[at], g.c = Carray[at];
                emu_detail::gemm_check_operands(call, g);
                emu_detail::gemm_compute(g);
            }
    });
    return CUBLAS_STATUS_SUCCESS;
}

#endif /* PESC_CUBLAS_EMU_H */
