// cuda_backend — the CUDA backend's table: device memory, the one stream, the sticky error,
// and the dense products through cuBLAS (cuda_gemm). The other ops live in cuda_ops.cu,
// cuda_attention.cu and cuda_moe.cu.
//
// Host synchronisation happens only where the interface hands data to the host: download
// (the per-slice losses, the adapters' norms), download_wait (a layer's routing statistics
// and group sizes, whose copy the model starts before it queues the frozen FFN: the GPU runs
// that while the host waits), vector_sumsq (the clipping norm), synchronize and backend_check
// (the end of a backward): layers + 4 waits a training step, which tests/gpu/emu.sh counts.
// Uploads from pageable memory are staged by the driver and return without waiting for the
// device.
#include "config.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sys/mman.h>

#include "cuda/cuda_common.cuh"
#include "cuda/cuda_convert.cuh"

extern "C" {
#include "cuda/cuda.h"
}

// ---- errors ---------------------------------------------------------------------------------

static void record_failure(cuda_context *c, const char *call, const char *file, int line,
                           const char *what)
{
    if (c->failed)
        return;
    c->failed = 1;
    snprintf(c->error, sizeof c->error, "CUDA backend: %s failed at %s:%d: %s", call, file, line,
             what);
}

bool cuda_check_rc(cuda_context *c, cudaError_t rc, const char *call, const char *file, int line)
{
    if (rc == cudaSuccess)
        return true;
    record_failure(c, call, file, line, cudaGetErrorString(rc));
    return false;
}

bool cublas_check_rc(cuda_context *c, cublasStatus_t rc, const char *call, const char *file,
                     int line)
{
    if (rc == CUBLAS_STATUS_SUCCESS)
        return true;
    record_failure(c, call, file, line, cublasGetStatusString(rc));
    return false;
}

void cuda_settle_zero(cuda_context *c)
{
    float *x = c->zero_at;
    c->zero_at = NULL;
    if (!x || c->failed)
        return;
    if (__nv_bfloat16 *x16 = cuda_compact(c, x, c->zero_n))   // bf16 zeros: zero bytes too
        CUDA_CHECK(c, cudaMemsetAsync(x16, 0, c->zero_n * sizeof *x16, c->stream));
    else
        CUDA_CHECK(c, cudaMemsetAsync(x, 0, c->zero_n * sizeof *x, c->stream));
}

static int cuda_check(void *ctx, pesc_error *err)
{
    cuda_context *c = (cuda_context *)ctx;
    if (!c->failed && cuda_device_current(c)) {
        cuda_settle_zero(c);
        CUDA_CHECK(c, cudaStreamSynchronize(c->stream));   // host sync: faults of the step
    }
    if (!c->failed)
        return 0;
    return pesc_fail(err, "%s", c->error);
}

bool cuda_device_current(cuda_context *c)
{
    int current = -1;
    return CUDA_CHECK(c, cudaGetDevice(&current)) &&
           (current == c->device || CUDA_CHECK(c, cudaSetDevice(c->device)));
}

// ---- memory ---------------------------------------------------------------------------------

static void *cuda_alloc(void *ctx, size_t bytes)
{
    cuda_context *c = (cuda_context *)ctx;
    void *p = NULL;
    if (!cuda_device_current(c))
        return NULL;
    c->epoch++;   // new memory, perhaps where a copy's source was
    cudaError_t rc = cudaMalloc(&p, bytes ? bytes : 256);
    if (rc != cudaSuccess) {
        cudaGetLastError();   // out of memory is not sticky: backend_alloc reports it
        return NULL;
    }
    return p;
}

// ---- the frozen region -------------------------------------------------------------------

// Whether [p, p + n) lies inside [base, base + base_n) (floats; base NULL: nothing does).
static bool range_inside(const float *p, size_t n, const float *base, size_t base_n)
{
    uintptr_t a = (uintptr_t)p, b = (uintptr_t)base;
    return base && a >= b && a + n * sizeof(float) <= b + base_n * sizeof(float);
}

// Whether [p, p + bytes) overlaps [base, base + base_n floats) (base NULL: nothing does).
static bool range_overlaps(const void *p, size_t bytes, const float *base, size_t base_n)
{
    uintptr_t a = (uintptr_t)p, b = (uintptr_t)base;
    return base && a < b + base_n * sizeof(float) && b < a + bytes;
}

// A region with bf16 values kept (the frozen weights', the trainables'): none any more.
static void forget_region(cuda_context *c, const float **p, size_t *n, void **values)
{
    if (*values)
        CUDA_CHECK(c, cudaFree(*values));   // waits for products still reading them
    *p = NULL;
    *n = 0;
    *values = NULL;
}

static void forget_frozen(cuda_context *c)
{
    forget_region(c, &c->frozen, &c->frozen_n, &c->frozen16);
}

// An upload or a copy is about to write [p, p + bytes): over the frozen region it breaks the
// promise (the mirror goes, products convert again).
static void written_over(cuda_context *c, const void *p, size_t bytes)
{
    if (range_overlaps(p, bytes, c->frozen, c->frozen_n))
        forget_frozen(c);
}

// An upload or a copy has written [p, p + bytes) (queued): among the trainables, their bf16
// values there are made anew behind it, so that adapters loaded for generation or a resumed
// run are read as bf16 without a conversion in every op; a write of less than whole floats
// inside the region makes them stale until the next update.
static void trainables_written(cuda_context *c, const void *p, size_t bytes)
{
    if (!range_overlaps(p, bytes, c->train, c->train_n))
        return;
    const float *f = (const float *)p;
    size_t n = bytes / sizeof(float);
    if (bytes % sizeof(float) || (uintptr_t)p % sizeof(float) ||
        !range_inside(f, n, c->train, c->train_n))
        c->train_valid = 0;
    else if (c->train_valid)
        cuda_to_bf16(c, (__nv_bfloat16 *)c->train16 + (f - c->train), f, n);
}

// The bf16 values of [p, p + n) in new memory, NULL where there is no room (products then
// convert as before) or after a failure.
static void *bf16_mirror(cuda_context *c, const float *p, size_t n)
{
    void *mirror = NULL;
    if (!p || n == 0 || c->failed || c->math != CUDA_MATH_BF16)
        return NULL;
    if (cudaMalloc(&mirror, n * sizeof(__nv_bfloat16)) != cudaSuccess) {
        cudaGetLastError();
        return NULL;
    }
    if (!cuda_to_bf16(c, (__nv_bfloat16 *)mirror, p, n)) {
        cudaFree(mirror);
        return NULL;
    }
    return mirror;
}

static void cuda_freeze(void *ctx, const float *p, size_t n)
{
    cuda_context *c = (cuda_context *)ctx;
    if (!cuda_device_current(c))
        return;
    cuda_settle_zero(c);
    forget_frozen(c);
    if ((c->frozen16 = bf16_mirror(c, p, n))) {
        c->frozen = p;
        c->frozen_n = n;
    }
}

// ---- the trainables (backend_trainables) ------------------------------------------------------

static void forget_trainables(cuda_context *c)
{
    forget_region(c, &c->train, &c->train_n, &c->train16);
    c->train_valid = 0;
}

// PESC_CUDA_REUSE=0 keeps none: every op converts the weights, for comparison.
static void cuda_trainables(void *ctx, const float *p, size_t n)
{
    cuda_context *c = (cuda_context *)ctx;
    if (!cuda_device_current(c))
        return;
    cuda_settle_zero(c);
    forget_trainables(c);
    if (!c->reuse || !(c->train16 = bf16_mirror(c, p, n)))
        return;
    c->train = p;
    c->train_n = n;
    c->train_valid = 1;
}

const __nv_bfloat16 *cuda_train_values(const cuda_context *c, const float *p, size_t n)
{
    if (!c->train_valid || !range_inside(p, n, c->train, c->train_n))
        return NULL;
    return (const __nv_bfloat16 *)c->train16 + (p - c->train);
}

__nv_bfloat16 *cuda_compact(const cuda_context *c, const void *p, size_t n)
{
    for (const auto &r : c->packed)
        if (range_inside((const float *)p, n, r.range, r.n))
            return (__nv_bfloat16 *)r.values + ((const float *)p - r.range);
    return NULL;
}

// The mirror of [p, p + n) when it lies inside the frozen region (or its bf16 values, inside
// memory kept in bf16 alone: frozen weights, compact activations), else NULL.
static const __nv_bfloat16 *frozen_mirror(const cuda_context *c, const float *p, size_t n)
{
    if (const __nv_bfloat16 *packed = cuda_compact(c, p, n))
        return packed;
    if (!range_inside(p, n, c->frozen, c->frozen_n))
        return NULL;
    return (const __nv_bfloat16 *)c->frozen16 + (p - c->frozen);
}

// A weight's bf16 values, kept: the frozen mirror (or the weights kept in bf16 alone), or the
// trainables' as the last update wrote them; else NULL.
static const __nv_bfloat16 *weight_values(const cuda_context *c, const float *p, size_t n)
{
    const __nv_bfloat16 *values = frozen_mirror(c, p, n);
    return values ? values : cuda_train_values(c, p, n);
}

// ---- the gradients' zeroing, pending (backend_gradients) ------------------------------------

static void cuda_gradients(void *ctx, const float *p, size_t n)
{
    cuda_context *c = (cuda_context *)ctx;
    if (!cuda_device_current(c))
        return;
    cuda_settle_grads(c, NULL, 0);
    c->grads = p;
    c->grads_n = p ? n : 0;
}

static int by_offset(const void *a, const void *b)
{
    size_t x = ((const cuda_context::grads_range *)a)->at;
    size_t y = ((const cuda_context::grads_range *)b)->at;
    return x < y ? -1 : x > y;
}

// p NULL: whatever it overlaps. The gaps between the ranges written since the zeroing, each a
// memset (none where every weight gradient was written and tensors lie end to end).
void cuda_settle_grads(cuda_context *c, const void *p, size_t bytes)
{
    if (!c->grads_zero || (p && !range_overlaps(p, bytes, c->grads, c->grads_n)))
        return;
    c->grads_zero = 0;
    qsort(c->grads_written, (size_t)c->grads_count, sizeof *c->grads_written, by_offset);
    size_t at = 0;
    for (int i = 0; i <= c->grads_count && !c->failed; i++) {
        size_t end = i < c->grads_count ? c->grads_written[i].at : c->grads_n;
        if (end > at)
            CUDA_CHECK(c, cudaMemsetAsync((float *)c->grads + at, 0, (end - at) * sizeof(float),
                                          c->stream));
        if (i < c->grads_count)
            at = c->grads_written[i].at + c->grads_written[i].n;
    }
    c->grads_count = 0;
}

bool cuda_grads_first_write(cuda_context *c, const float *p, size_t n)
{
    if (!c->grads_zero || !range_overlaps(p, n * sizeof(float), c->grads, c->grads_n))
        return false;
    bool fresh = range_inside(p, n, c->grads, c->grads_n);
    size_t at = (size_t)(p - c->grads);
    for (int i = 0; fresh && i < c->grads_count; i++)
        fresh = at + n <= c->grads_written[i].at ||
                c->grads_written[i].at + c->grads_written[i].n <= at;
    if (fresh && c->grads_count == c->grads_cap) {
        int cap = c->grads_cap ? 2 * c->grads_cap : 64;
        void *more = realloc(c->grads_written, (size_t)cap * sizeof *c->grads_written);
        fresh = more != NULL;
        if (more) {
            c->grads_written = (cuda_context::grads_range *)more;
            c->grads_cap = cap;
        }
    }
    if (!fresh) {   // written already (accumulation), or no room to record it: add to zeros
        cuda_settle_grads(c, NULL, 0);
        return false;
    }
    c->grads_written[c->grads_count++] = {at, n};
    return true;
}

// ---- memory in bf16 alone (backend_alloc_frozen, backend_alloc_compact) --------------------

// In bf16 math a frozen weight is only ever a bf16 operand, and an activation kept compact is
// written and read as bf16 by every op that may take it, so n floats of them take n bf16 values
// on the device and nothing more. Their fp32 range is reserved on the host (PROT_NONE, no
// memory behind it): a unique address range that no device allocation can take, which the
// model points its tensors into, and which a kernel reading it by mistake faults on. NULL where
// there is no room (or no free entry), or after a failure.
static float *packed_alloc(cuda_context *c, size_t n)
{
    struct cuda_context::packed_region *free_entry = NULL;
    for (auto &r : c->packed)
        if (!r.range && !free_entry)
            free_entry = &r;
    if (!free_entry || c->failed || n == 0 || !cuda_device_current(c))
        return NULL;
    void *values = NULL;
    if (cudaMalloc(&values, n * sizeof(__nv_bfloat16)) != cudaSuccess) {
        cudaGetLastError();   // out of memory is not sticky: the caller decides
        return NULL;
    }
    void *range = mmap(NULL, n * sizeof(float), PROT_NONE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (range == MAP_FAILED) {
        cudaFree(values);
        return NULL;
    }
    c->epoch++;   // new memory, perhaps where a copy's source was
    *free_entry = {(float *)range, n, values};
    return free_entry->range;
}

// NULL where there is no room: the model keeps its fp32 weights.
static float *cuda_alloc_frozen(void *ctx, size_t n)
{
    cuda_context *c = (cuda_context *)ctx;
    return c->math == CUDA_MATH_BF16 ? packed_alloc(c, n) : NULL;
}

// Activations in bf16 alone in bf16 math (the ops that may take them read and write bf16),
// else plain device memory.
size_t cuda_activation_bytes(void *ctx)
{
    return ((cuda_context *)ctx)->math == CUDA_MATH_BF16 ? sizeof(__nv_bfloat16) : sizeof(float);
}

static void *cuda_alloc(void *ctx, size_t bytes);

static float *cuda_alloc_compact(void *ctx, size_t n)
{
    cuda_context *c = (cuda_context *)ctx;
    if (cuda_activation_bytes(c) == sizeof(float))
        return (float *)cuda_alloc(c, n * sizeof(float));
    return packed_alloc(c, n);
}

// Whether [p, p + bytes) starts in memory kept in bf16 alone: then *values is its bf16 place
// and *n its floats. A range that runs past the region, or splits a value, is recorded as a
// failure.
static bool packed_range(cuda_context *c, const void *p, size_t bytes, __nv_bfloat16 **values,
                         size_t *n)
{
    for (const auto &r : c->packed) {
        const char *a = (const char *)p, *base = (const char *)r.range;
        if (!r.range || a < base || a >= base + r.n * sizeof(float))
            continue;
        size_t at = (size_t)(a - base);
        if (at % sizeof(float) || bytes % sizeof(float) || bytes > r.n * sizeof(float) - at) {
            record_failure(c, "a copy of memory kept in bf16", __FILE__, __LINE__,
                           "it runs past the region, or splits a value");
            return false;
        }
        *values = (__nv_bfloat16 *)r.values + at / sizeof(float);
        *n = bytes / sizeof(float);
        return true;
    }
    return false;
}

// Uploads and downloads of packed weights pass through fp32 staging on the device, this many
// floats at a time (4 MiB): the staging stays small beside what packing saves, and a 13B
// model's load takes about 13,000 turns of a copy and a conversion.
#define CUDA_PACKED_CHUNK ((size_t)1 << 20)

static void widen(cuda_context *c, float *out, const __nv_bfloat16 *in, size_t n);

// n packed values from host floats `from` (rounded to bf16), or else to host floats `to`
// (widened, and waited for), a chunk at a time through fp32 staging on the device.
static void packed_transfer(cuda_context *c, __nv_bfloat16 *values, const float *from,
                            float *to, size_t n)
{
    for (size_t at = 0; at < n && !c->failed; at += CUDA_PACKED_CHUNK) {
        size_t m = n - at < CUDA_PACKED_CHUNK ? n - at : CUDA_PACKED_CHUNK;
        // a whole chunk's room from the first: a model's tensors come smallest first, and
        // growing the area with each would wait for the device every time
        float *staging = (float *)cuda_scratch(c, &c->gemm_work, &c->gemm_work_bytes,
                                               CUDA_PACKED_CHUNK * sizeof(float));
        if (!staging)
            return;
        if (from) {
            if (CUDA_CHECK(c, cudaMemcpyAsync(staging, from + at, m * sizeof(float),
                                              cudaMemcpyHostToDevice, c->stream)))
                cuda_to_bf16(c, values + at, staging, m);
        } else {
            widen(c, staging, values + at, m);
            if (CUDA_CHECK(c, cudaMemcpyAsync(to + at, staging, m * sizeof(float),
                                              cudaMemcpyDeviceToHost, c->stream)))
                CUDA_CHECK(c, cudaStreamSynchronize(c->stream));
        }
    }
}

static void cuda_free(void *ctx, void *p)
{
    cuda_context *c = (cuda_context *)ctx;
    if (!cuda_device_current(c))
        return;
    c->epoch++;
    cuda_settle_zero(c);   // before the memory it may lie in goes
    if (p && p == c->frozen)
        forget_frozen(c);
    if (p && p == c->train)
        forget_trainables(c);
    if (p && p == c->grads) {
        c->grads_zero = 0;   // the memory goes: nothing to make
        c->grads_count = 0;
        c->grads = NULL;
        c->grads_n = 0;
    }
    for (auto &r : c->packed)
        if (p && p == r.range) {
            CUDA_CHECK(c, cudaFree(r.values));   // waits for work still using it
            munmap(r.range, r.n * sizeof(float));
            r = {};
            return;
        }
    CUDA_CHECK(c, cudaFree(p));   // waits for work that may still use p
}

// The device's memory as nvidia-smi counts it: used = total - free (this process's allocations,
// its CUDA context, and anything else on the GPU).
static int cuda_memory(void *ctx, backend_memory *out)
{
    size_t free_bytes = 0, total = 0;
    if (!cuda_device_current((cuda_context *)ctx))
        return -1;
    if (cudaMemGetInfo(&free_bytes, &total) != cudaSuccess) {
        cudaGetLastError();
        return -1;
    }
    out->available = free_bytes;
    out->total = total;
    out->used = total - free_bytes;
    return 0;
}

static void cuda_upload(void *ctx, void *dst, const void *src, size_t bytes)
{
    CUDA_OP(ctx);
    __nv_bfloat16 *values;
    size_t n;
    if (packed_range(c, dst, bytes, &values, &n)) {
        packed_transfer(c, values, (const float *)src, NULL, n);
        return;
    }
    if (c->failed)
        return;
    written_over(c, dst, bytes);
    cuda_settle_grads(c, dst, bytes);
    if (CUDA_CHECK(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream)))
        trainables_written(c, dst, bytes);
}

// Host sync: the host reads the data next. After a failure the host gets zeros, which are
// harmless as indices and counts; the failure itself is reported by backend_check.
static void cuda_download(void *ctx, void *dst, const void *src, size_t bytes)
{
    cuda_context *c = (cuda_context *)ctx;
    __nv_bfloat16 *values;
    size_t n;
    bool ready = !c->failed && cuda_device_current(c);
    if (ready) {
        cuda_settle_zero(c);
        cuda_settle_grads(c, src, bytes);
    }
    if (ready && packed_range(c, src, bytes, &values, &n))
        packed_transfer(c, values, NULL, (float *)dst, n);
    else if (ready && !c->failed &&
             CUDA_CHECK(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream)))
        CUDA_CHECK(c, cudaStreamSynchronize(c->stream));
    if (c->failed)
        memset(dst, 0, bytes);
}

static void cuda_download_wait(void *ctx);

// To page-locked staging, so that the copy is queued and the host goes on; collected by
// cuda_download_wait. Memory kept in bf16, or no room for staging: an ordinary download.
static void cuda_download_start(void *ctx, void *dst, const void *src, size_t bytes)
{
    cuda_context *c = (cuda_context *)ctx;
    __nv_bfloat16 *values;
    size_t n;
    cuda_download_wait(c);   // one at a time
    if (c->failed || !cuda_device_current(c) || packed_range(c, src, bytes, &values, &n) ||
        range_overlaps(src, bytes, c->grads, c->grads_n)) {
        cuda_download(c, dst, src, bytes);
        return;
    }
    if (bytes > c->staging_bytes) {
        cudaFreeHost(c->staging);   // nothing pending uses it
        c->staging_bytes = 0;
        if (cudaMallocHost(&c->staging, bytes) != cudaSuccess) {
            cudaGetLastError();   // no page-locked memory to spare: wait now instead
            c->staging = NULL;
            cuda_download(c, dst, src, bytes);
            return;
        }
        c->staging_bytes = bytes;
    }
    cuda_settle_zero(c);
    if (CUDA_CHECK(c, cudaMemcpyAsync(c->staging, src, bytes, cudaMemcpyDeviceToHost,
                                      c->stream)) &&
        CUDA_CHECK(c, cudaEventRecord(c->downloaded, c->stream))) {
        c->pending_dst = dst;
        c->pending_bytes = bytes;
    } else {
        memset(dst, 0, bytes);   // as a failed download gives
    }
}

// Host sync, on the download alone: the work queued after it runs on.
static void cuda_download_wait(void *ctx)
{
    cuda_context *c = (cuda_context *)ctx;
    void *dst = c->pending_dst;
    if (!dst)
        return;
    c->pending_dst = NULL;
    if (!c->failed && cuda_device_current(c) && CUDA_CHECK(c, cudaEventSynchronize(c->downloaded)))
        memcpy(dst, c->staging, c->pending_bytes);
    else
        memset(dst, 0, c->pending_bytes);
}

static void cuda_copy(void *ctx, void *dst, const void *src, size_t bytes)
{
    CUDA_OP(ctx);
    __nv_bfloat16 *to, *from;
    size_t n;
    bool packed_dst = packed_range(c, dst, bytes, &to, &n);
    bool packed_src = packed_range(c, src, bytes, &from, &n);
    if (c->failed)
        return;
    written_over(c, dst, bytes);
    cuda_settle_grads(c, dst, bytes);
    cuda_settle_grads(c, src, bytes);
    if (packed_dst && packed_src)
        CUDA_CHECK(c, cudaMemcpyAsync(to, from, n * sizeof *to, cudaMemcpyDeviceToDevice,
                                      c->stream));
    else if (packed_dst)
        cuda_to_bf16(c, to, (const float *)src, n);
    else if (packed_src)
        widen(c, (float *)dst, from, n);
    else if (dst != src)
        CUDA_CHECK(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream));
    trainables_written(c, dst, bytes);
}

// Writes nothing, so the copies stay (a profile run waits between every two ops).
static void cuda_synchronize(void *ctx)
{
    CUDA_PRODUCT_OP(ctx);
    cuda_settle_zero(c);
    CUDA_CHECK(c, cudaStreamSynchronize(c->stream));
}

void *cuda_scratch(cuda_context *c, void **area, size_t *area_bytes, size_t bytes)
{
    if (bytes <= *area_bytes)
        return *area;
    size_t want = bytes + bytes / 4;
    if (*area) {
        CUDA_CHECK(c, cudaStreamSynchronize(c->stream));   // the old area may be in use
        CUDA_CHECK(c, cudaFree(*area));
        *area = NULL;
        *area_bytes = 0;
    }
    if (!CUDA_CHECK(c, cudaMalloc(area, want)))
        return NULL;
    *area_bytes = want;
    return *area;
}

// What a scratch area holding `held` bytes grows by for a request of `bytes` (cuda_scratch:
// the old area goes first, the new one is a quarter over the request).
static size_t scratch_growth(size_t held, size_t bytes)
{
    return bytes <= held ? 0 : bytes + bytes / 4 - held;
}

// backend_work_bytes: the largest op work (attention's backward, or the adapters' in bf16
// math), and in bf16 math the slots of the operands' bf16 copies, each as large as the largest
// operand at most, and the fp32 values of compact memory a narrow product reads or writes.
static size_t cuda_work_bytes(void *ctx, const backend_step_shape *s)
{
    cuda_context *c = (cuda_context *)ctx;
    size_t op = cuda_attention_work(c, s->batch, s->seq, s->heads, s->kv_heads, s->head_dim);
    if (s->experts > 0) {
        size_t adapters = cuda_adapter_work(c, (size_t)s->batch * s->seq * s->top_k, s->experts,
                                            s->hidden, s->adapter_dim);
        op = op > adapters ? op : adapters;
    }
    size_t work = scratch_growth(c->op_work_bytes, op);
    if (c->math != CUDA_MATH_BF16)
        return work;
    // one copy at the largest operand (a logits slice, where it is the largest), the others at
    // the largest of the rest
    for (int i = 0; i < CUDA_COPIES; i++)
        work += scratch_growth(c->copies[i].bytes,
                               (i == 0 ? s->operand_floats : s->other_operand_floats) *
                                   sizeof(__nv_bfloat16));
    return work + scratch_growth(c->gemm_work_bytes, s->narrow_compact_floats * sizeof(float));
}

static size_t cuda_logit_bytes(void *ctx) { return ((const cuda_context *)ctx)->logit_bytes; }

// backend_adapter_rows's settings: PESC_CUDA_EXPERT_ALIGN and PESC_CUDA_EXPERT_ROOM
static void cuda_adapter_layout(void *ctx, int *align, double *room)
{
    const cuda_context *c = (const cuda_context *)ctx;
    *align = c->expert_align, *room = c->expert_room;
}

bool cuda_shared_limit(cuda_context *c, const void *kernel, size_t bytes)
{
    if (bytes <= 48 * 1024)
        return true;
    if ((int)bytes > c->max_shared) {
        char what[160];
        snprintf(what, sizeof what, "a kernel needs %zu bytes of shared memory, the device "
                 "gives %d (head dimension too large)", bytes, c->max_shared);
        record_failure(c, "attention launch", __FILE__, __LINE__, what);
        return false;
    }
    return CUDA_CHECK(c, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              (int)bytes));
}

// ---- dense products -------------------------------------------------------------------------

bool cuda_to_bf16(cuda_context *c, __nv_bfloat16 *out, const float *in, size_t n)
{
    bool vector4 = ((uintptr_t)in & 15) == 0;
    CUDA_LAUNCH(convert_kernel<__nv_bfloat16>, cuda_blocks(vector4 ? n / 4 + 1 : n, 256), 256, 0,
                c->stream, out, in, n, vector4);
    return CUDA_LAUNCHED(c);
}

__global__ void widen_kernel(float *out, const __nv_bfloat16 *in, size_t n)
{
    GRID_STRIDE(i, n) out[i] = __bfloat162float(in[i]);
}

// out = in (n bf16 values) as floats, exactly.
static void widen(cuda_context *c, float *out, const __nv_bfloat16 *in, size_t n)
{
    CUDA_LAUNCH(widen_kernel, cuda_blocks(n, 256), 256, 0, c->stream, out, in, n);
    CUDA_LAUNCHED(c);
}

// ---- bf16 copies of product operands (bf16 math) ---------------------------------------------
//
// A product in bf16 math reads bf16 operands: an fp32 one is converted first (6 bytes a value
// moved, besides the product's own read). Where the model's next products read the same
// operand (q, k and v one normed input; gate and up another; a weight's input gradient and
// its own gradient the same output gradient), the first conversion serves them all; and the
// ops whose outputs feed products (RMSNorm, and SwiGLU's forward and backward where their
// outputs are not compact) write the copy beside their fp32 output (2 bytes a value), so
// nothing converts it at all. A copy is kept in one of CUDA_COPIES slots, for the current
// epoch only: while nothing but the matmul ops runs (CUDA_PRODUCT_OP), and until a product
// writes over its source. The values are the same a conversion gives (operand_cvt), so the
// products' results do not change.

static bool copy_valid(const cuda_context *c, const operand_copy *k)
{
    return k->src && k->epoch == c->epoch;
}

// The slot to fill next, never `avoid`: one no longer valid with room for `bytes`, else the
// invalid one with the most room, else (all valid) the first.
static int copy_slot(const cuda_context *c, size_t bytes, int avoid)
{
    int best = -1, best_rank = -1;
    for (int i = 0; i < CUDA_COPIES; i++) {
        const operand_copy *k = &c->copies[i];
        int rank = copy_valid(c, k) ? 0 : k->bytes >= bytes ? 2 : 1;
        if (i != avoid && (rank > best_rank ||
                           (rank == best_rank && rank == 1 && k->bytes > c->copies[best].bytes))) {
            best = i;
            best_rank = rank;
        }
    }
    return best;
}

// Room in slot i for n values, recorded as src's copy in this epoch (src NULL: for one
// product alone). NULL on failure (recorded).
static __nv_bfloat16 *claim_copy(cuda_context *c, int i, const float *src, size_t n)
{
    operand_copy *k = &c->copies[i];
    k->src = NULL;   // what it held is going
    void *values = cuda_scratch(c, &k->values, &k->bytes, n * sizeof(__nv_bfloat16));
    if (!values)
        return NULL;
    k->src = src;
    k->n = n;
    k->epoch = c->epoch;
    return (__nv_bfloat16 *)values;
}

__nv_bfloat16 *cuda_keep_copy(cuda_context *c, const float *out, size_t n,
                              const __nv_bfloat16 *avoid)
{
    if (c->math != CUDA_MATH_BF16 || !c->reuse || c->failed || n == 0)
        return NULL;
    int skip = -1;
    for (int i = 0; i < CUDA_COPIES; i++)
        if (avoid && c->copies[i].values == (const void *)avoid)
            skip = i;
    return claim_copy(c, copy_slot(c, n * sizeof(__nv_bfloat16), skip), out, n);
}

void cuda_forget_copies(cuda_context *c, const float *p, size_t n)
{
    if (range_overlaps(p, n * sizeof(float), c->train, c->train_n))
        c->train_valid = 0;
    for (int i = 0; i < CUDA_COPIES; i++) {
        operand_copy *k = &c->copies[i];
        if (range_overlaps(p, n * sizeof(float), k->src, k->n))
            k->src = NULL;
    }
}

// The bf16 values of the fp32 operand [p, p + n) for a product: inside a valid copy (in a
// matmul op), else converted now into a slot other than `avoid` (*slot: which one), kept for
// the products after where a matmul op runs. NULL on failure (recorded).
static const __nv_bfloat16 *operand_bf16(cuda_context *c, const float *p, size_t n, int avoid,
                                         int *slot)
{
    bool keep = c->in_product && c->reuse;
    for (int i = 0; keep && i < CUDA_COPIES; i++) {
        const operand_copy *k = &c->copies[i];
        if (copy_valid(c, k) && range_inside(p, n, k->src, k->n)) {
            *slot = i;
            return (const __nv_bfloat16 *)k->values + (p - k->src);
        }
    }
    int i = copy_slot(c, n * sizeof(__nv_bfloat16), avoid);
    __nv_bfloat16 *values = claim_copy(c, i, keep ? p : NULL, n);
    if (!values || !cuda_to_bf16(c, values, p, n))
        return NULL;
    *slot = i;
    return values;
}

// cuBLAS is column-major: the row-major C = op(A) op(B) is the column-major
// C^T = op(B)^T op(A)^T, so B goes first and the dimensions swap.
void cuda_gemm_math(cuda_context *c, int math, int trans_a, int trans_b, int M, int N, int K,
                    float alpha, const float *A, int lda, const float *B, int ldb, float beta,
                    float *C, int ldc)
{
    if (c->failed || M <= 0 || N <= 0)
        return;
    size_t c_n = (size_t)(M - 1) * ldc + N;   // C's stored extent
    __nv_bfloat16 *c16 = cuda_compact(c, C, c_n);   // C kept in bf16 alone
    size_t value = c16 ? sizeof *c16 : sizeof *C;
    if (K <= 0) {   // an empty sum: C = beta C; only beta 0 and 1 occur
        if (beta == 0.0f)
            CUDA_CHECK(c, cudaMemset2DAsync(c16 ? (void *)c16 : (void *)C, (size_t)ldc * value,
                                            0, (size_t)N * value, (size_t)M, c->stream));
        return;
    }
    cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    // each operand's stored extent: the last row is only as wide as the matrix
    size_t a_rows = trans_a ? K : M, a_cols = trans_a ? M : K;
    size_t b_rows = trans_b ? N : K, b_cols = trans_b ? K : N;
    size_t a_n = (a_rows - 1) * lda + a_cols, b_n = (b_rows - 1) * ldb + b_cols;
    if (math != CUDA_MATH_BF16) {
        // memory kept in bf16 alone, in a product too narrow for bf16 (math_for): operands
        // widened to fp32 first, exactly, and C made in fp32 and rounded back
        const __nv_bfloat16 *a16 = cuda_compact(c, A, a_n), *b16 = cuda_compact(c, B, b_n);
        if (a16 || b16 || c16) {
            auto room = [](size_t n) { return (n * sizeof(float) + 255) & ~(size_t)255; };
            size_t a_bytes = a16 ? room(a_n) : 0, b_bytes = b16 ? room(b_n) : 0;
            char *work = (char *)cuda_scratch(c, &c->gemm_work, &c->gemm_work_bytes,
                                              a_bytes + b_bytes + (c16 ? room(c_n) : 0));
            if (!work)
                return;
            if (a16) {
                widen(c, (float *)work, a16, a_n);
                A = (const float *)work;
            }
            if (b16) {
                widen(c, (float *)(work + a_bytes), b16, b_n);
                B = (const float *)(work + a_bytes);
            }
            if (c16) {
                C = (float *)(work + a_bytes + b_bytes);
                if (beta != 0.0f)
                    widen(c, C, c16, c_n);
            }
        }
        CUBLAS_CHECK(c, cublasGemmEx(c->cublas, op_b, op_a, N, M, K, &alpha, B, CUDA_R_32F, ldb,
                                     A, CUDA_R_32F, lda, &beta, C, CUDA_R_32F, ldc,
                                     cuda_fp32_compute(math), CUBLAS_GEMM_DEFAULT));
        if (c16)
            cuda_to_bf16(c, c16, C, c_n);
        return;
    }
    // bf16 operands, fp32 accumulation and result (bf16 where C is kept in bf16 alone): a
    // weight's bf16 values (the frozen mirror, the trainables', memory kept in bf16 alone),
    // else a bf16 copy of the operand (operand_bf16)
    int a_slot = -1, b_slot;
    const __nv_bfloat16 *a16 = weight_values(c, A, a_n), *b16 = weight_values(c, B, b_n);
    if ((!a16 && !(a16 = operand_bf16(c, A, a_n, -1, &a_slot))) ||
        (!b16 && !(b16 = operand_bf16(c, B, b_n, a_slot, &b_slot))))
        return;
    CUBLAS_CHECK(c, cublasGemmEx(c->cublas, op_b, op_a, N, M, K, &alpha, b16, CUDA_R_16BF, ldb,
                                 a16, CUDA_R_16BF, lda, &beta, c16 ? (void *)c16 : (void *)C,
                                 c16 ? CUDA_R_16BF : CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                                 CUBLAS_GEMM_DEFAULT));
}

void cuda_gemm(cuda_context *c, int trans_a, int trans_b, int M, int N, int K, float alpha,
               const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    cuda_gemm_math(c, c->math, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

// Products with a narrow side (routers: E outputs; LoRA: rank inputs or outputs) run in plain
// fp32: they cost little, the router's top-k choice flips on rounding that bf16 would add, and
// bf16 on LoRA's thin products took its gradients below a 0.999 cosine with the CPU's (H200).
// A narrow side is at most BACKEND_NARROW_SIDE, which the model's memory estimate knows too.
static int math_for(const cuda_context *c, int C, int OC)
{
    return OC <= BACKEND_NARROW_SIDE || C <= BACKEND_NARROW_SIDE ? CUDA_MATH_FP32 : c->math;
}

__global__ void add_bias_kernel(float *out, const float *bias, size_t N, int OC)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < N * OC;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] += bias[i % OC];
}

// One of the model's products (a matmul op): its operands' bf16 copies may come from, and
// stay for, the products beside it; then the copies of what it wrote are stale.
static void model_product(cuda_context *c, int math, int trans_a, int trans_b, int M, int N,
                          int K, const float *A, int lda, const float *B, int ldb, float beta,
                          float *C, int ldc)
{
    c->in_product = 1;
    cuda_gemm_math(c, math, trans_a, trans_b, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
    c->in_product = 0;
    cuda_forget_copies(c, C, (size_t)(M - 1) * ldc + N);
}

extern "C" void cuda_matmul_forward(void *ctx, float *out, const float *inp, const float *weight,
                                    const float *bias, int N, int C, int OC)
{
    CUDA_PRODUCT_OP(ctx);
    cuda_settle_zero(c);
    if (bias && cuda_compact(c, out, (size_t)N * OC))
        return record_failure(c, "matmul_forward", __FILE__, __LINE__,
                              "a bias added to memory kept in bf16 (backend_alloc_compact)");
    if (!cuda_narrow_forward(c, out, inp, weight, N, C, OC))
        model_product(c, math_for(c, C, OC), 0, 1, N, OC, C, inp, C, weight, C, 0.0f, out, OC);
    if (bias) {
        CUDA_LAUNCH(add_bias_kernel, cuda_blocks((size_t)N * OC, 256), 256, 0, c->stream, out, bias,
                    (size_t)N, OC);
        CUDA_LAUNCHED(c);
    }
}

extern "C" void cuda_matmul_backward(void *ctx, float *dinp, float *dweight, float *dbias,
                                     const float *dout, const float *inp, const float *weight,
                                     int N, int C, int OC)
{
    CUDA_PRODUCT_OP(ctx);
    if (dbias && cuda_compact(c, dout, (size_t)N * OC))
        return record_failure(c, "matmul_backward", __FILE__, __LINE__,
                              "a bias gradient from memory kept in bf16 (backend_alloc_compact)");
    int math = math_for(c, C, OC);
    // dinp exactly the deferred zero: its product writes it instead of adding to zeros (dinp
    // is only written here; the other operands cannot lie in it)
    bool onto_zero = dinp && c->zero_at == dinp && c->zero_n == (size_t)N * C;
    if (onto_zero)
        c->zero_at = NULL;
    else
        cuda_settle_zero(c);
    if (dinp && !cuda_narrow_dinp(c, dinp, dout, weight, N, C, OC, !onto_zero))
        model_product(c, math, 0, 0, N, C, OC, dout, OC, weight, C, onto_zero ? 0.0f : 1.0f,
                      dinp, C);
    if (dweight) {   // a gradient's first write (backend_gradients) writes it
        bool first = cuda_grads_first_write(c, dweight, (size_t)OC * C);
        if (!cuda_narrow_dweight(c, dweight, dout, inp, N, C, OC, !first))
            model_product(c, math, 1, 0, OC, C, N, dout, OC, inp, C, first ? 0.0f : 1.0f,
                          dweight, C);
    }
    if (dbias) {
        cuda_settle_grads(c, dbias, (size_t)OC * sizeof(float));
        cuda_column_sum(c, dbias, dout, NULL, NULL, N, OC);
        cuda_forget_copies(c, dbias, (size_t)OC);
    }
}

// ---- column sums in a fixed order: partial sums over row chunks, then the chunks in order ---

__global__ void column_partial_kernel(float *partial, const float *a, const float *b,
                                      const float *row_scale, int N, int C)
{
    int col = blockIdx.x * blockDim.x + threadIdx.x, chunk = blockIdx.y;
    if (col >= C)
        return;
    int lo = (int)((long long)N * chunk / CUDA_COLSUM_CHUNKS);
    int hi = (int)((long long)N * (chunk + 1) / CUDA_COLSUM_CHUNKS);
    float s = 0.0f;
    for (int n = lo; n < hi; n++) {
        float v = a[(size_t)n * C + col];
        s += b ? v * b[(size_t)n * C + col] * row_scale[n] : v;
    }
    partial[(size_t)chunk * C + col] = s;
}

__global__ void chunk_sums_kernel(float *out, const float *partial, size_t n, int chunks,
                                  bool add)
{
    GRID_STRIDE(i, n)
    {
        double s = 0.0;
        for (int chunk = 0; chunk < chunks; chunk++)
            s += partial[(size_t)chunk * n + i];
        out[i] = (add ? out[i] : 0.0f) + (float)s;
    }
}

void cuda_chunk_sums(cuda_context *c, float *out, const float *partial, size_t n, int chunks,
                     bool add)
{
    CUDA_LAUNCH(chunk_sums_kernel, cuda_blocks(n, 256), 256, 0, c->stream, out, partial, n,
                chunks, add);
    CUDA_LAUNCHED(c);
}

void cuda_column_sum(cuda_context *c, float *out, const float *a, const float *b,
                     const float *row_scale, int N, int C)
{
    float *partial = (float *)cuda_op_work(c, (size_t)CUDA_COLSUM_CHUNKS * C * sizeof(float));
    if (!partial)
        return;
    dim3 grid((C + 255) / 256, CUDA_COLSUM_CHUNKS);
    CUDA_LAUNCH(column_partial_kernel, grid, 256, 0, c->stream, partial, a, b, row_scale, N, C);
    if (CUDA_LAUNCHED(c))
        cuda_chunk_sums(c, out, partial, (size_t)C, CUDA_COLSUM_CHUNKS, true);
}

// ---- the parts of an op's time (pesc bench --profile) ----------------------------------------

static void cuda_parts_on(void *ctx, int on)
{
    cuda_context *c = (cuda_context *)ctx;
    if (!cuda_device_current(c))
        return;
    if (on && !c->part_events[0])
        for (int i = 0; i <= CUDA_PARTS; i++)
            if (!CUDA_CHECK(c, cudaEventCreate(&c->part_events[i])))
                return;
    c->parts_on = on && c->part_events[CUDA_PARTS];
    c->parts_n = 0;
}

void cuda_parts_start(cuda_context *c)
{
    c->parts_n = 0;
    if (c->parts_on && !c->failed && CUDA_CHECK(c, cudaEventRecord(c->part_events[0], c->stream)))
        c->part_host[0] = pesc_now();
}

void cuda_part(cuda_context *c, const char *label)
{
    if (!c->parts_on || c->failed || c->parts_n >= CUDA_PARTS)
        return;
    int i = c->parts_n + 1;
    if (!CUDA_CHECK(c, cudaEventRecord(c->part_events[i], c->stream)))
        return;
    c->part_host[i] = pesc_now();
    c->part_labels[i - 1] = label;
    c->parts_n = i;
}

static int cuda_parts_take(void *ctx, backend_part *parts, int max)
{
    cuda_context *c = (cuda_context *)ctx;
    int n = c->parts_n < max ? c->parts_n : max;
    c->parts_n = 0;
    if (n <= 0 || c->failed || !cuda_device_current(c) ||
        !CUDA_CHECK(c, cudaEventSynchronize(c->part_events[n])))
        return 0;
    for (int i = 0; i < n; i++) {
        float ms = 0.0f;
        if (!CUDA_CHECK(c, cudaEventElapsedTime(&ms, c->part_events[i], c->part_events[i + 1])))
            return 0;
        parts[i].label = c->part_labels[i];
        parts[i].device_seconds = ms * 1e-3;
        parts[i].host_seconds = c->part_host[i + 1] - c->part_host[i];
    }
    return n;
}

// ---- the table ------------------------------------------------------------------------------

static void cuda_free_context(void *ctx)
{
    cuda_context *c = (cuda_context *)ctx;
    if (!c)
        return;
    if (cudaSetDevice(c->device) != cudaSuccess)   // the buffers, handle and stream below are its
        cudaGetLastError();
    if (c->stream)
        cudaStreamSynchronize(c->stream);
    cudaFree(c->frozen16);
    cudaFree(c->train16);
    for (auto &r : c->packed)
        if (r.range) {
            cudaFree(r.values);
            munmap(r.range, r.n * sizeof(float));
        }
    cudaFree(c->gemm_work);
    free(c->grads_written);
    cudaFreeHost(c->staging);
    if (c->downloaded)
        cudaEventDestroy(c->downloaded);
    for (int i = 0; i < CUDA_COPIES; i++)
        cudaFree(c->copies[i].values);
    cudaFree(c->op_work);
    cudaFree(c->partials);
    cudaFree(c->narrow_partials);
    for (int i = 0; i <= CUDA_PARTS; i++)
        if (c->part_events[i])
            cudaEventDestroy(c->part_events[i]);
    cudaFree(c->group_ptrs);
    if (c->cublas)
        cublasDestroy(c->cublas);
    if (c->stream)
        cudaStreamDestroy(c->stream);
    free(c);
}

static const char *cuda_device_text(void *ctx) { return ((cuda_context *)ctx)->device_text; }

static const backend_ops cuda_ops = {
    .name = "cuda",
    .free_context = cuda_free_context,
    .device = cuda_device_text,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .upload = cuda_upload,
    .download = cuda_download,
    .synchronize = cuda_synchronize,
    .copy = cuda_copy,
    .embedding_forward = cuda_embedding_forward,
    .matmul_forward = cuda_matmul_forward,
    .rmsnorm_forward = cuda_rmsnorm_forward,
    .rope_forward = cuda_rope_forward,
    .attention_forward = cuda_attention_forward,
    .attention_cached_forward = cuda_attention_cached_forward,
    .attention_step_forward = cuda_attention_step_forward,
    .swiglu_forward = cuda_swiglu_forward,
    .geglu_forward = cuda_geglu_forward,
    .residual_forward = cuda_residual_forward,
    .crossentropy_forward = cuda_crossentropy_forward,
    .argmax_rows = cuda_argmax_rows,
    .moe_route_forward = cuda_moe_route_forward,
    .moe_group = cuda_moe_group,
    .moe_route_backward = cuda_moe_route_backward,
    .moe_adapter_forward = cuda_moe_adapter_forward,
    .moe_adapter_backward = cuda_moe_adapter_backward,
    .embedding_backward = cuda_embedding_backward,
    .matmul_backward = cuda_matmul_backward,
    .rmsnorm_backward = cuda_rmsnorm_backward,
    .rope_backward = cuda_rope_backward,
    .attention_backward = cuda_attention_backward,
    .swiglu_backward = cuda_swiglu_backward,
    .geglu_backward = cuda_geglu_backward,
    .crossentropy_backward = cuda_crossentropy_backward,
    .vector_zero = cuda_vector_zero,
    .vector_axpy = cuda_vector_axpy,
    .vector_scale = cuda_vector_scale,
    .vector_sumsq = cuda_vector_sumsq,
    .vector_sumsq_chunks = cuda_vector_sumsq_chunks,
    .dropout_mask = cuda_dropout_mask,
    .vector_add_uniform = cuda_vector_add_uniform,
    .adamw_update = cuda_adamw_update,
    .freeze = cuda_freeze,
    .trainables = cuda_trainables,
    .gradients = cuda_gradients,
    .memory = cuda_memory,
    .work_bytes = cuda_work_bytes,
    .adapter_layout = cuda_adapter_layout,
    .logit_bytes = cuda_logit_bytes,
    .activation_bytes = cuda_activation_bytes,
    .check = cuda_check,
    .download_start = cuda_download_start,
    .download_wait = cuda_download_wait,
    .alloc_frozen = cuda_alloc_frozen,
    .alloc_compact = cuda_alloc_compact,
    .parts_on = cuda_parts_on,
    .parts_take = cuda_parts_take,
};

static int parse_math(const char *s, int *math, pesc_error *err)
{
    if (!s || !*s || strcmp(s, "bf16") == 0)
        *math = CUDA_MATH_BF16;
    else if (strcmp(s, "tf32") == 0)
        *math = CUDA_MATH_TF32;
    else if (strcmp(s, "fp32") == 0)
        *math = CUDA_MATH_FP32;
    else if (strcmp(s, "fast-bf16") == 0)
        *math = CUDA_MATH_FAST_BF16;
    else
        return pesc_fail(err, "PESC_CUDA_MATH=%s: choose bf16, tf32, fast-bf16 or fp32", s);
    return 0;
}

static int parse_attention(const char *s, int *attention, pesc_error *err)
{
    if (!s || !*s || strcmp(s, "flash") == 0)
        *attention = CUDA_ATTENTION_FLASH;
    else if (strcmp(s, "fused") == 0)
        *attention = CUDA_ATTENTION_FUSED;
    else if (strcmp(s, "gemm") == 0)
        *attention = CUDA_ATTENTION_GEMM;
    else if (strcmp(s, "flash-wmma") == 0)
        *attention = CUDA_ATTENTION_FLASH_WMMA;
    else
        return pesc_fail(err, "PESC_CUDA_ATTENTION=%s: choose flash, fused, gemm or flash-wmma",
                         s);
    return 0;
}

// PESC_CUDA_FLASH_DQ: recompute (the default: the dQ kernel makes S, P and dP again) or
// stored (the dK/dV kernel stores dS for it, up to 1 GiB a layer; cuda_flash_mma.cuh).
static int parse_flash_dq(const char *s, int *stored, pesc_error *err)
{
    *stored = s && strcmp(s, "stored") == 0;
    if (*stored || !s || !*s || strcmp(s, "recompute") == 0)
        return 0;
    return pesc_fail(err, "PESC_CUDA_FLASH_DQ=%s: choose recompute (the default) or stored", s);
}

// PESC_CUDA_ATTENTION_TILE: bytes of one tile of scores on the gemm path (128 MiB). Smaller
// saves device memory at some speed; the tests make it tiny so small shapes cut their tiles
// every way a long sequence does.
static int parse_tile(const char *s, size_t *bytes, pesc_error *err)
{
    *bytes = (size_t)128 << 20;
    if (!s || !*s)
        return 0;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || *end || errno || v < 1 || v > ((unsigned long long)1 << 40) || *s == '-')
        return pesc_fail(err, "PESC_CUDA_ATTENTION_TILE=%s: give a number of bytes from 1 to "
                         "2^40 (default 134217728)", s);
    *bytes = (size_t)v;
    return 0;
}

// PESC_CUDA_GROUPED: 1 (the default, where cuBLAS has grouped products), 0, or all (in bf16
// math the weights' gradients grouped too, as bf16 results then added to the fp32 ones: on an
// H200 a TinyLlama step took 85.9 ms so, against 81.8 with them one product an expert).
static int parse_grouped(const char *s, int *grouped, int *grads, pesc_error *err)
{
#if CUBLAS_VERSION >= 120500
    *grouped = 1;
#else
    *grouped = 0;   // this cuBLAS has no cublasGemmGroupedBatchedEx
#endif
    *grads = 0;
    if (!s || !*s || strcmp(s, "1") == 0)
        return 0;
    if (strcmp(s, "0") == 0) {
        *grouped = 0;
        return 0;
    }
    if (strcmp(s, "all") == 0) {
        *grads = *grouped;
        return 0;
    }
    return pesc_fail(err, "PESC_CUDA_GROUPED=%s: give 1 (grouped adapter products, the "
                     "default), all (the bf16 weight gradients grouped too) or 0 (one product "
                     "an expert)", s);
}

// PESC_CUDA_EXPERTS: cublas (the default: the experts' row products as cuBLAS's grouped call)
// or mma (in bf16 math, cuda_experts_mma.cuh's kernels; opt-in: on an H200 a TinyLlama step
// took 86.6 ms with them, 81.8 with cuBLAS's).
static int parse_experts(const char *s, int *mma, pesc_error *err)
{
    *mma = s && strcmp(s, "mma") == 0;
    if (*mma || !s || !*s || strcmp(s, "cublas") == 0)
        return 0;
    return pesc_fail(err, "PESC_CUDA_EXPERTS=%s: choose cublas or mma", s);
}

// Whether the experts' mma kernels run (PESC_CUDA_EXPERTS=mma asked): in bf16 math, on sm_80
// or later, where the device's mma agrees with flash attention's fragment layout (probed there
// already when attention is flash, else here). Else `why` says what stops them.
static bool experts_mma_here(cuda_context *c, int cc_major, char *why, size_t why_size)
{
    char differs[100] = "";
    bool probed = c->flash_ok && c->attention == CUDA_ATTENTION_FLASH;
    if (c->math != CUDA_MATH_BF16)
        snprintf(why, why_size, "mma kernels in bf16 math only");
    else if (!cuda_flash_available(c, cc_major))
        snprintf(why, why_size, "mma kernels need sm_80");
    else if (probed ? !c->flash_mma : !cuda_flash_mma_probe(c, differs, sizeof differs))
        snprintf(why, why_size, "the device's mma disagreed with the layout%s%s",
                 *differs ? ", " : "", differs);
    else
        return true;
    return false;
}

// PESC_CUDA_EXPERT_ALIGN: the rows each expert's group of adapter rows is padded to a
// multiple of, 1 to 1024 (default 1: none); PESC_CUDA_EXPERT_ROOM: the adapters' row buffers
// as that many times the routed pairs, 1 to 4 (default 1), so that groups padded all alike fit
// more often (moe_rows.h). Both opt-in until a GPU has measured them.
static int parse_expert_rows(const char *align, const char *room, int *a, double *r,
                             pesc_error *err)
{
    char *end = NULL;
    *a = 1, *r = 1.0;
    if (align && *align) {
        errno = 0;
        long v = strtol(align, &end, 10);
        if (*end || errno || v < 1 || v > 1024)
            return pesc_fail(err, "PESC_CUDA_EXPERT_ALIGN=%s: give the rows to pad each "
                             "expert's group to a multiple of, 1 to 1024 (default 1)", align);
        *a = (int)v;
    }
    if (room && *room) {
        errno = 0;
        double v = strtod(room, &end);
        if (*end || errno || !(v >= 1.0 && v <= 4.0))
            return pesc_fail(err, "PESC_CUDA_EXPERT_ROOM=%s: give the adapters' rows as a "
                             "multiple of the routed pairs, 1 to 4 (default 1)", room);
        *r = v;
    }
    return 0;
}

// PESC_CUDA_LOGITS_MIB: the fp32 logits the model makes at a time, 16 to 4096 MiB (default
// 64). At TinyLlama's vocabulary 64 MiB is 524 rows, whose head backward (524 x 2048 outputs,
// K 32000) gives a large GPU few tiles; 256 MiB makes it 2048. Opt-in until a GPU has timed it.
static int parse_logits(const char *s, size_t *bytes, pesc_error *err)
{
    *bytes = (size_t)64 << 20;
    if (!s || !*s)
        return 0;
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*end || errno || v < 16 || v > 4096)
        return pesc_fail(err, "PESC_CUDA_LOGITS_MIB=%s: give the logits made at a time in MiB, "
                         "16 to 4096 (default 64)", s);
    *bytes = (size_t)v << 20;
    return 0;
}

// PESC_CUDA_REUSE: 1 (the default: bf16 math keeps operand copies for the products after)
// or 0 (every product converts its operands).
static int parse_reuse(const char *s, int *reuse, pesc_error *err)
{
    *reuse = !s || !*s || strcmp(s, "1") == 0;
    if (*reuse || strcmp(s, "0") == 0)
        return 0;
    return pesc_fail(err, "PESC_CUDA_REUSE=%s: give 1 (bf16 operand copies kept for the "
                     "products after, the default) or 0 (every product converts its own)", s);
}

// The device is PESC_CUDA_DEVICE (default 0); products in PESC_CUDA_MATH, attention by
// PESC_CUDA_ATTENTION. The defaults, bf16 and flash, were the fastest on an H200 at TinyLlama's
// shape (2 x 2048 tokens: 81.8 ms a step, against 120.2 in TF32 with flash attention and 458.4
// in TF32 with the fused kernels), within bf16's agreement with the CPU (1e-3; TF32's 1e-6).
// Before sm_80, which has no bf16 tensor cores, the default math is TF32 (run there as fp32).
extern "C" int cuda_backend_init(const backend_ops **ops, void **ctx, pesc_error *err)
{
    pesc_error why;
    int count = cuda_device_count(&why);
    if (count == 0)
        return pesc_fail(err, "%s", why.msg);
    const char *dev = getenv("PESC_CUDA_DEVICE");
    char *end = NULL;
    long index = dev && *dev ? strtol(dev, &end, 10) : 0;
    if (dev && *dev && (*end || index < 0 || index >= count))
        return pesc_fail(err, "PESC_CUDA_DEVICE=%s: give a device number from 0 to %d (this "
                         "machine has %d CUDA device%s; see pesc devices)", dev, count - 1,
                         count, count == 1 ? "" : "s");
    cuda_context *c = (cuda_context *)calloc(1, sizeof *c);
    if (!c)
        return pesc_fail(err, "CUDA backend: out of host memory");
    const char *math = getenv("PESC_CUDA_MATH");   // unset: bf16, or TF32 before sm_80 (below)
    if (parse_math(math, &c->math, err) != 0 ||
        parse_attention(getenv("PESC_CUDA_ATTENTION"), &c->attention, err) != 0 ||
        parse_flash_dq(getenv("PESC_CUDA_FLASH_DQ"), &c->flash_ds, err) != 0 ||
        parse_tile(getenv("PESC_CUDA_ATTENTION_TILE"), &c->att_tile_bytes, err) != 0 ||
        parse_grouped(getenv("PESC_CUDA_GROUPED"), &c->grouped, &c->grouped_grads, err) != 0 ||
        parse_reuse(getenv("PESC_CUDA_REUSE"), &c->reuse, err) != 0 ||
        parse_experts(getenv("PESC_CUDA_EXPERTS"), &c->experts_asked, err) != 0 ||
        parse_expert_rows(getenv("PESC_CUDA_EXPERT_ALIGN"), getenv("PESC_CUDA_EXPERT_ROOM"),
                          &c->expert_align, &c->expert_room, err) != 0 ||
        parse_logits(getenv("PESC_CUDA_LOGITS_MIB"), &c->logit_bytes, err) != 0) {
        free(c);
        return -1;
    }
    c->device = (int)index;
    c->grouped16 = c->grouped;
    cudaDeviceProp prop;
    if (CUDA_CHECK(c, cudaSetDevice(c->device)) &&
        CUDA_CHECK(c, cudaGetDeviceProperties(&prop, c->device)) &&
        CUDA_CHECK(c, cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) &&
        CUDA_CHECK(c, cudaEventCreateWithFlags(&c->downloaded, cudaEventDisableTiming)) &&
        CUBLAS_CHECK(c, cublasCreate(&c->cublas)) &&
        CUBLAS_CHECK(c, cublasSetStream(c->cublas, c->stream)) &&
        CUBLAS_CHECK(c, cublasSetMathMode(c->cublas, c->math == CUDA_MATH_FP32
                                                         ? CUBLAS_PEDANTIC_MATH
                                                         : CUBLAS_DEFAULT_MATH)) &&
        CUDA_CHECK(c, cudaMalloc(&c->partials, (CUDA_REDUCE_BLOCKS + 1) * sizeof(double))) &&
        CUDA_CHECK(c, cudaMalloc(&c->narrow_partials, NARROW_PARTIAL_FLOATS * sizeof(float))) &&
        CUDA_CHECK(c, cudaMalloc(&c->group_ptrs, 3 * CUDA_GROUP_MAX * sizeof(void *)))) {
        if ((!math || !*math) && prop.major < 8)   // no bf16 tensor cores: TF32 by default
            c->math = CUDA_MATH_TF32;
        c->max_shared = (int)prop.sharedMemPerBlockOptin;
        c->multiprocessors = prop.multiProcessorCount;
        bool flash = c->attention == CUDA_ATTENTION_FLASH ||
                     c->attention == CUDA_ATTENTION_FLASH_WMMA;
        c->flash_ok = flash && cuda_flash_available(c, prop.major);
        // flash's mma kernels only where this device's products agree with their layout
        char differs[100] = "", disagreed[160];
        c->flash_mma = c->flash_ok && c->attention == CUDA_ATTENTION_FLASH &&
                       cuda_flash_mma_probe(c, differs, sizeof differs);
        snprintf(disagreed, sizeof disagreed, "flash (wmma: the device's mma disagreed with the "
                 "layout, %s)", differs);
        static const char *const math_names[] = {"bf16", "tf32", "fp32", "fast-bf16"};
        const char *attention =
            c->attention == CUDA_ATTENTION_GEMM ? "gemm"
            : c->flash_mma && c->flash_ds ? "flash (mma, dQ from a stored dS up to 1 GiB)"
            : c->flash_mma ? "flash (mma)"
            : c->flash_ok && c->attention == CUDA_ATTENTION_FLASH ? disagreed
            : c->flash_ok ? "flash (wmma)"
            : flash ? "fused (flash needs sm_80)"
                    : "fused";
        char experts_off[200] = "";   // why PESC_CUDA_EXPERTS=mma does not apply
        c->experts_mma = c->experts_asked &&
                         experts_mma_here(c, prop.major, experts_off, sizeof experts_off);
        int grouped = cuda_grouped_probe(c);
        // " (adapters grouped in tf32)", " (adapters grouped, mma kernels)", or what stops
        // the mma kernels asked for: " (adapters grouped; cublas: mma kernels need sm_80)"
        // (PESC_CUDA_GROUPED=all adds ", their gradients too")
        char adapters[256] = "";
        bool same = grouped == c->math;
        const char *grads = grouped >= 0 && c->grouped_grads && c->math == CUDA_MATH_BF16
                                ? ", their gradients too"
                                : "";
        // PESC_CUDA_EXPERT_ALIGN and _ROOM add ", rows on 128s", ", room 2x"
        char rows[64] = "", room[24] = "";
        if (c->expert_room > 1.0)
            snprintf(room, sizeof room, ", room %.3gx", c->expert_room);
        if (c->expert_align > 1)
            snprintf(rows, sizeof rows, ", rows on %ds%s", c->expert_align, room);
        else
            snprintf(rows, sizeof rows, "%s", room);
        if (c->experts_mma)
            snprintf(adapters, sizeof adapters, " (adapters grouped, mma kernels%s%s)", grads,
                     rows);
        else if (grouped >= 0 || c->experts_asked || *rows)
            snprintf(adapters, sizeof adapters, " (adapters %s%s%s%s%s%s%s)",
                     grouped >= 0 ? "grouped" : "one product an expert",
                     grouped >= 0 && !same ? " in " : "",
                     grouped >= 0 && !same ? math_names[grouped] : "", grads, rows,
                     c->experts_asked ? "; cublas: " : "", experts_off);
        int version = 0;   // the library loaded, which grouped products depend on
        CUBLAS_CHECK(c, cublasGetVersion(c->cublas, &version));
        snprintf(c->device_text, sizeof c->device_text,
                 "%s (sm_%d%d, %.0f GiB), cuBLAS %d.%d %s products%s, %s attention, fp32 "
                 "tensors%s", prop.name, prop.major, prop.minor,
                 (double)prop.totalGlobalMem / (1024.0 * 1024 * 1024), version / 10000,
                 version / 100 % 100, math_names[c->math], adapters, attention,
                 c->math == CUDA_MATH_BF16
                     ? " (frozen weights, the attention's input, q, k, v and output, the"
                       " FFN's activations and the adapters' rows in bf16)"
                     : "");
    }
    if (c->failed) {
        pesc_fail(err, "%s", c->error);
        cudaGetLastError();
        cuda_free_context(c);
        return -1;
    }
    *ops = &cuda_ops;
    *ctx = c;
    return 0;
}

// What pesc finds when it opens this module (kernels/cuda/cuda_load.c).
extern "C" __attribute__((visibility("default"))) const cuda_module pesc_cuda_module = {
    PACKAGE_VERSION, sizeof(backend_ops), cuda_device_count, cuda_device_query, cuda_gemm_rate,
    cuda_backend_init,
};
