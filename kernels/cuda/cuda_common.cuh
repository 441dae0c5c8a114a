// cuda_common — what the CUDA backend's .cu files share: the context, the one checking macro,
// launch helpers, and the declarations of every op (cuda_backend.cu puts them in the table).
//
// Errors: no CUDA or cuBLAS call aborts. CUDA_CHECK / CUBLAS_CHECK record the first failure
// (call, file, line, message) in the context and every later op becomes a no-op; the trainer
// reads the failure with backend_check() (or sees it at the next download). Asynchronous
// faults of a kernel surface at the next call that synchronises (download, synchronize,
// backend_check, vector_sumsq).
//
// Precision: every tensor the interface passes is float32 in device memory, but for memory
// kept in bf16 alone in bf16 math (the frozen weights of backend_alloc_frozen, the
// activations of backend_alloc_compact: cuda_compact finds them). Dense products run on the
// tensor cores: bf16 operands with fp32 accumulation and fp32 results (the default from sm_80
// on; bf16 into compact memory; operands are converted inside the op, except those kept in
// bf16, whose values are read as they are), or TF32 (the default before sm_80, which has no
// bf16 tensor cores), or fp32 operands that cuBLAS rounds to bf16 in its own kernels
// (CUBLAS_COMPUTE_32F_FAST_16BF: no conversion pass, no copies), or plain fp32
// (PESC_CUDA_MATH=bf16|tf32|fast-bf16|fp32).
// Products with at most 64 inputs or outputs (the router, both LoRA products) run in fp32.
// In bf16 math the PESC adapters keep their rows (gathered, pre, act and their gradients) in
// bf16, in the first half of the float buffers the model gives them (cuda_moe.cu).
// Everything else (norms, softmaxes, attention, routing, AdamW) computes in fp32, with the
// reductions that decide accuracy in fp32 or double.
#ifndef PESC_CUDA_COMMON_CUH
#define PESC_CUDA_COMMON_CUH

#include <stddef.h>
#include <stdint.h>

#include "cuda/cuda_api.cuh"
#include "cuda/cuda_convert.cuh"

extern "C" {
#include "backend_impl.h"
}

enum cuda_math { CUDA_MATH_BF16, CUDA_MATH_TF32, CUDA_MATH_FP32, CUDA_MATH_FAST_BF16 };
// cuBLAS's compute type for a product of fp32 operands in math m: bf16 and fast-bf16 round the
// operands to bf16 inside cuBLAS, tf32 to tf32, fp32 not at all.
static inline cublasComputeType_t cuda_fp32_compute(int m)
{
    return m == CUDA_MATH_TF32   ? CUBLAS_COMPUTE_32F_FAST_TF32
           : m == CUDA_MATH_FP32 ? CUBLAS_COMPUTE_32F
                                 : CUBLAS_COMPUTE_32F_FAST_16BF;
}
// Training attention (PESC_CUDA_ATTENTION): the fused fp32 kernels, cuBLAS products over tiles
// of scores on the tensor cores, or flash attention on the tensor cores, with mma.sync
// (cuda_flash_mma.cuh) or, asked for or where the device disagrees with its layout, wmma
// (cuda_flash.cuh); cuda_attention.cu says which does what.
enum cuda_attention {
    CUDA_ATTENTION_FUSED,
    CUDA_ATTENTION_GEMM,
    CUDA_ATTENTION_FLASH,
    CUDA_ATTENTION_FLASH_WMMA
};

// Experts a grouped adapter product takes (more run one product each).
#define CUDA_GROUP_MAX 64

// Blocks of the two-stage reductions (sums of squares: at most, as many as its length asks;
// column sums: chunks): fixed by the shape, so every reduction adds in the same order on every
// run (determinism).
#define CUDA_REDUCE_BLOCKS 1024
#define CUDA_COLSUM_CHUNKS 64
// The parts of one op's time that a profile keeps (cuda_part).
#define CUDA_PARTS 16
// The partial sums of a narrow product's weight gradient (cuda_narrow.cu): 4 MiB.
#define NARROW_PARTIAL_FLOATS (1 << 20)
// Regions kept in bf16 alone at once (cuda_context.packed): the model's two (frozen weights,
// activations), and room for a test's own.
#define CUDA_PACKED_MAX 16

// bf16 copies of product operands kept at once (cuda_context.copies): the most one stretch of
// products reads (swiglu's two gradients; in full mode a weight's product and its gradient's).
#define CUDA_COPIES 3

// The bf16 values of an fp32 operand, kept for the products after the one that needed them.
struct operand_copy {
    const float *src;            // NULL: none
    size_t n;                    // floats of src held
    unsigned long long epoch;    // valid while the context's epoch is this one
    void *values;                // bf16, room for `bytes`
    size_t bytes;
};

typedef struct cuda_context {
    int device;
    cudaStream_t stream;         // every op and copy runs in order on this one stream
    cublasHandle_t cublas;
    int math;                    // enum cuda_math, for the dense products
    int attention;               // enum cuda_attention
    int flash_ok;                // the flash kernels run here (sm_80 or later, built for it)
    int flash_mma;               // ... as the mma.sync ones (else wmma)
    int flash_ds;                // PESC_CUDA_FLASH_DQ=stored: the mma backward makes dQ from
                                 // a stored dS (cuda_flash_mma.cuh)
    size_t att_tile_bytes;       // the gemm path's budget for a tile of scores
    int max_shared;              // opt-in dynamic shared memory per block, bytes
    int multiprocessors;         // the experts' mma kernels pick their tile width by it
    char device_text[640];
    int failed;                  // sticky: the first error, kept until the backend is deleted
    char error[480];
    // Scratch that grows on demand. gemm_work holds the packed weights' staging and fp32
    // copies of them for narrow products (bf16 copies of operands are in `copies`); op_work
    // belongs to the op running (inverse permutations, partial sums, attention's deltas) and
    // is never touched by cuda_gemm, so an op may hold it across its products.
    void *gemm_work;
    size_t gemm_work_bytes;
    void *op_work;
    size_t op_work_bytes;
    double *partials;            // (CUDA_REDUCE_BLOCKS + 1) doubles
    float *narrow_partials;      // (NARROW_PARTIAL_FLOATS): cuda_narrow.cu's weight gradients
    // The experts' adapter products as one grouped call (cublasGemmGroupedBatchedEx, cuBLAS
    // 12.5 and later; PESC_CUDA_GROUPED=0 turns it off): its device array of operand pointers,
    // and grouped_off, bit m set once cuBLAS has refused the call in math m (cuda_moe.cu's
    // grouped_math says which math a call tries).
    // In bf16 math the operands are bf16 (cuda_moe.cu's adapters16), grouped while grouped16;
    // the weights' gradients there run one product an expert, in bf16 straight into the fp32
    // gradients, but with grouped_grads (PESC_CUDA_GROUPED=all: grouped in bf16, then added).
    int grouped, grouped_grads;
    void **group_ptrs;           // (3 * CUDA_GROUP_MAX)
    unsigned grouped_off;
    int grouped16;
    // PESC_CUDA_EXPERTS=mma (experts_asked): in bf16 math the experts' row products run on
    // cuda_experts_mma.cuh's kernels instead (experts_mma), where the device has sm_80 and
    // its mma agrees with flash attention's fragment layout.
    int experts_asked, experts_mma;
    // The adapters' rows (moe_rows.h): each expert's group on a multiple of expert_align rows
    // (PESC_CUDA_EXPERT_ALIGN), and expert_room times the pairs' rows for groups all alike
    // (PESC_CUDA_EXPERT_ROOM), whose products are then strided batched calls.
    int expert_align;
    double expert_room;
    // The logits' slices (backend_logit_bytes): PESC_CUDA_LOGITS_MIB, 64 MiB by default.
    size_t logit_bytes;
    // The frozen region (backend_freeze: the base weights in PESC mode) and its bf16 mirror,
    // which every product reading from the region uses instead of converting its operand.
    const float *frozen;         // NULL: none
    size_t frozen_n;             // floats
    void *frozen16;              // (frozen_n) __nv_bfloat16
    // Memory kept in bf16 alone (bf16 math): frozen weights (backend_alloc_frozen) and
    // activations (backend_alloc_compact). Each fp32 address range is reserved on the host,
    // with no memory behind it and never a device address; the ops that may take it find the
    // values with cuda_compact.
    struct packed_region {
        float *range;            // NULL: a free entry
        size_t n;                // floats
        void *values;            // (n) __nv_bfloat16
    } packed[CUDA_PACKED_MAX];
    // The trainables (backend_trainables) and, in bf16 math, their bf16 values: adamw_update
    // over the region writes them with the fp32 ones, and uploads and copies convert what they
    // wrote; anything else writing there that the backend sees (products, ops that say what
    // they write, a partial update) makes them stale until the next update. Products read them
    // instead of converting the weights.
    const float *train;          // NULL: none
    size_t train_n;              // floats
    void *train16;               // (train_n) __nv_bfloat16, NULL: none kept
    int train_valid;
    // bf16 math: the bf16 copies of operands that the model's products (the matmul ops)
    // convert, or that the op before them writes beside its output (cuda_keep_copy), for the
    // products after; they hold while only matmul ops run. Every other op (CUDA_OP) moves the
    // epoch on, and a product forgets the copies its output overlaps. reuse: PESC_CUDA_REUSE.
    operand_copy copies[CUDA_COPIES];
    unsigned long long epoch;
    int in_product;              // a matmul op runs: its products may use and keep copies
    int reuse;
    // The download a host collects later (backend_download_start): its bytes go to page-locked
    // staging, and `downloaded` marks them there; pending_dst NULL: none.
    void *staging;               // cudaMallocHost, staging_bytes
    size_t staging_bytes;
    cudaEvent_t downloaded;
    void *pending_dst;
    size_t pending_bytes;
    // The gradients (backend_gradients) and their zeroing, kept pending: a vector_zero over
    // exactly them is not made; a weight gradient's first writer writes instead of adding
    // (cuda_grads_first_write records where), and anything else touching them makes the rest
    // (cuda_settle_grads).
    const float *grads;          // NULL: none
    size_t grads_n;              // floats
    int grads_zero;              // a zeroing pending
    struct grads_range {
        size_t at, n;            // floats from grads
    } *grads_written;            // (grads_cap), grads_count of them
    int grads_count, grads_cap;
    // A vector_zero not yet made (NULL: none). The model zeroes a gradient and then has a
    // product add into it: that product writes it instead (beta 0), which saves the memset
    // and the product's read of the zeros. Anything else settles it first (cuda_settle_zero):
    // every op but the matmul ops (CUDA_OP), downloads, frees, checks.
    float *zero_at;
    size_t zero_n;               // floats
    // pesc bench --profile's parts of an op (backend_ops.parts_on): while parts_on, an op that
    // marks them (cuda_parts_start, cuda_part) records an event at its start and at each mark,
    // with the host's clock beside it; parts_n marks so far.
    int parts_on, parts_n;
    cudaEvent_t part_events[CUDA_PARTS + 1];   // created when first turned on
    double part_host[CUDA_PARTS + 1];
    const char *part_labels[CUDA_PARTS];
} cuda_context;

bool cuda_check_rc(cuda_context *c, cudaError_t rc, const char *call, const char *file, int line);
bool cublas_check_rc(cuda_context *c, cublasStatus_t rc, const char *call, const char *file,
                     int line);
#define CUDA_CHECK(c, call) cuda_check_rc((c), (call), #call, __FILE__, __LINE__)
#define CUBLAS_CHECK(c, call) cublas_check_rc((c), (call), #call, __FILE__, __LINE__)
// After a kernel launch: configuration errors show at once, faults later (see above).
#define CUDA_LAUNCHED(c) cuda_check_rc((c), cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

// The CUDA runtime's current device belongs to the host thread, and the thread that runs the
// ops (the trainer's) is not the one that made the backend: every entry point makes the
// backend's device current (a query when it already is). False, error recorded, if it cannot.
bool cuda_device_current(cuda_context *c);

// The parts of an op's time, for pesc bench --profile (cuda_context.parts_on; nothing
// otherwise): cuda_parts_start at the op's start, then cuda_part after each part's work is
// queued, labelled (static storage) by what it did.
void cuda_parts_start(cuda_context *c);
void cuda_part(cuda_context *c, const char *label);

// Makes the deferred vector_zero, if any (cuda_context.zero_at).
void cuda_settle_zero(cuda_context *c);

// A weight gradient [p, p + n) about to be added to: true when its zeroing is pending and
// nothing has written there since (recorded now: the caller writes it instead of adding).
// False otherwise, and then the pending zeroing is made if it overlaps [p, p + n).
bool cuda_grads_first_write(cuda_context *c, const float *p, size_t n);
// Makes the pending zeroing of the gradients (what no first write covered) where [p, p +
// bytes) overlaps them.
void cuda_settle_grads(cuda_context *c, const void *p, size_t bytes);

// The start of every op: the context, on its device, and nothing more to do once something
// has failed; a new epoch, so no bf16 operand copy outlives it (the op may write their
// sources), and the deferred zero made. The matmul ops start with CUDA_PRODUCT_OP instead,
// which keeps the epoch and leaves the zero to them.
#define CUDA_PRODUCT_OP(ctx)                                                                     \
    cuda_context *c = (cuda_context *)(ctx);                                                     \
    if (c->failed || !cuda_device_current(c))                                                    \
        return
#define CUDA_OP(ctx)                                                                             \
    CUDA_PRODUCT_OP(ctx);                                                                        \
    c->epoch++;                                                                                  \
    cuda_settle_zero(c)
// The start of an op that writes only the n floats at out (and reads what it reads): as
// CUDA_OP, but only the bf16 copies of what it writes over go; the others stay for the
// products after it.
#define CUDA_OP_WRITING(ctx, out, n)                                                             \
    CUDA_PRODUCT_OP(ctx);                                                                        \
    cuda_settle_zero(c);                                                                         \
    cuda_forget_copies(c, (out), (n))

// [p, p + n) is being written: the bf16 copies of anything there are stale, and so are the
// trainables' bf16 values if it lies among them.
void cuda_forget_copies(cuda_context *c, const float *p, size_t n);

// The bf16 values of [p, p + n) when they lie in memory kept in bf16 alone (frozen weights,
// compact activations: cuda_context.packed), else NULL.
__nv_bfloat16 *cuda_compact(const cuda_context *c, const void *p, size_t n);

// The bf16 values of [p, p + n) when they lie among the trainables' and are current, else NULL.
const __nv_bfloat16 *cuda_train_values(const cuda_context *c, const float *p, size_t n);

// For an op that writes n floats at out, with bf16 math's products next: a bf16 copy for it to
// write beside them (operand_cvt), which those products then read instead of converting out;
// avoid: a copy of the same op's not to reuse. NULL where nothing would read it (other maths,
// PESC_CUDA_REUSE=0), or on failure: then write out alone.
__nv_bfloat16 *cuda_keep_copy(cuda_context *c, const float *out, size_t n,
                              const __nv_bfloat16 *avoid);

// ---- tensors in fp32 or bf16, for the kernels ------------------------------------------------

// The memory-bound kernels move 16 bytes an access where they can: 8 values (two float4 of
// fp32, or one 16-byte word of bf16) from a 16-byte aligned address, p[0..7] <-> v[0..7].
// Widening bf16 is exact (its bits are an fp32's top half), so v holds what p[k] reads as.
__device__ __forceinline__ void load8(const float *p, float v[8])
{
    float4 a = PESC_LOAD_FLOAT4(p), b = PESC_LOAD_FLOAT4(p + 4);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
    v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}

__device__ __forceinline__ void load8(const __nv_bfloat16 *p, float v[8])
{
    uint4 u = PESC_LOAD_16(p);
    unsigned w[4] = {u.x, u.y, u.z, u.w};
    for (int k = 0; k < 4; k++) {
        v[2 * k] = __uint_as_float(w[k] << 16);
        v[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
    }
}

__device__ __forceinline__ void store8(float *p, const float v[8])
{
    PESC_STORE_FLOAT4(p, make_float4(v[0], v[1], v[2], v[3]));
    PESC_STORE_FLOAT4(p + 4, make_float4(v[4], v[5], v[6], v[7]));
}

// as operand_cvt rounds each value
__device__ __forceinline__ void store8(__nv_bfloat16 *p, const float v[8])
{
    unsigned w[4];
    for (int k = 0; k < 4; k++)
        w[k] = (unsigned)__bfloat16_as_ushort(operand_cvt<__nv_bfloat16>(v[2 * k])) |
               (unsigned)__bfloat16_as_ushort(operand_cvt<__nv_bfloat16>(v[2 * k + 1])) << 16;
    PESC_STORE_16(p, make_uint4(w[0], w[1], w[2], w[3]));
}

static inline bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

// A tensor an elementwise op reads: fp32, or bf16 alone (backend_alloc_compact's memory).
struct values_in {
    const float *f;
    const __nv_bfloat16 *h;   // not NULL: the values are these
    __device__ __forceinline__ float operator[](size_t i) const
    {
        return h ? __bfloat162float(h[i]) : f[i];
    }
    // values i .. i + 7, i a multiple of 8, in 16-byte loads (where `aligned`)
    __device__ __forceinline__ void get8(size_t i, float v[8]) const
    {
        if (h)
            load8(h + i, v);
        else
            load8(f + i, v);
    }
    bool aligned() const { return aligned16(f) && aligned16(h); }
    // the values from element off on
    __host__ __device__ __forceinline__ values_in operator+(size_t off) const
    {
        return {f ? f + off : NULL, h ? h + off : NULL};
    }
};

// A tensor an op writes (and may read first): fp32 (f), with a bf16 copy beside it for the
// products next (h too, cuda_keep_copy), or bf16 alone (h only).
struct values_out {
    float *f;
    __nv_bfloat16 *h;
    __device__ __forceinline__ float get(size_t i) const
    {
        return f ? f[i] : __bfloat162float(h[i]);
    }
    __device__ __forceinline__ void put(size_t i, float v) const
    {
        if (f)
            f[i] = v;
        if (h)
            h[i] = operand_cvt<__nv_bfloat16>(v);
    }
    // get and put of values i .. i + 7, as values_in's get8
    __device__ __forceinline__ void get8(size_t i, float v[8]) const
    {
        if (f)
            load8(f + i, v);
        else
            load8(h + i, v);
    }
    __device__ __forceinline__ void put8(size_t i, const float v[8]) const
    {
        if (f)
            store8(f + i, v);
        if (h)
            store8(h + i, v);
    }
    bool aligned() const { return aligned16(f) && aligned16(h); }
};

static inline values_in read_values(const cuda_context *c, const float *p, size_t n)
{
    const __nv_bfloat16 *h = cuda_compact(c, p, n);
    return {h ? NULL : p, h};
}

// out's values for n floats at p; with keep, a bf16 copy beside fp32 ones (not in `avoid`).
static inline values_out write_values(cuda_context *c, float *p, size_t n, bool keep,
                                      const __nv_bfloat16 *avoid = NULL)
{
    if (__nv_bfloat16 *h = cuda_compact(c, p, n))
        return {NULL, h};
    return {p, keep ? cuda_keep_copy(c, p, n, avoid) : NULL};
}

// out = in as bf16 (n floats, operand_cvt), four a load where in is 16-byte aligned; false
// after a failure (recorded).
bool cuda_to_bf16(cuda_context *c, __nv_bfloat16 *out, const float *in, size_t n);

// A device buffer of at least `bytes` from one of the context's scratch areas (NULL, with the
// error recorded, when the device is out of memory). Growing waits for the device.
void *cuda_scratch(cuda_context *c, void **area, size_t *area_bytes, size_t bytes);
static inline void *cuda_op_work(cuda_context *c, size_t bytes)
{
    return cuda_scratch(c, &c->op_work, &c->op_work_bytes, bytes);
}

// Blocks of `threads` covering n elements, capped for grid-stride loops (the emulator runs
// blocks one after another, so there a few blocks do the whole loop).
#ifdef PESC_CUDA_EMU
#define CUDA_MAX_BLOCKS 4u
#else
#define CUDA_MAX_BLOCKS (65535u * 8u)
#endif
static inline unsigned cuda_blocks(size_t n, int threads)
{
    size_t b = (n + (size_t)threads - 1) / (size_t)threads;
    return (unsigned)(b < 1 ? 1 : b > CUDA_MAX_BLOCKS ? CUDA_MAX_BLOCKS : b);
}

// A grid-stride loop of i over [0, n).
#define GRID_STRIDE(i, n)                                                                        \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n);                    \
         i += (size_t)gridDim.x * blockDim.x)

// An elementwise kernel over n values in 16-byte accesses where its tensors are aligned
// (vector8): GRID_STRIDE8 walks the whole 8-value units (u, the values 8u .. 8u + 7; none
// without vector8), GRID_STRIDE_REST the values one at a time after them (all without).
#define GRID_STRIDE8(u, n, vector8) GRID_STRIDE(u, (vector8) ? (n) / 8 : 0)
#define GRID_STRIDE_REST(i, n, vector8)                                                          \
    for (size_t i = ((vector8) ? (n) / 8 * 8 : 0) + blockIdx.x * (size_t)blockDim.x +          \
                    threadIdx.x;                                                                 \
         i < (n); i += (size_t)gridDim.x * blockDim.x)
// Blocks of 256 threads for such a kernel: a unit, or a value, a thread.
static inline unsigned cuda_blocks8(size_t n, bool vector8)
{
    return cuda_blocks(vector8 ? n / 8 + n % 8 : n, 256);
}

// Raises a kernel's dynamic shared-memory limit when it needs more than the default 48 KB;
// false (error recorded) when the device cannot give that much.
bool cuda_shared_limit(cuda_context *c, const void *kernel, size_t bytes);

// Row-major C (M, N) = alpha op(A) op(B) + beta C, as cpu_gemm, in the context's precision
// (cuda_gemm) or a given one (enum cuda_math).
void cuda_gemm_math(cuda_context *c, int math, int trans_a, int trans_b, int M, int N, int K,
                    float alpha, const float *A, int lda, const float *B, int ldb, float beta,
                    float *C, int ldc);
void cuda_gemm(cuda_context *c, int trans_a, int trans_b, int M, int N, int K, float alpha,
               const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);

// out[c] += sum over rows n of a[n, c] (* b[n, c] * scale[n] when b is not NULL): bias and
// norm-weight gradients, in a fixed order.
void cuda_column_sum(cuda_context *c, float *out, const float *a, const float *b,
                     const float *row_scale, int N, int C);
// out[i] = (add ? out[i] : 0) + the chunks' partial[chunk * n + i], in chunk order (in double):
// the second stage of the fixed-order sums above and of cuda_narrow.cu's.
void cuda_chunk_sums(cuda_context *c, float *out, const float *partial, size_t n, int chunks,
                     bool add);

// The products with at most 16 outputs (cuda_narrow.cu), in fp32 arithmetic: false, nothing
// done, where they do not apply (the caller runs cuBLAS). dinp and dweight are added to where
// add, else written.
bool cuda_narrow_forward(cuda_context *c, float *out, const float *inp, const float *weight,
                         int N, int C, int OC);
bool cuda_narrow_dinp(cuda_context *c, float *dinp, const float *dout, const float *weight,
                      int N, int C, int OC, bool add);
bool cuda_narrow_dweight(cuda_context *c, float *dweight, const float *dout, const float *inp,
                         int N, int C, int OC, bool add);

// ---- warp and block reductions (blockDim.x a multiple of 32, at most 1024) ------------------

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Every thread of the block gets the result; `shared` holds 32 floats.
__device__ __forceinline__ float block_sum(float v, float *shared)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0)
        shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float *shared)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0)
        shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : -INFINITY;
    return warp_max(v);
}

// Gemma 2's softcapping of scores and logits: cap tanh(x / cap), or x where cap is 0; and its
// slope at x, from the capped value y: 1 - (y / cap)^2 (1 where cap is 0).
__device__ __forceinline__ float soft_cap(float x, float cap)
{
    return cap > 0.0f ? cap * tanhf(x / cap) : x;
}

__device__ __forceinline__ float soft_cap_slope(float y, float cap)
{
    return cap > 0.0f ? 1.0f - (y / cap) * (y / cap) : 1.0f;
}

// ---- the ops (same names and argument order as the CPU's, with the cuda_ prefix) ----------

extern "C" {
void cuda_embedding_forward(void *ctx, float *out, const int32_t *tokens, const float *table, int N, int C);
void cuda_matmul_forward(void *ctx, float *out, const float *inp, const float *weight, const float *bias, int N, int C, int OC);
void cuda_rmsnorm_forward(void *ctx, float *out, float *rstd, const float *inp, const float *weight, float offset, int N, int C, float eps);
void cuda_rope_forward(void *ctx, float *out, const float *inp, const int32_t *pos, const float *inv_freq, int N, int H, int D, int R, float scale);
void cuda_attention_forward(void *ctx, float *out, float *lse, const float *q, const float *k, const float *v, int B, int T, int Hq, int Hkv, int D, int window, float softcap, const int32_t *seg_start);
void cuda_attention_cached_forward(void *ctx, float *out, const float *q, const float *k_cache, const float *v_cache, int n, int past, int Hq, int Hkv, int D, int window, float softcap);
void cuda_attention_step_forward(void *ctx, float *out, const float *q, const float *k, const float *v, float *k_cache, float *v_cache, const int32_t *slots, const int32_t *past, int n, int slot_rows, int Hq, int Hkv, int D, int window, float softcap);
void cuda_swiglu_forward(void *ctx, float *out, const float *gate, const float *up, size_t n);
void cuda_geglu_forward(void *ctx, float *out, const float *gate, const float *up, size_t n);
void cuda_residual_forward(void *ctx, float *out, const float *x, const float *y, size_t n);
void cuda_crossentropy_forward(void *ctx, float *losses, const float *logits, const int32_t *targets, int N, int V, float softcap);
void cuda_argmax_rows(void *ctx, int32_t *out, const float *x, int rows, int cols);
void cuda_moe_route_forward(void *ctx, int32_t *topk_idx, float *topk_w, float *probs, float *lse, const float *logits, const int32_t *sources, int N, int E, int K);
void cuda_moe_route_backward(void *ctx, float *dlogits, const float *dtopk_w, const int32_t *topk_idx, const float *topk_w, const float *probs, const float *lse, const float *aux_grad, float z_scale, int N, int E, int K);
void cuda_moe_group(void *ctx, int32_t *perm, double *stats, const int32_t *topk_idx, const float *topk_w, const float *probs, const float *lse, const int32_t *sources, int N, int E, int K, int S);
void cuda_moe_adapter_forward(void *ctx, float *y, const float *x, float *gathered, float *pre, float *act, float *scratch, const float *h, float dropout, uint64_t seed, const float *down, const float *up, const int32_t *perm, const int *offsets, const float *topk_w, int N, int K, int E, int C, int R, float scale);
void cuda_moe_adapter_backward(void *ctx, float *dh, float *ddown, float *dup, float *dtopk_w, float *scratch, float *scratch_r, const float *dy, const float *gathered, const float *pre, const float *act, float dropout, uint64_t seed, const float *down, const float *up, const int32_t *perm, const int *offsets, const float *topk_w, int N, int K, int E, int C, int R, float scale);
void cuda_embedding_backward(void *ctx, float *dtable, const float *dout, const int32_t *tokens, int N, int C);
void cuda_matmul_backward(void *ctx, float *dinp, float *dweight, float *dbias, const float *dout, const float *inp, const float *weight, int N, int C, int OC);
void cuda_rmsnorm_backward(void *ctx, float *dinp, float *dweight, const float *dout, const float *inp, const float *weight, float offset, const float *rstd, int N, int C);
void cuda_rope_backward(void *ctx, float *dinp, const float *dout, const int32_t *pos, const float *inv_freq, int N, int H, int D, int R, float scale);
bool cuda_flash_available(cuda_context *c, int cc_major);
bool cuda_flash_mma_probe(cuda_context *c, char *why, size_t why_size);
int cuda_grouped_probe(cuda_context *c);
size_t cuda_adapter_work(const cuda_context *c, size_t slots, int E, int C, int R);
size_t cuda_activation_bytes(void *ctx);
size_t cuda_attention_work(void *ctx, int B, int T, int Hq, int Hkv, int D);
void cuda_attention_backward(void *ctx, float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k, const float *v, const float *out, const float *lse, int B, int T, int Hq, int Hkv, int D, int window, float softcap, const int32_t *seg_start);
void cuda_swiglu_backward(void *ctx, float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n);
void cuda_geglu_backward(void *ctx, float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n);
void cuda_crossentropy_backward(void *ctx, float *dlogits, float *losses, const float *logits, const int32_t *targets, float scale, int N, int V, float softcap);
void cuda_vector_zero(void *ctx, float *x, size_t n);
void cuda_vector_axpy(void *ctx, float *y, const float *x, float alpha, size_t n);
void cuda_vector_scale(void *ctx, float *x, float alpha, size_t n);
double cuda_vector_sumsq(void *ctx, const float *x, size_t n);
void cuda_vector_sumsq_chunks(void *ctx, double *out, const float *x, size_t chunk, int n);
void cuda_dropout_mask(void *ctx, float *mask, size_t n, float p, uint64_t seed);
void cuda_vector_add_uniform(void *ctx, float *x, size_t n, float magnitude, uint64_t seed);
void cuda_adamw_update(void *ctx, float *params, const float *grads, float grad_scale, float *m, float *v, float *delta, size_t n, float lr, float beta1, float beta2, float eps, float weight_decay, int step);
}

#endif
