/* test_cuda_runtime_emu — the emulated CUDA runtime and cuBLAS (tests/emu/cuda_runtime_emu.h,
 * cublas_emu.h) that the CUDA backend runs on in make check.
 *
 * cuBLAS: both products in every transpose pair, with padded leading dimensions, batches,
 * beta 0 over NaN and beta 1, against a double loop on the same rounded inputs; TF32 and bf16
 * rounding on hand-worked ties; the status of each unsupported or invalid call; an operand
 * outside device memory aborting in a child. Runtime: poisoned allocations and the memory
 * count, copies of each kind, 2-D memset, launch errors and their stickiness, the
 * shared-memory attribute, streams, events and the device's properties; with PESC_EMU_DEFER
 * (in a child), work waiting for the host to wait: copies into page-locked memory, events,
 * pageable copies, a product's alpha, a kernel's arguments, a rewritten upload aborting, and
 * device memory closed to the host.
 * Exit 0 pass, 1 fail. */
#include "cublas_emu.h"
#include "emu_check.h"

/* A launch into a stream, as the backend's CUDA_LAUNCH makes it. */
#define CUDA_LAUNCH_TEST(kernel, stream, ...)                                                     \
    emu_launch_on(stream, dim3(1), dim3(32), 0, emu_bind(kernel, __VA_ARGS__), (const void *)kernel)

/* [-1, 1) */
static float signed_uniform(void) { return (float)(2.0 * uniform() - 1.0); }

static void *device_alloc(size_t bytes)
{
    void *p = nullptr;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
        fprintf(stderr, "cudaMalloc of %zu bytes failed\n", bytes);
        exit(99);
    }
    return p;
}

static float float_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---- cuBLAS against a double loop ------------------------------------------------------------ */
struct gemm_case {
    cublasOperation_t op_a, op_b;
    int m, n, k, pad, batches;
    cudaDataType_t in_type, c_type;
    cublasComputeType_t compute;
    float beta;
};

static const char *op_name(cublasOperation_t op) { return op == CUBLAS_OP_N ? "N" : "T"; }

static float round_input(float x, const gemm_case &t)
{
    if (t.in_type == CUDA_R_16BF || t.compute == CUBLAS_COMPUTE_32F_FAST_16BF)
        return __bfloat162float(__float2bfloat16_rn(x));
    if (t.compute == CUBLAS_COMPUTE_32F_FAST_TF32)
        return emu_detail::round_to_tf32(x);
    return x;
}

/* An operand of `count` elements in the case's input type: the float values (already as that
 * type holds them) for the reference, and their device copy. */
static float *make_operand(const gemm_case &t, size_t count, void **device)
{
    float *host = (float *)malloc(count * sizeof(float));
    size_t size = t.in_type == CUDA_R_16BF ? 2 : 4;
    unsigned char *staged = (unsigned char *)malloc(count * size);
    for (size_t i = 0; i < count; i++) {
        host[i] = signed_uniform();
        if (t.in_type == CUDA_R_16BF) {
            __nv_bfloat16 h = __float2bfloat16_rn(host[i]);
            host[i] = __bfloat162float(h);
            memcpy(staged + 2 * i, &h, 2);
        } else {
            memcpy(staged + 4 * i, &host[i], 4);
        }
    }
    *device = device_alloc(count * size);
    cudaMemcpy(*device, staged, count * size, cudaMemcpyHostToDevice);
    free(staged);
    return host;
}

static float c_value(const void *c, cudaDataType_t type, size_t index)
{
    return type == CUDA_R_16BF ? __bfloat162float(((const __nv_bfloat16 *)c)[index])
                               : ((const float *)c)[index];
}

/* One product on the emulator and in a double loop; returns the worst relative error. */
static double run_gemm_case(cublasHandle_t handle, const gemm_case &t)
{
    int a_rows = t.op_a == CUBLAS_OP_N ? t.m : t.k, a_cols = t.op_a == CUBLAS_OP_N ? t.k : t.m;
    int b_rows = t.op_b == CUBLAS_OP_N ? t.k : t.n, b_cols = t.op_b == CUBLAS_OP_N ? t.n : t.k;
    int lda = a_rows + t.pad, ldb = b_rows + t.pad, ldc = t.m + t.pad;
    long long stride_a = (long long)lda * a_cols + 7, stride_b = (long long)ldb * b_cols + 5;
    long long stride_c = (long long)ldc * t.n + 3;
    void *a_dev, *b_dev;
    float *a = make_operand(t, (size_t)stride_a * t.batches, &a_dev);
    float *b = make_operand(t, (size_t)stride_b * t.batches, &b_dev);

    size_t c_count = (size_t)stride_c * t.batches, c_size = t.c_type == CUDA_R_16BF ? 2 : 4;
    unsigned char *c_before = (unsigned char *)malloc(c_count * c_size);
    unsigned char *c_after = (unsigned char *)malloc(c_count * c_size);
    for (size_t i = 0; i < c_count; i++) {
        float v = t.beta == 0.0f ? NAN : signed_uniform(); /* beta 0: C must not be read */
        if (t.c_type == CUDA_R_16BF) {
            __nv_bfloat16 h = __float2bfloat16_rn(v);
            memcpy(c_before + 2 * i, &h, 2);
        } else {
            memcpy(c_before + 4 * i, &v, 4);
        }
    }
    void *c_dev = device_alloc(c_count * c_size);
    cudaMemcpy(c_dev, c_before, c_count * c_size, cudaMemcpyHostToDevice);

    float alpha = 0.75f, beta = t.beta;
    cublasStatus_t status =
        t.batches == 1
            ? cublasGemmEx(handle, t.op_a, t.op_b, t.m, t.n, t.k, &alpha, a_dev, t.in_type, lda,
                           b_dev, t.in_type, ldb, &beta, c_dev, t.c_type, ldc, t.compute,
                           CUBLAS_GEMM_DEFAULT)
            : cublasGemmStridedBatchedEx(handle, t.op_a, t.op_b, t.m, t.n, t.k, &alpha, a_dev,
                                         t.in_type, lda, stride_a, b_dev, t.in_type, ldb,
                                         stride_b, &beta, c_dev, t.c_type, ldc, stride_c,
                                         t.batches, t.compute, CUBLAS_GEMM_DEFAULT);
    cudaMemcpy(c_after, c_dev, c_count * c_size, cudaMemcpyDeviceToHost);

    double worst = status == CUBLAS_STATUS_SUCCESS ? 0.0 : INFINITY;
    for (int batch = 0; batch < t.batches && worst < INFINITY; batch++) {
        const float *a_batch = a + batch * stride_a, *b_batch = b + batch * stride_b;
        size_t c_batch = (size_t)batch * stride_c;
        for (int j = 0; j < t.n; j++)
            for (int i = 0; i < t.m; i++) {
                double sum = 0.0;
                for (int p = 0; p < t.k; p++) {
                    float x = t.op_a == CUBLAS_OP_N ? a_batch[(size_t)p * lda + i]
                                                    : a_batch[(size_t)i * lda + p];
                    float y = t.op_b == CUBLAS_OP_N ? b_batch[(size_t)j * ldb + p]
                                                    : b_batch[(size_t)p * ldb + j];
                    sum += (double)round_input(x, t) * round_input(y, t);
                }
                size_t index = c_batch + (size_t)j * ldc + i;
                double want = alpha * sum;
                if (t.beta != 0.0f)
                    want += beta * c_value(c_before, t.c_type, index);
                double got = c_value(c_after, t.c_type, index);
                double error = fabs(got - want) / std::max(1.0, fabs(want));
                worst = std::isnan(got) ? INFINITY : std::max(worst, error);
            }
        /* the padding between columns and batches is untouched */
        for (int j = 0; j < t.n && t.pad > 0; j++)
            for (int i = t.m; i < ldc; i++) {
                size_t index = c_batch + (size_t)j * ldc + i;
                if (memcmp(c_before + index * c_size, c_after + index * c_size, c_size))
                    worst = INFINITY;
            }
    }
    free(a), free(b), free(c_before), free(c_after);
    cudaFree(a_dev), cudaFree(b_dev), cudaFree(c_dev);
    return worst;
}

static void test_gemm_against_loop(cublasHandle_t handle)
{
    static const cublasOperation_t ops[] = {CUBLAS_OP_N, CUBLAS_OP_T};
    for (cublasOperation_t op_a : ops)
        for (cublasOperation_t op_b : ops)
            for (float beta : {0.0f, 1.0f}) {
                gemm_case t = {op_a, op_b, 37, 29, 53, 3, 1,
                               CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F, beta};
                double error = run_gemm_case(handle, t);
                verdict(error < 1e-6, "gemm fp32 %s%s 37x29x53 ld+3 beta %g: error %.2g",
                        op_name(op_a), op_name(op_b), beta, error);
                t.batches = 3, t.m = 19, t.n = 23, t.k = 17;
                error = run_gemm_case(handle, t);
                verdict(error < 1e-6, "batched fp32 %s%s 3 x 19x23x17 beta %g: error %.2g",
                        op_name(op_a), op_name(op_b), beta, error);
            }

    static const struct {
        gemm_case t;
        double tolerance;
        const char *what;
    } cases[] = {
        {{CUBLAS_OP_T, CUBLAS_OP_N, 300, 200, 300, 0, 1, CUDA_R_32F, CUDA_R_32F,
          CUBLAS_COMPUTE_32F, 0.0f}, 1e-6, "fp32 TN 300x200x300 (blocks, threads)"},
        {{CUBLAS_OP_N, CUBLAS_OP_T, 45, 33, 70, 1, 1, CUDA_R_32F, CUDA_R_32F,
          CUBLAS_COMPUTE_32F_FAST_TF32, 1.0f}, 1e-6, "fp32 in TF32, NT, beta 1"},
        {{CUBLAS_OP_T, CUBLAS_OP_T, 45, 33, 70, 2, 2, CUDA_R_32F, CUDA_R_32F,
          CUBLAS_COMPUTE_32F_FAST_16BF, 0.0f}, 1e-6, "fp32 in bf16, TT, 2 batches"},
        {{CUBLAS_OP_N, CUBLAS_OP_N, 40, 24, 64, 2, 1, CUDA_R_16BF, CUDA_R_32F,
          CUBLAS_COMPUTE_32F, 1.0f}, 1e-6, "bf16 -> fp32, NN, beta 1"},
        {{CUBLAS_OP_T, CUBLAS_OP_N, 40, 24, 64, 0, 3, CUDA_R_16BF, CUDA_R_16BF,
          CUBLAS_COMPUTE_32F, 0.0f}, 1.0 / 128, "bf16 -> bf16, TN, 3 batches"},
        {{CUBLAS_OP_N, CUBLAS_OP_T, 24, 40, 64, 1, 1, CUDA_R_16BF, CUDA_R_16BF,
          CUBLAS_COMPUTE_32F, 1.0f}, 1.0 / 128, "bf16 -> bf16, NT, beta 1"},
    };
    for (const auto &c : cases) {
        double error = run_gemm_case(handle, c.t);
        verdict(error < c.tolerance, "gemm %s: error %.2g", c.what, error);
    }
}

/* k = 2, m = n = 1: a = [1 + 2^-11, 1 + 3 2^-8], b = [1, 1]. 1 + 2^-11 is a tie at TF32's
 * 2^-10 and rounds to 1; 1 + 3 2^-8 is a tie at bf16's 2^-7 and rounds up to even 1 + 2^-6. */
static void test_rounding(cublasHandle_t handle)
{
    const float a_host[2] = {1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-8f}, b_host[2] = {1.0f, 1.0f};
    float *a = (float *)device_alloc(sizeof a_host), *b = (float *)device_alloc(sizeof b_host);
    float *c = (float *)device_alloc(sizeof(float));
    cudaMemcpy(a, a_host, sizeof a_host, cudaMemcpyHostToDevice);
    cudaMemcpy(b, b_host, sizeof b_host, cudaMemcpyHostToDevice);
    const float one = 1.0f, zero = 0.0f;
    static const struct {
        cublasComputeType_t compute;
        cublasMath_t math;
        float want;
        const char *what;
    } cases[] = {
        {CUBLAS_COMPUTE_32F, CUBLAS_PEDANTIC_MATH, 2.0f + 0x1p-11f + 3 * 0x1p-8f, "32F pedantic"},
        {CUBLAS_COMPUTE_32F, CUBLAS_DEFAULT_MATH, 2.0f + 0x1p-11f + 3 * 0x1p-8f, "32F default"},
        {CUBLAS_COMPUTE_32F, CUBLAS_TF32_TENSOR_OP_MATH, 2.0f + 3 * 0x1p-8f,
         "32F with TF32 tensor-op math"},
        {CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_DEFAULT_MATH, 2.0f + 3 * 0x1p-8f, "FAST_TF32"},
        {CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_DEFAULT_MATH, 2.0f + 0x1p-6f, "FAST_16BF"},
    };
    for (const auto &t : cases) {
        float got = NAN;
        cublasSetMathMode(handle, t.math);
        cublasStatus_t status =
            cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 2, &one, a, CUDA_R_32F, 1, b,
                         CUDA_R_32F, 2, &zero, c, CUDA_R_32F, 1, t.compute, CUBLAS_GEMM_DEFAULT);
        cudaMemcpy(&got, c, sizeof got, cudaMemcpyDeviceToHost);
        verdict(status == CUBLAS_STATUS_SUCCESS && got == t.want, "rounding %s: %.9g (want %.9g)",
                t.what, got, t.want);
    }
    cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH);

    static const struct {
        uint32_t in, want;
    } tf32[] = {
        {0x3f801000, 0x3f800000}, /* a tie rounds down to even */
        {0x3f803000, 0x3f804000}, /* a tie rounds up to even */
        {0x3f801001, 0x3f802000}, /* above a tie rounds up */
        {0x7f7fffff, 0x7f800000}, /* FLT_MAX overflows to infinity */
        {0xff800000, 0xff800000}, /* -infinity stays */
    };
    bool tf32_ok = true;
    for (const auto &t : tf32) {
        float r = emu_detail::round_to_tf32(float_from_bits(t.in));
        uint32_t bits;
        memcpy(&bits, &r, sizeof bits);
        tf32_ok &= bits == t.want;
    }
    verdict(tf32_ok && std::isnan(emu_detail::round_to_tf32(NAN)),
            "TF32 rounding: ties to even, overflow, infinity and NaN");
    cudaFree(a), cudaFree(b), cudaFree(c);
}

/* k = 0 writes beta C (zeros over NaN for beta 0); m = 0 or no batches touches nothing. */
static void test_gemm_edges(cublasHandle_t handle)
{
    float *c = (float *)device_alloc(6 * sizeof(float)); /* 0xFF bytes: NaN */
    const float one = 1.0f, zero = 0.0f, two = 2.0f;
    float got[6];
    cublasStatus_t status = cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, 2, 3, 0, &one, nullptr,
                                         CUDA_R_32F, 2, nullptr, CUDA_R_32F, 1, &zero, c,
                                         CUDA_R_32F, 2, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    cudaMemcpy(got, c, sizeof got, cudaMemcpyDeviceToHost);
    bool zeros = true;
    for (float v : got)
        zeros &= v == 0.0f;
    verdict(status == CUBLAS_STATUS_SUCCESS && zeros, "k = 0, beta 0: C becomes zeros over NaN");

    const float values[6] = {1, 2, 3, 4, 5, 6};
    cudaMemcpy(c, values, sizeof values, cudaMemcpyHostToDevice);
    status = cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, 2, 3, 0, &one, nullptr, CUDA_R_32F, 1,
                          nullptr, CUDA_R_32F, 1, &two, c, CUDA_R_32F, 2, CUBLAS_COMPUTE_32F,
                          CUBLAS_GEMM_DEFAULT);
    cudaMemcpy(got, c, sizeof got, cudaMemcpyDeviceToHost);
    verdict(status == CUBLAS_STATUS_SUCCESS && got[0] == 2 && got[5] == 12,
            "k = 0, beta 2: C doubles");

    status = cublasGemmStridedBatchedEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, 2, 3, 4, &one, nullptr,
                                        CUDA_R_32F, 2, 8, nullptr, CUDA_R_32F, 4, 12, &zero,
                                        nullptr, CUDA_R_32F, 2, 6, 0, CUBLAS_COMPUTE_32F,
                                        CUBLAS_GEMM_DEFAULT);
    verdict(status == CUBLAS_STATUS_SUCCESS, "no batches: success, nothing read");
    cudaFree(c);
}

static void test_gemm_statuses(cublasHandle_t handle)
{
    float *buffer = (float *)device_alloc(4096 * sizeof(float));
    const float one = 1.0f, zero = 0.0f;
    /* m = n = k = 8 unless a case says otherwise */
    struct call {
        cublasHandle_t handle;
        cublasOperation_t op_a;
        int m, k, lda, ldb, ldc, batches;
        cudaDataType_t a_type, b_type, c_type;
        cublasComputeType_t compute;
        const float *alpha;
        cublasStatus_t want;
        const char *what;
    };
    const call calls[] = {
        {handle, CUBLAS_OP_N, 8, 8, 8, 8, 8, 1, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F,
         CUBLAS_COMPUTE_32F, &one, CUBLAS_STATUS_SUCCESS, "a valid call"},
        {nullptr, CUBLAS_OP_N, 8, 8, 8, 8, 8, 1, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F,
         CUBLAS_COMPUTE_32F, &one, CUBLAS_STATUS_NOT_INITIALIZED, "no handle"},
        {handle, CUBLAS_OP_N, -1, 8, 8, 8, 8, 1, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F,
         CUBLAS_COMPUTE_32F, &one, CUBLAS_STATUS_INVALID_VALUE, "m < 0"},
        {handle, CUBLAS_OP_N, 8, -2, 8, 8, 8, 1, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F,
         CUBLAS_COMPUTE_32F, &one, CUBLAS_STATUS_INVALID_VALUE, "k < 0"},
        {handle, CUBLAS_OP_N, 8, 4, 7, 8, 8, 1, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F,
         CUBLAS_COMPUTE_32F, &one, CUBLAS_STATUS_INVALID_VALUE, "lda < m for op N"},
        {handle, CUBLAS_OP_T, 8, 4, 3, 8, 8, 1, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F,
         CUBLAS_COMPUTE_32F, &one, CUBLAS_STATUS_INVALID_VALUE, "lda < k for op T"},
        {handle, CUBLAS_OP_T, 8, 4, 4, 8, 8, 1, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F,
         CUBLAS_COMPUTE_32F, &one, CUBLAS_STATUS_SUCCESS, "lda = k for op T"},
        {handle, CUBLAS_OP_N, 8, 8, 8, 7, 8, 1, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F,
         CUBLAS_COMPUTE_32F, &one, CUBLAS_STATUS_INVALID_VALUE, "ldb < k"},
        {handle, CUBLAS_OP_N, 8, 8, 8, 8, 7, 1, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F,
         CUBLAS_COMPUTE_32F, &one, CUBLAS_STATUS_INVALID_VALUE, "ldc < m"},
        {handle, CUBLAS_OP_N, 8, 8, 8, 8, 8, -1, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F,
         CUBLAS_COMPUTE_32F, &one, CUBLAS_STATUS_INVALID_VALUE, "batchCount < 0"},
        {handle, CUBLAS_OP_N, 8, 8, 8, 8, 8, 1, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F,
         CUBLAS_COMPUTE_32F, nullptr, CUBLAS_STATUS_INVALID_VALUE, "no alpha"},
        {handle, CUBLAS_OP_N, 8, 8, 8, 8, 8, 1, CUDA_R_32F, CUDA_R_16BF, CUDA_R_32F,
         CUBLAS_COMPUTE_32F, &one, CUBLAS_STATUS_NOT_SUPPORTED, "fp32 A with bf16 B"},
        {handle, CUBLAS_OP_N, 8, 8, 8, 8, 8, 1, CUDA_R_32F, CUDA_R_32F, CUDA_R_16BF,
         CUBLAS_COMPUTE_32F, &one, CUBLAS_STATUS_NOT_SUPPORTED, "fp32 inputs to a bf16 C"},
        {handle, CUBLAS_OP_N, 8, 8, 8, 8, 8, 1, CUDA_R_16BF, CUDA_R_16BF, CUDA_R_32F,
         CUBLAS_COMPUTE_32F_FAST_TF32, &one, CUBLAS_STATUS_NOT_SUPPORTED, "bf16 in FAST_TF32"},
        {handle, CUBLAS_OP_N, 8, 8, 8, 8, 8, 1, CUDA_R_16F, CUDA_R_16F, CUDA_R_32F,
         CUBLAS_COMPUTE_32F, &one, CUBLAS_STATUS_NOT_SUPPORTED, "fp16 inputs"},
        {handle, CUBLAS_OP_N, 8, 8, 8, 8, 8, 1, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F,
         CUBLAS_COMPUTE_64F, &one, CUBLAS_STATUS_NOT_SUPPORTED, "compute 64F"},
    };
    for (const call &t : calls) {
        cublasStatus_t status = cublasGemmStridedBatchedEx(
            t.handle, t.op_a, CUBLAS_OP_N, t.m, 8, t.k, t.alpha, buffer, t.a_type, t.lda, 0,
            buffer + 1024, t.b_type, t.ldb, 0, &zero, buffer + 2048, t.c_type, t.ldc, 0,
            t.batches, t.compute, CUBLAS_GEMM_DEFAULT);
        verdict(status == t.want, "status for %s: %s", t.what, cublasGetStatusName(status));
    }
    cudaFree(buffer);
}

/* ---- operands outside device memory abort ---------------------------------------------------- */
static void gemm_on_host_memory(void)
{
    static float host[64];
    float *c = (float *)device_alloc(64 * sizeof(float));
    cublasHandle_t handle;
    const float one = 1.0f, zero = 0.0f;
    cublasCreate(&handle);
    cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, &one, host, CUDA_R_32F, 8, c,
                 CUDA_R_32F, 8, &zero, c, CUDA_R_32F, 8, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

static void gemm_past_the_end(void)
{
    float *a = (float *)device_alloc(64 * sizeof(float));
    cublasHandle_t handle;
    const float one = 1.0f, zero = 0.0f;
    cublasCreate(&handle);
    cublasGemmStridedBatchedEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, &one, a, CUDA_R_32F, 8,
                               0, a, CUDA_R_32F, 8, 0, &zero, a, CUDA_R_32F, 8, 1, 2,
                               CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

/* A kernel that writes one float past, or before, a 100-float cudaMalloc block. */
static void write_at(float *x, long i)
{
    if (threadIdx.x == 0)
        x[i] = 1.0f;
}
static void kernel_past_the_end(void)
{
    float *x = (float *)device_alloc(100 * sizeof(float));
    emu_launch_checked(dim3(1), dim3(32), 0, [&] { write_at(x, 100); }, (const void *)write_at);
}
static void kernel_before_the_start(void)
{
    float *x = (float *)device_alloc(100 * sizeof(float));
    emu_launch_checked(dim3(1), dim3(32), 0, [&] { write_at(x, -1); }, (const void *)write_at);
}

/* ---- runtime: memory ------------------------------------------------------------------------- */
static void test_memory(void)
{
    size_t free0 = 0, total = 0, free1 = 0;
    cudaMemGetInfo(&free0, &total);
    float *p = (float *)device_alloc(1000 * sizeof(float));
    cudaMemGetInfo(&free1, &total);
    bool poisoned = true;
    for (int i = 0; i < 1000; i++)
        poisoned &= std::isnan(p[i]);
    verdict(poisoned && (uintptr_t)p % 256 == 0, "cudaMalloc: 256-byte aligned, NaN throughout");
    verdict(total == (size_t)16 << 30 && free0 - free1 == 4000,
            "cudaMemGetInfo: 16 GiB total, free falls by what was allocated (%zu)", free0 - free1);

    void *huge = nullptr;
    cudaError_t rc = cudaMalloc(&huge, (size_t)17 << 30);
    cudaError_t last = cudaGetLastError(), after = cudaGetLastError();
    verdict(rc == cudaErrorMemoryAllocation && !huge && last == rc && after == cudaSuccess,
            "cudaMalloc of 17 GiB: %s, left for cudaGetLastError once", cudaGetErrorString(rc));

    float host[1000], back[1000];
    for (int i = 0; i < 1000; i++)
        host[i] = (float)i;
    float *q = (float *)device_alloc(1000 * sizeof(float));
    bool copies = cudaMemcpyAsync(p, host, sizeof host, cudaMemcpyHostToDevice, 0) == cudaSuccess &&
                  cudaMemcpy(q, p, sizeof host, cudaMemcpyDeviceToDevice) == cudaSuccess &&
                  cudaMemcpy(back, q, sizeof back, cudaMemcpyDeviceToHost) == cudaSuccess &&
                  !memcmp(back, host, sizeof host);
    memset(back, 0, sizeof back);
    copies = copies && cudaMemcpy(back, host, sizeof host, cudaMemcpyHostToHost) == cudaSuccess &&
             cudaMemcpy(q + 500, host, 400, cudaMemcpyDefault) == cudaSuccess &&
             !memcmp(back, host, sizeof host) && q[599] == 99.0f;
    verdict(copies, "cudaMemcpy and cudaMemcpyAsync of every kind");

    bool refused = cudaMemcpy(host, back, 4, cudaMemcpyHostToDevice) == cudaErrorInvalidValue &&
                   cudaMemcpy(q + 999, host, 8, cudaMemcpyHostToDevice) == cudaErrorInvalidValue &&
                   cudaMemcpy(back, host, 4, cudaMemcpyDeviceToHost) == cudaErrorInvalidValue &&
                   cudaMemcpy(q, p, 4, (cudaMemcpyKind)7) == cudaErrorInvalidValue &&
                   cudaMemset(q + 1, 0, 4000) == cudaErrorInvalidValue &&
                   cudaFree(host) == cudaErrorInvalidValue;
    verdict(refused && cudaGetLastError() == cudaErrorInvalidValue,
            "host memory or past the end as device memory: invalid argument");

    /* 2-D: 4 rows of 12 bytes, 40 bytes apart */
    unsigned char *bytes = (unsigned char *)device_alloc(200);
    cudaMemsetAsync(bytes, 0x11, 200);
    rc = cudaMemset2DAsync(bytes, 40, 0x1ab, 12, 4);
    bool pattern = rc == cudaSuccess;
    for (int i = 0; i < 200; i++) {
        bool in_row = i < 160 && i % 40 < 12;
        pattern &= bytes[i] == (in_row ? 0xab : 0x11);
    }
    verdict(pattern, "cudaMemset2DAsync sets the rows' width only, the value's low byte");
    verdict(cudaMemset2DAsync(bytes, 40, 0, 12, 6) == cudaErrorInvalidValue &&
                cudaMemset2DAsync(bytes, 8, 0, 12, 2) == cudaErrorInvalidValue,
            "cudaMemset2DAsync past the block or with width > pitch: invalid argument");
    cudaGetLastError();

    cudaFree(p), cudaFree(q), cudaFree(bytes);
    cudaMemGetInfo(&free1, &total);
    verdict(free1 == free0 && cudaFree(nullptr) == cudaSuccess,
            "cudaFree gives the memory back; cudaFree(NULL) is fine");
}

/* ---- runtime: launches ----------------------------------------------------------------------- */
static __global__ void count_kernel(std::atomic<int> *runs) { ++*runs; }
static __global__ void other_kernel(std::atomic<int> *runs) { ++*runs; }

template <int N> static __global__ void templated_kernel(float *) {}

static void test_launches(void)
{
    std::atomic<int> runs(0);
    auto body = [&] { count_kernel(&runs); };
    const void *kernel = (const void *)count_kernel, *other = (const void *)other_kernel;

    cudaError_t ok = emu_launch_checked(dim3(2, 3), dim3(32, 2), 1024, body, kernel);
    verdict(ok == cudaSuccess && runs == 2 * 3 * 64 && cudaGetLastError() == cudaSuccess,
            "a valid launch runs every thread (%d) and leaves no error", runs.load());

    runs = 0;
    cudaError_t big_block = emu_launch_checked(dim3(1), dim3(1025), 0, body, kernel);
    cudaError_t after = emu_launch_checked(dim3(1), dim3(32), 0, body, kernel);
    cudaError_t first = cudaGetLastError(), second = cudaGetLastError();
    verdict(big_block == cudaErrorInvalidConfiguration && after == cudaSuccess && runs == 32 &&
                first == cudaErrorInvalidConfiguration && second == cudaSuccess,
            "1025 threads: refused, not run; the error outlasts a good launch until read once");

    runs = 0;
    bool refused =
        emu_launch_checked(dim3(0), dim3(32), 0, body, kernel) == cudaErrorInvalidConfiguration &&
        emu_launch_checked(dim3(1, 70000), dim3(32), 0, body, kernel) ==
            cudaErrorInvalidConfiguration &&
        emu_launch_checked(dim3(1), dim3(1, 1, 65), 0, body, kernel) ==
            cudaErrorInvalidConfiguration &&
        emu_launch_checked(dim3(1), dim3(32), 48 * 1024 + 1, body, kernel) ==
            cudaErrorInvalidValue;
    verdict(refused && runs == 0 && cudaGetLastError() == cudaErrorInvalidValue,
            "empty grid, grid.y 70000, block.z 65, 48 KiB + 1 of shared: refused, none run");

    bool raised =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024) ==
            cudaSuccess &&
        emu_launch_checked(dim3(1), dim3(32), 100 * 1024, body, kernel) == cudaSuccess &&
        emu_launch_checked(dim3(1), dim3(32), 100 * 1024 + 1, body, kernel) ==
            cudaErrorInvalidValue &&
        emu_launch_checked(dim3(1), dim3(32), 100 * 1024, body, other) == cudaErrorInvalidValue &&
        cudaFuncSetAttribute(other_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             227 * 1024) == cudaSuccess &&
        emu_launch_checked(dim3(1), dim3(32), 227 * 1024, body, other) == cudaSuccess &&
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             227 * 1024 + 1) == cudaErrorInvalidValue;
    verdict(raised && runs == 64,
            "cudaFuncSetAttribute raises one kernel's shared limit, up to 227 KiB and no further");
    cudaGetLastError();

    emu_set_launch_error(cudaErrorLaunchFailure);
    verdict(cudaPeekAtLastError() == cudaErrorLaunchFailure &&
                cudaGetLastError() == cudaErrorLaunchFailure && cudaGetLastError() == cudaSuccess,
            "emu_set_launch_error: %s", cudaGetErrorString(cudaErrorLaunchFailure));

    cudaFuncAttributes attributes;
    verdict(cudaFuncGetAttributes(&attributes, templated_kernel<4>) == cudaSuccess &&
                attributes.binaryVersion == 90 && attributes.ptxVersion == 90,
            "cudaFuncGetAttributes of a kernel template: sm_90");
}

/* ---- runtime: device, streams, events -------------------------------------------------------- */
static void test_device_streams_events(void)
{
    int count = 0, device = -1;
    cudaDeviceProp prop;
    bool one = cudaGetDeviceCount(&count) == cudaSuccess && count == 1 &&
               cudaSetDevice(0) == cudaSuccess && cudaSetDevice(1) == cudaErrorInvalidDevice &&
               cudaGetDevice(&device) == cudaSuccess && device == 0 &&
               cudaGetDeviceProperties(&prop, 0) == cudaSuccess &&
               cudaGetDeviceProperties(&prop, 1) == cudaErrorInvalidDevice;
    verdict(one && !strcmp(prop.name, "CUDA emulator (CPU)") && prop.major == 9 &&
                prop.minor == 0 && prop.sharedMemPerBlockOptin == 232448 &&
                prop.totalGlobalMem == (size_t)16 << 30 && prop.multiProcessorCount > 0,
            "one device: %s, sm_%d%d", prop.name, prop.major, prop.minor);
    cudaGetLastError();

    cudaStream_t stream = nullptr;
    bool streams = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess &&
                   stream && cudaStreamSynchronize(stream) == cudaSuccess &&
                   cudaStreamSynchronize(0) == cudaSuccess &&
                   cudaStreamDestroy(stream) == cudaSuccess &&
                   cudaStreamSynchronize(stream) == cudaErrorInvalidResourceHandle &&
                   cudaStreamDestroy(stream) == cudaErrorInvalidResourceHandle;
    verdict(streams && cudaGetLastError() == cudaErrorInvalidResourceHandle,
            "streams: create, synchronize, destroy; a destroyed one is an invalid handle");

    cudaEvent_t start = nullptr, stop = nullptr;
    float ms = -1.0f, early = -1.0f;
    bool events = cudaEventCreate(&start) == cudaSuccess && cudaEventCreate(&stop) == cudaSuccess &&
                  cudaEventElapsedTime(&early, start, stop) == cudaErrorInvalidResourceHandle &&
                  cudaEventRecord(start) == cudaSuccess;
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    events = events && cudaEventRecord(stop, 0) == cudaSuccess &&
             cudaEventSynchronize(stop) == cudaSuccess &&
             cudaEventElapsedTime(&ms, start, stop) == cudaSuccess &&
             cudaEventDestroy(start) == cudaSuccess && cudaEventDestroy(stop) == cudaSuccess;
    verdict(events && ms >= 29.0f && ms < 2000.0f,
            "events: unrecorded refused; 30 ms of sleep measures %.1f ms", ms);
    cudaGetLastError();
    verdict(cudaDeviceSynchronize() == cudaSuccess && strcmp(cudaGetErrorString(cudaSuccess),
                                                             "no error") == 0,
            "cudaDeviceSynchronize; cudaGetErrorString");
}

/* PESC_EMU_DEVICES=2: a stream belongs to the device current when it was made, a launch into it
 * from another device is refused, and every host thread starts on device 0. */
static void test_two_devices(void)
{
    setenv("PESC_EMU_DEVICES", "2", 1);
    int count = 0, other_thread = -1;
    cudaStream_t stream = nullptr;
    bool ok = cudaGetDeviceCount(&count) == cudaSuccess && count == 2 &&
              cudaSetDevice(1) == cudaSuccess && cudaStreamCreate(&stream) == cudaSuccess &&
              emu_launch_on(stream, dim3(1), dim3(32), 0, [] {}, nullptr) == cudaSuccess;
    std::thread([&] { cudaGetDevice(&other_thread); }).join();
    bool refused = cudaSetDevice(0) == cudaSuccess &&
                   emu_launch_on(stream, dim3(1), dim3(32), 0, [] {}, nullptr) ==
                       cudaErrorInvalidResourceHandle &&
                   cudaGetLastError() == cudaErrorInvalidResourceHandle;
    verdict(ok && refused && other_thread == 0 && cudaSetDevice(2) == cudaErrorInvalidDevice,
            "two devices: a launch into device 1's stream from device 0 refused; another "
            "thread starts on device %d", other_thread);
    cudaGetLastError();
    cudaStreamDestroy(stream);
    unsetenv("PESC_EMU_DEVICES");
}

/* ---- PESC_EMU_DEFER: work waits until the host waits for it -------------------------------- */
static void set_to(float *x, float value)
{
    if (threadIdx.x == 0)
        x[0] = value;
}

static void launch_set(cudaStream_t stream, float *x, float value)
{
    CUDA_LAUNCH_TEST(set_to, stream, x, value);
}

/* Rewrites page-locked memory that a pending copy has yet to read. */
static void rewrite_pending_upload(void)
{
    float *pinned = nullptr, *d = (float *)device_alloc(sizeof(float));
    cudaMallocHost((void **)&pinned, sizeof(float));
    pinned[0] = 1.0f;
    cudaMemcpyAsync(d, pinned, sizeof(float), cudaMemcpyHostToDevice, 0);
    pinned[0] = 2.0f;
    cudaStreamSynchronize(0);
}

/* Reads device memory on the host, which a GPU faults on. */
static volatile float host_read;
static void host_reads_device(void)
{
    float *d = (float *)device_alloc(4 * sizeof(float));
    cudaMemset(d, 0, 4 * sizeof(float));
    cudaDeviceSynchronize();
    host_read = d[2];
}

static void test_deferred(void)
{
    cudaStream_t stream = nullptr;
    cudaStreamCreate(&stream);
    float *a = (float *)device_alloc(sizeof(float)), *b = (float *)device_alloc(sizeof(float));
    float *pinned = nullptr;
    cudaMallocHost((void **)&pinned, 2 * sizeof(float));

    /* a kernel and a copy into page-locked memory land when the stream is waited for; the
     * kernel has the argument it was launched with */
    float value = 1.0f;
    launch_set(stream, a, value);
    value = 5.0f;
    cudaMemcpyAsync(pinned, a, sizeof(float), cudaMemcpyDeviceToHost, stream);
    float early = pinned[0];
    cudaStreamSynchronize(stream);
    verdict(early != early && pinned[0] == 1.0f,
            "deferred: a copy into page-locked memory reads %g before the stream is waited for, "
            "%g (the launch's argument) after", early, pinned[0]);

    /* an event waits for the work before it, not after */
    cudaEvent_t start = nullptr, mark = nullptr;
    cudaEventCreate(&start);
    cudaEventCreate(&mark);
    float ms = 0.0f;
    cudaEventRecord(start, stream);
    launch_set(stream, a, 2.0f);
    cudaMemcpyAsync(pinned, a, sizeof(float), cudaMemcpyDeviceToHost, stream);
    cudaEventRecord(mark, stream);
    cudaError_t not_ready = cudaEventElapsedTime(&ms, start, mark);
    launch_set(stream, b, 3.0f);
    cudaMemcpyAsync(pinned + 1, b, sizeof(float), cudaMemcpyDeviceToHost, stream);
    cudaEventSynchronize(mark);
    float first = pinned[0], second = pinned[1];
    cudaStreamSynchronize(stream);
    verdict(not_ready == cudaErrorNotReady && first == 2.0f && second != second &&
                pinned[1] == 3.0f && cudaEventElapsedTime(&ms, start, mark) == cudaSuccess,
            "deferred: elapsed time of pending events not ready; an event waits for the work "
            "before it (%g) and not after (%g, then %g)", first, second, pinned[1]);
    cudaGetLastError();

    /* a copy from pageable memory takes the bytes at the call; one into pageable memory
     * returns done */
    float host = 4.0f, back = 0.0f;
    cudaMemcpyAsync(a, &host, sizeof(float), cudaMemcpyHostToDevice, stream);
    host = 6.0f;
    cudaMemcpyAsync(&back, a, sizeof(float), cudaMemcpyDeviceToHost, stream);
    verdict(back == 4.0f, "deferred: pageable memory copied at the call (4: %g), and back "
                          "before the call returns", back);

    /* a product reads alpha at the call and its operands when it runs */
    cublasHandle_t handle = nullptr;
    cublasCreate(&handle);
    cublasSetStream(handle, stream);
    float alpha = 2.0f, zero = 0.0f;
    launch_set(stream, a, 3.0f);
    launch_set(stream, b, 7.0f);
    cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &alpha, a, CUDA_R_32F, 1, b,
                 CUDA_R_32F, 1, &zero, a, CUDA_R_32F, 1, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    alpha = 100.0f;
    launch_set(stream, b, 0.0f);   /* after the product: it must not see this */
    cudaMemcpy(&back, a, sizeof(float), cudaMemcpyDeviceToHost);
    verdict(back == 42.0f, "deferred: a product runs in issue order with the call's alpha (42: "
                           "%g)", back);
    cublasDestroy(handle);

    expect_abort("deferred: page-locked memory rewritten before its copy ran",
                 rewrite_pending_upload, "changed between cudaMemcpyAsync from it");
    expect_abort("deferred: the host reading device memory", host_reads_device,
                 "the host touched device memory at");
    float *open = (float *)device_alloc(sizeof(float));
    launch_set(stream, open, 9.0f);
    float *d = nullptr;
    cudaStreamSynchronize(stream);
    cudaMalloc((void **)&d, sizeof(float));   /* a block made while the others are closed */
    launch_set(stream, d, 8.0f);
    float got[2] = {0.0f, 0.0f};
    cudaMemcpy(got, open, sizeof(float), cudaMemcpyDeviceToHost);
    cudaMemcpy(got + 1, d, sizeof(float), cudaMemcpyDeviceToHost);
    verdict(got[0] == 9.0f && got[1] == 8.0f,
            "deferred: device memory open to kernels and copies, old blocks and new (%g, %g)",
            got[0], got[1]);
    cudaFree(open);
    cudaFree(d);
    cudaEventDestroy(start);
    cudaEventDestroy(mark);
    cudaFreeHost(pinned);
    cudaFree(a);
    cudaFree(b);
    cudaStreamDestroy(stream);
}

/* The deferred tests in a child that sets PESC_EMU_DEFER before its first call; its failures
 * count here. */
static void run_deferred(void)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("PESC_EMU_DEFER", "1", 1);
        test_deferred();
        fflush(stdout);
        _exit(failures ? 1 : 0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        failures++;
        printf("FAIL the deferred tests' child: status %d\n", status);
    }
}

int main(void)
{
    auto start = std::chrono::steady_clock::now();
    run_deferred();
    test_memory();
    test_launches();
    test_device_streams_events();
    test_two_devices();

    cublasHandle_t handle = nullptr;
    cudaStream_t stream = nullptr;
    cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
    verdict(cublasCreate(&handle) == CUBLAS_STATUS_SUCCESS &&
                cublasSetStream(handle, stream) == CUBLAS_STATUS_SUCCESS &&
                cublasSetMathMode(handle, CUBLAS_PEDANTIC_MATH) == CUBLAS_STATUS_SUCCESS,
            "cublasCreate, cublasSetStream, cublasSetMathMode");
    test_gemm_against_loop(handle);
    test_rounding(handle);
    test_gemm_edges(handle);
    test_gemm_statuses(handle);
    expect_abort("cublasGemmEx with A in host memory", gemm_on_host_memory,
                 "A of batch 0, 256 bytes at");
    expect_abort("a second batch past the end of C", gemm_past_the_end,
                 "C of batch 1, 256 bytes at");
    expect_abort("a kernel writing past a cudaMalloc block", kernel_past_the_end,
                 "a kernel: something wrote up to 4 bytes past the end of a 400-byte cudaMalloc");
    expect_abort("a kernel writing before a cudaMalloc block", kernel_before_the_start,
                 "a kernel: something wrote up to 4 bytes before the start of a 400-byte");
    cublasDestroy(handle);
    cudaStreamDestroy(stream);

    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    printf("test_cuda_runtime_emu: %d failures in %.2f s\n", failures, seconds);
    return failures ? 1 : 0;
}
