/* cpu_backend — the CPU backend's table: float32 in host memory, ops from cpu_ops.c. */
#include "config.h"

#include <cblas.h>

#include "backend_impl.h"
#include "cpu/cpu_ops.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct cpu_context {
    char device[96];
} cpu_context;

static void cpu_free_context(void *ctx) { free(ctx); }
static const char *cpu_device(void *ctx) { return ((cpu_context *)ctx)->device; }

/* 64-byte alignment keeps rows on cache lines and suits OpenBLAS's vector loads. */
/* Large blocks (the weights, the activations, the optimizer's moments) in transparent huge
 * pages, which the kernel gives only when asked where THP is "madvise" (Debian's default):
 * the first touch of a block faults 2 MiB at a time instead of 4 KiB. On a 2-core VM whose
 * page faults are slow, touching 4.4 GB took 33 s in 4 KiB pages and 6.4 s in huge ones, and
 * `pesc eval` of one record on a TinyLlama-1.1B-shaped model (4.4 GB of fp32 weights) 51 s
 * before and 28 s after, most of the rest the kernel zeroing the pages. The tail is rounded
 * up to a whole huge page. */
#define HUGE_PAGE ((size_t)2 << 20)
#define HUGE_FROM ((size_t)32 << 20)

static void *cpu_alloc(void *ctx, size_t bytes)
{
    (void)ctx;
    void *p = NULL;
    if (bytes >= HUGE_FROM) {
        size_t rounded = (bytes + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
        if (posix_memalign(&p, HUGE_PAGE, rounded) != 0)
            return NULL;
#ifdef MADV_HUGEPAGE
        madvise(p, rounded, MADV_HUGEPAGE);   /* a hint: without THP it changes nothing */
#endif
        return p;
    }
    size_t rounded = (bytes + 63) & ~(size_t)63;
    if (posix_memalign(&p, 64, rounded ? rounded : 64) != 0)
        return NULL;
    return p;
}

static void cpu_free(void *ctx, void *p) { (void)ctx; free(p); }

static void cpu_copy(void *ctx, void *dst, const void *src, size_t bytes)
{
    (void)ctx;
    if (dst != src)
        memcpy(dst, src, bytes);
}

static const backend_ops cpu_ops = {
    .name = "cpu",
    .free_context = cpu_free_context,
    .device = cpu_device,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .copy = cpu_copy,
    .synchronize = NULL,
    .embedding_forward = cpu_embedding_forward,
    .matmul_forward = cpu_matmul_forward,
    .rmsnorm_forward = cpu_rmsnorm_forward,
    .rope_forward = cpu_rope_forward,
    .attention_forward = cpu_attention_forward,
    .attention_cached_forward = cpu_attention_cached_forward,
    .attention_step_forward = cpu_attention_step_forward,
    .swiglu_forward = cpu_swiglu_forward,
    .geglu_forward = cpu_geglu_forward,
    .residual_forward = cpu_residual_forward,
    .crossentropy_forward = cpu_crossentropy_forward,
    .argmax_rows = cpu_argmax_rows,
    .moe_route_forward = cpu_moe_route_forward,
    .moe_group = cpu_moe_group,
    .moe_route_backward = cpu_moe_route_backward,
    .moe_adapter_forward = cpu_moe_adapter_forward,
    .moe_adapter_backward = cpu_moe_adapter_backward,
    .embedding_backward = cpu_embedding_backward,
    .matmul_backward = cpu_matmul_backward,
    .rmsnorm_backward = cpu_rmsnorm_backward,
    .rope_backward = cpu_rope_backward,
    .attention_backward = cpu_attention_backward,
    .swiglu_backward = cpu_swiglu_backward,
    .geglu_backward = cpu_geglu_backward,
    .crossentropy_backward = cpu_crossentropy_backward,
    .vector_zero = cpu_vector_zero,
    .vector_axpy = cpu_vector_axpy,
    .vector_scale = cpu_vector_scale,
    .dropout_mask = cpu_dropout_mask,
    .vector_add_uniform = cpu_vector_add_uniform,
    .vector_sumsq = cpu_vector_sumsq,
    .vector_sumsq_chunks = cpu_vector_sumsq_chunks,
    .adamw_update = cpu_adamw_update,
};

int cpu_backend_init(const backend_ops **ops, void **ctx, pesc_error *err)
{
    (void)err;
    cpu_context *c = xcalloc(1, sizeof *c);
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
#ifdef HAVE_OPENBLAS_SET_NUM_THREADS
    /* the process-wide OpenBLAS pool stays at one thread: cpu_gemm splits products itself */
    openblas_set_num_threads(1);
#endif
    snprintf(c->device, sizeof c->device, "CPU, %d thread%s, OpenBLAS", threads,
             threads == 1 ? "" : "s");
    *ops = &cpu_ops;
    *ctx = c;
    return 0;
}
