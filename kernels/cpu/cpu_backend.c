/* cpu_backend — the CPU backend's table: float32 in host memory, ops from cpu_ops.c. */
#include "backend_impl.h"
#include "cpu/cpu_ops.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct cpu_context {
    char device[96];
} cpu_context;

static void cpu_free_context(void *ctx) { free(ctx); }
static const char *cpu_device(void *ctx) { return ((cpu_context *)ctx)->device; }

/* 64-byte alignment keeps rows on cache lines and suits OpenBLAS's vector loads. */
static void *cpu_alloc(void *ctx, size_t bytes)
{
    (void)ctx;
    void *p = NULL;
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

/* The op table's slots take the context first; the CPU ops need none. */
static void embedding_slot(void *c, float *o, const int32_t *t, const float *w, int N, int C)
{ (void)c; cpu_embedding_forward(o, t, w, N, C); }
static void matmul_slot(void *c, float *o, const float *x, const float *w, const float *bias,
                        int N, int C, int OC)
{ (void)c; cpu_matmul_forward(o, x, w, bias, N, C, OC); }
static void rmsnorm_slot(void *c, float *o, float *r, const float *x, const float *w, int N, int C,
                         float eps)
{ (void)c; cpu_rmsnorm_forward(o, r, x, w, N, C, eps); }
static void rope_slot(void *c, float *o, const float *x, const int32_t *p, const float *f, int N,
                      int H, int D)
{ (void)c; cpu_rope_forward(o, x, p, f, N, H, D); }
static void attention_slot(void *c, float *o, float *l, const float *q, const float *k,
                           const float *v, int B, int T, int Hq, int Hkv, int D, int window)
{ (void)c; cpu_attention_forward(o, l, q, k, v, B, T, Hq, Hkv, D, window); }
static void swiglu_slot(void *c, float *o, const float *g, const float *u, size_t n)
{ (void)c; cpu_swiglu_forward(o, g, u, n); }
static void residual_slot(void *c, float *o, const float *x, const float *y, size_t n)
{ (void)c; cpu_residual_forward(o, x, y, n); }
static void crossentropy_slot(void *c, float *l, const float *x, const int32_t *t, int N, int V)
{ (void)c; cpu_crossentropy_forward(l, x, t, N, V); }

static const backend_ops cpu_ops = {
    .name = "cpu",
    .free_context = cpu_free_context,
    .device = cpu_device,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .synchronize = NULL,
    .embedding_forward = embedding_slot,
    .matmul_forward = matmul_slot,
    .rmsnorm_forward = rmsnorm_slot,
    .rope_forward = rope_slot,
    .attention_forward = attention_slot,
    .swiglu_forward = swiglu_slot,
    .residual_forward = residual_slot,
    .crossentropy_forward = crossentropy_slot,
};

int cpu_backend_init(const backend_ops **ops, void **ctx, pesc_error *err)
{
    (void)err;
    cpu_context *c = xcalloc(1, sizeof *c);
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    snprintf(c->device, sizeof c->device, "CPU, %d thread%s, OpenBLAS", threads,
             threads == 1 ? "" : "s");
    *ops = &cpu_ops;
    *ctx = c;
    return 0;
}
