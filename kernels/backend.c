/* backend — dispatch from the public op names to the chosen backend's table. */
#include "config.h"

#include "backend_impl.h"
#include "moe_rows.h"
#include "cuda/cuda.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- profiling ------------------------------------------------------------------------------ */

struct backend_profile {
    backend_profile_entry *entries;
    int n, cap;
};

void backend_profile_start(pesc_backend *b)
{
    if (!b->profile)
        b->profile = xcalloc(1, sizeof *b->profile);
    b->profile->n = 0;
    if (b->ops->parts_on)
        b->ops->parts_on(b->context, 1);
}

static int slower_first(const void *x, const void *y)
{
    double a = ((const backend_profile_entry *)x)->seconds;
    double c = ((const backend_profile_entry *)y)->seconds;
    return (a < c) - (a > c);
}

int backend_profile_stop(pesc_backend *b, backend_profile_entry **entries)
{
    struct backend_profile *p = b->profile;
    *entries = NULL;
    if (!p)
        return -1;
    if (b->ops->parts_on)
        b->ops->parts_on(b->context, 0);
    b->profile = NULL;
    int n = p->n, n_ops = 0, at = 0;
    /* the ops, slowest first, each followed by its parts in the order they were first seen */
    backend_profile_entry *ops = xmalloc((size_t)(n ? n : 1) * sizeof *ops);
    backend_profile_entry *out = xmalloc((size_t)(n ? n : 1) * sizeof *out);
    for (int i = 0; i < n; i++)
        if (!p->entries[i].part_of[0])
            ops[n_ops++] = p->entries[i];
    qsort(ops, (size_t)n_ops, sizeof *ops, slower_first);
    for (int o = 0; o < n_ops; o++) {
        out[at++] = ops[o];
        for (int i = 0; i < n; i++)
            if (strcmp(p->entries[i].part_of, ops[o].op) == 0)
                out[at++] = p->entries[i];
    }
    free(ops);
    free(p->entries);
    *entries = out;
    free(p);
    return at;
}

/* The entry of an op (part_of "") or of one of its parts, made where there is none. */
static backend_profile_entry *profile_entry(struct backend_profile *p, const char *op,
                                            const char *part_of)
{
    int i = 0;
    while (i < p->n &&
           (strcmp(p->entries[i].op, op) != 0 || strcmp(p->entries[i].part_of, part_of) != 0))
        i++;
    if (i == p->n) {
        if (p->n == p->cap) {
            p->cap = p->cap ? 2 * p->cap : 32;
            p->entries = xrealloc(p->entries, (size_t)p->cap * sizeof *p->entries);
        }
        memset(&p->entries[i], 0, sizeof p->entries[i]);
        snprintf(p->entries[i].op, sizeof p->entries[i].op, "%s", op);
        snprintf(p->entries[i].part_of, sizeof p->entries[i].part_of, "%s", part_of);
        p->n++;
    }
    return &p->entries[i];
}

static double profile_begin(pesc_backend *b)
{
    backend_synchronize(b);
    return pesc_now();
}

static void profile_end(pesc_backend *b, double t0, const char *op, double flops)
{
    double issued = pesc_now() - t0;   /* the op's own host time: its queue was empty at t0 */
    backend_synchronize(b);
    double dt = pesc_now() - t0;
    backend_profile_entry *e = profile_entry(b->profile, op, "");
    e->seconds += dt;
    e->host_seconds += issued;
    e->flops += flops;
    e->calls++;
    backend_part parts[32];
    int n = b->ops->parts_take ? b->ops->parts_take(b->context, parts, 32) : 0;
    for (int i = 0; i < n; i++) {
        backend_profile_entry *part = profile_entry(b->profile, parts[i].label, op);
        part->seconds += parts[i].device_seconds;
        part->host_seconds += parts[i].host_seconds;
        part->calls++;
    }
}

/* An op's call, timed into the running profile when there is one, with the floating-point
 * operations of its products (flops: only evaluated then; 0 for an op without products). */
#define PROFILED_PRODUCTS(b, op, flops, call)                                                    \
    do {                                                                                         \
        if (!(b)->profile) {                                                                     \
            call;                                                                                \
        } else {                                                                                 \
            double t0_ = profile_begin(b);                                                       \
            call;                                                                                \
            profile_end((b), t0_, (op), (flops));                                                \
        }                                                                                        \
    } while (0)
#define PROFILED(b, op, call) PROFILED_PRODUCTS(b, op, 0.0, call)

/* The (query, key) pairs a causal attention over T positions scores in each sequence and
 * head: T (T + 1) / 2, fewer in a window of `window` keys (0: none). A packed batch's
 * documents see fewer; they count as one sequence (their boundaries are on the device). */
static double attention_pairs(int T, int window)
{
    if (window <= 0 || window >= T)
        return (double)T * (T + 1) / 2.0;
    return (double)window * (window + 1) / 2.0 + (double)(T - window) * window;
}

/* A product's entry: its op and its input and output widths (which say which weight it is). */
static const char *matmul_key(char key[64], const char *op, int C, int OC)
{
    snprintf(key, 64, "%s %dx%d", op, C, OC);
    return key;
}

pesc_backend *backend_new(const char *name, pesc_error *err)
{
    int want_cuda = strcmp(name, "cuda") == 0, want_auto = strcmp(name, "auto") == 0;
    if (!want_cuda && !want_auto && strcmp(name, "cpu") != 0) {
        pesc_fail(err, "--backend %s: unknown backend; choose auto, cpu or cuda", name);
        return NULL;
    }
    pesc_backend *b = xcalloc(1, sizeof *b);
    if (want_cuda || want_auto) {
        pesc_error why;
        const cuda_module *cuda;
        int status = cuda_load(&cuda, &why);
        if (status == 0) {
            /* auto: no device here is no fault; a device that failed to start is */
            status = cuda->device_count(&why) > 0 ? -1 : 1;
            if (status < 0 && cuda->backend_init(&b->ops, &b->context, &why) == 0)
                return b;
        }
        if (want_cuda) {
            pesc_fail(err, "--backend cuda: %s", why.msg);
            free(b);
            return NULL;
        }
        if (status < 0)
            snprintf(b->gpu_passed_over, sizeof b->gpu_passed_over, "%s", why.msg);
    }
    /* the CPU is registered last, as the fallback (STYLE: ggml) */
    if (cpu_backend_init(&b->ops, &b->context, err) != 0) {
        free(b);
        return NULL;
    }
    return b;
}

void backend_delete(pesc_backend *b)
{
    if (!b)
        return;
    if (b->ops && b->ops->free_context)
        b->ops->free_context(b->context);
    if (b->profile)
        free(b->profile->entries);
    free(b->profile);
    free(b);
}

const char *backend_name(const pesc_backend *b) { return b->ops->name; }
const char *backend_gpu_passed_over(const pesc_backend *b) { return b->gpu_passed_over; }
const char *backend_device(const pesc_backend *b) { return b->ops->device(b->context); }

void *backend_alloc(pesc_backend *b, size_t bytes, pesc_error *err)
{
    void *p = b->ops->alloc(b->context, bytes);
    if (!p)
        pesc_fail(err, "%s backend: out of memory allocating %.1f MiB", b->ops->name,
                  (double)bytes / (1024.0 * 1024.0));
    return p;
}

void backend_free(pesc_backend *b, void *p)
{
    if (p)
        b->ops->free(b->context, p);
}

void backend_upload(pesc_backend *b, void *dst, const void *src, size_t bytes)
{
    PROFILED(b, __func__, b->ops->upload(b->context, dst, src, bytes));
}

void backend_download(pesc_backend *b, void *dst, const void *src, size_t bytes)
{
    PROFILED(b, __func__, b->ops->download(b->context, dst, src, bytes));
}

void backend_download_start(pesc_backend *b, void *dst, const void *src, size_t bytes)
{
    if (!b->ops->download_start) {
        backend_download(b, dst, src, bytes);
        return;
    }
    PROFILED(b, __func__, b->ops->download_start(b->context, dst, src, bytes));
}

void backend_download_wait(pesc_backend *b)
{
    if (b->ops->download_wait)
        PROFILED(b, __func__, b->ops->download_wait(b->context));
}

void backend_copy(pesc_backend *b, void *dst, const void *src, size_t bytes)
{
    PROFILED(b, __func__, b->ops->copy(b->context, dst, src, bytes));
}

void backend_synchronize(pesc_backend *b)
{
    if (b->ops->synchronize)
        b->ops->synchronize(b->context);
}

/* MemAvailable and MemTotal from /proc/meminfo. */
static int host_memory(backend_memory *out)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f)
        return -1;
    char line[256];
    unsigned long long kib;
    int found = 0;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1) {
            out->available = (size_t)kib * 1024;
            found |= 1;
        } else if (sscanf(line, "MemTotal: %llu kB", &kib) == 1) {
            out->total = (size_t)kib * 1024;
            found |= 2;
        }
    }
    fclose(f);
    return found == 3 ? 0 : -1;
}

void backend_freeze(pesc_backend *b, const float *p, size_t n)
{
    if (b->ops->freeze)
        b->ops->freeze(b->context, p, n);
}

void backend_trainables(pesc_backend *b, const float *p, size_t n)
{
    if (b->ops->trainables)
        b->ops->trainables(b->context, p, n);
}

void backend_gradients(pesc_backend *b, const float *p, size_t n)
{
    if (b->ops->gradients)
        b->ops->gradients(b->context, p, n);
}

float *backend_alloc_frozen(pesc_backend *b, size_t n)
{
    return b->ops->alloc_frozen ? b->ops->alloc_frozen(b->context, n) : NULL;
}

int backend_memory_info(pesc_backend *b, backend_memory *out)
{
    *out = (backend_memory){0};
    return b->ops->memory ? b->ops->memory(b->context, out) : host_memory(out);
}

size_t backend_activation_bytes(pesc_backend *b)
{
    return b->ops->activation_bytes ? b->ops->activation_bytes(b->context) : sizeof(float);
}

static void adapter_layout(pesc_backend *b, int *align, double *room)
{
    *align = 1, *room = 1.0;
    if (b->ops->adapter_layout)
        b->ops->adapter_layout(b->context, align, room);
}

size_t backend_adapter_rows(pesc_backend *b, size_t pairs, int E)
{
    int align;
    double room;
    adapter_layout(b, &align, &room);
    return pesc_adapter_rows(pairs, E, align, room);
}

int backend_adapter_starts(pesc_backend *b, int *starts, const int *offsets, int E,
                           size_t pairs)
{
    int align;
    double room;
    adapter_layout(b, &align, &room);
    return pesc_adapter_starts(starts, offsets, E, align, room, pairs);
}

size_t backend_logit_bytes(pesc_backend *b)
{
    return b->ops->logit_bytes ? b->ops->logit_bytes(b->context) : (size_t)64 << 20;
}

float *backend_alloc_compact(pesc_backend *b, size_t n, pesc_error *err)
{
    if (!b->ops->alloc_compact)
        return backend_alloc(b, n * sizeof(float), err);
    float *p = b->ops->alloc_compact(b->context, n);
    if (!p)
        pesc_fail(err, "%s backend: out of memory allocating %.1f MiB of activations",
                  b->ops->name, (double)(n * backend_activation_bytes(b)) / (1024.0 * 1024.0));
    return p;
}

size_t backend_work_bytes(pesc_backend *b, const backend_step_shape *s)
{
    return b->ops->work_bytes ? b->ops->work_bytes(b->context, s) : 0;
}

int backend_check(pesc_backend *b, pesc_error *err)
{
    return b->ops->check ? b->ops->check(b->context, err) : 0;
}

/* ---- ops: each forwards to the backend's slot ---------------------------------------------- */

void embedding_forward(pesc_backend *b, float *out, const int32_t *tokens, const float *table, int N, int C)
{
    PROFILED(b, __func__, b->ops->embedding_forward(b->context, out, tokens, table, N, C));
}

void matmul_forward(pesc_backend *b, float *out, const float *inp, const float *weight, const float *bias, int N, int C, int OC)
{
    char key[64];
    PROFILED_PRODUCTS(b, matmul_key(key, "matmul_forward", C, OC), 2.0 * N * C * OC,
                      b->ops->matmul_forward(b->context, out, inp, weight, bias, N, C, OC));
}

void rmsnorm_forward(pesc_backend *b, float *out, float *rstd, const float *inp, const float *weight, float offset, int N, int C, float eps)
{
    PROFILED(b, __func__, b->ops->rmsnorm_forward(b->context, out, rstd, inp, weight, offset, N, C, eps));
}

void rope_forward(pesc_backend *b, float *out, const float *inp, const int32_t *pos, const float *inv_freq, int N, int H, int D, int R, float scale)
{
    PROFILED(b, __func__, b->ops->rope_forward(b->context, out, inp, pos, inv_freq, N, H, D, R, scale));
}

void attention_forward(pesc_backend *b, float *out, float *lse, const float *q, const float *k, const float *v, int B, int T, int Hq, int Hkv, int D, int window, float softcap, const int32_t *seg_start)
{
    /* QK^T and PV */
    PROFILED_PRODUCTS(b, __func__, 4.0 * D * Hq * B * attention_pairs(T, window),
                      b->ops->attention_forward(b->context, out, lse, q, k, v, B, T, Hq, Hkv, D,
                                                window, softcap, seg_start));
}

void attention_cached_forward(pesc_backend *b, float *out, const float *q, const float *k_cache, const float *v_cache, int n, int past, int Hq, int Hkv, int D, int window, float softcap)
{
    PROFILED(b, __func__, b->ops->attention_cached_forward(b->context, out, q, k_cache, v_cache, n, past, Hq, Hkv, D, window, softcap));
}

void attention_step_forward(pesc_backend *b, float *out, const float *q, const float *k,
                            const float *v, float *k_cache, float *v_cache,
                            const int32_t *slots, const int32_t *past, int n, int slot_rows,
                            int Hq, int Hkv, int D, int window, float softcap)
{
    PROFILED(b, __func__, b->ops->attention_step_forward(b->context, out, q, k, v, k_cache,
                                                         v_cache, slots, past, n, slot_rows,
                                                         Hq, Hkv, D, window, softcap));
}

void swiglu_forward(pesc_backend *b, float *out, const float *gate, const float *up, size_t n)
{
    PROFILED(b, __func__, b->ops->swiglu_forward(b->context, out, gate, up, n));
}

void geglu_forward(pesc_backend *b, float *out, const float *gate, const float *up, size_t n)
{
    PROFILED(b, __func__, b->ops->geglu_forward(b->context, out, gate, up, n));
}

void residual_forward(pesc_backend *b, float *out, const float *x, const float *y, size_t n)
{
    PROFILED(b, __func__, b->ops->residual_forward(b->context, out, x, y, n));
}

void argmax_rows(pesc_backend *b, int32_t *out, const float *x, int rows, int cols)
{
    PROFILED(b, __func__, b->ops->argmax_rows(b->context, out, x, rows, cols));
}

void crossentropy_forward(pesc_backend *b, float *losses, const float *logits, const int32_t *targets, int N, int V, float softcap)
{
    PROFILED(b, __func__, b->ops->crossentropy_forward(b->context, losses, logits, targets, N, V, softcap));
}

void moe_route_forward(pesc_backend *b, int32_t *topk_idx, float *topk_w, float *probs, float *lse, const float *logits, const int32_t *sources, int N, int E, int K)
{
    PROFILED(b, __func__, b->ops->moe_route_forward(b->context, topk_idx, topk_w, probs, lse, logits, sources, N, E, K));
}

void moe_group(pesc_backend *b, int32_t *perm, double *stats, const int32_t *topk_idx, const float *topk_w, const float *probs, const float *lse, const int32_t *sources, int N, int E, int K, int S)
{
    PROFILED(b, __func__, b->ops->moe_group(b->context, perm, stats, topk_idx, topk_w, probs, lse, sources, N, E, K, S));
}

void moe_route_backward(pesc_backend *b, float *dlogits, const float *dtopk_w, const int32_t *topk_idx, const float *topk_w, const float *probs, const float *lse, const float *aux_grad, float z_scale, int N, int E, int K)
{
    PROFILED(b, __func__, b->ops->moe_route_backward(b->context, dlogits, dtopk_w, topk_idx, topk_w, probs, lse, aux_grad, z_scale, N, E, K));
}

void moe_adapter_forward(pesc_backend *b, float *y, const float *x, float *gathered, float *pre, float *act, float *scratch, const float *h, float dropout, uint64_t seed, const float *down, const float *up, const int32_t *perm, const int *offsets, const float *topk_w, int N, int K, int E, int C, int R, float scale)
{
    /* the down and up products over the routed pairs */
    PROFILED_PRODUCTS(b, __func__, 4.0 * offsets[E] * C * R,
                      b->ops->moe_adapter_forward(b->context, y, x, gathered, pre, act, scratch,
                                                  h, dropout, seed, down, up, perm, offsets,
                                                  topk_w, N, K, E, C, R, scale));
}

void moe_adapter_backward(pesc_backend *b, float *dh, float *ddown, float *dup, float *dtopk_w, float *scratch, float *scratch_r, const float *dy, const float *gathered, const float *pre, const float *act, float dropout, uint64_t seed, const float *down, const float *up, const int32_t *perm, const int *offsets, const float *topk_w, int N, int K, int E, int C, int R, float scale)
{
    /* through U and D, and each weight's gradient asked for */
    PROFILED_PRODUCTS(b, __func__, (4.0 + 2.0 * !!ddown + 2.0 * !!dup) * offsets[E] * C * R,
                      b->ops->moe_adapter_backward(b->context, dh, ddown, dup, dtopk_w, scratch,
                                                   scratch_r, dy, gathered, pre, act, dropout,
                                                   seed, down, up, perm, offsets, topk_w, N, K,
                                                   E, C, R, scale));
}

void embedding_backward(pesc_backend *b, float *dtable, const float *dout, const int32_t *tokens, int N, int C)
{
    PROFILED(b, __func__, b->ops->embedding_backward(b->context, dtable, dout, tokens, N, C));
}

void matmul_backward(pesc_backend *b, float *dinp, float *dweight, float *dbias, const float *dout, const float *inp, const float *weight, int N, int C, int OC)
{
    char key[64];
    PROFILED_PRODUCTS(b, matmul_key(key, "matmul_backward", C, OC),
                      (2.0 * !!dinp + 2.0 * !!dweight) * N * C * OC,
                      b->ops->matmul_backward(b->context, dinp, dweight, dbias, dout, inp, weight,
                                              N, C, OC));
}

void rmsnorm_backward(pesc_backend *b, float *dinp, float *dweight, const float *dout, const float *inp, const float *weight, float offset, const float *rstd, int N, int C)
{
    PROFILED(b, __func__, b->ops->rmsnorm_backward(b->context, dinp, dweight, dout, inp, weight, offset, rstd, N, C));
}

void rope_backward(pesc_backend *b, float *dinp, const float *dout, const int32_t *pos, const float *inv_freq, int N, int H, int D, int R, float scale)
{
    PROFILED(b, __func__, b->ops->rope_backward(b->context, dinp, dout, pos, inv_freq, N, H, D, R, scale));
}

void attention_backward(pesc_backend *b, float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k, const float *v, const float *out, const float *lse, int B, int T, int Hq, int Hkv, int D, int window, float softcap, const int32_t *seg_start)
{
    /* dO V^T, P^T dO, dS K and dS^T Q; QK^T made again counts as nothing, as in the MFU */
    PROFILED_PRODUCTS(b, __func__, 8.0 * D * Hq * B * attention_pairs(T, window),
                      b->ops->attention_backward(b->context, dq, dk, dv, dout, q, k, v, out,
                                                 lse, B, T, Hq, Hkv, D, window, softcap, seg_start));
}

void swiglu_backward(pesc_backend *b, float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n)
{
    PROFILED(b, __func__, b->ops->swiglu_backward(b->context, dgate, dup, dout, gate, up, n));
}

void geglu_backward(pesc_backend *b, float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n)
{
    PROFILED(b, __func__, b->ops->geglu_backward(b->context, dgate, dup, dout, gate, up, n));
}

void crossentropy_backward(pesc_backend *b, float *dlogits, float *losses, const float *logits, const int32_t *targets, float scale, int N, int V, float softcap)
{
    PROFILED(b, __func__, b->ops->crossentropy_backward(b->context, dlogits, losses, logits, targets, scale, N, V, softcap));
}

void vector_zero(pesc_backend *b, float *x, size_t n)
{
    PROFILED(b, __func__, b->ops->vector_zero(b->context, x, n));
}

void vector_axpy(pesc_backend *b, float *y, const float *x, float alpha, size_t n)
{
    PROFILED(b, __func__, b->ops->vector_axpy(b->context, y, x, alpha, n));
}

void dropout_mask(pesc_backend *b, float *mask, size_t n, float p, uint64_t seed)
{
    PROFILED(b, __func__, b->ops->dropout_mask(b->context, mask, n, p, seed));
}

void vector_add_uniform(pesc_backend *b, float *x, size_t n, float magnitude, uint64_t seed)
{
    PROFILED(b, __func__, b->ops->vector_add_uniform(b->context, x, n, magnitude, seed));
}

void vector_scale(pesc_backend *b, float *x, float alpha, size_t n)
{
    PROFILED(b, __func__, b->ops->vector_scale(b->context, x, alpha, n));
}

double vector_sumsq(pesc_backend *b, const float *x, size_t n)
{
    double sum = 0.0;
    PROFILED(b, __func__, sum = b->ops->vector_sumsq(b->context, x, n));
    return sum;
}

void vector_sumsq_chunks(pesc_backend *b, double *out, const float *x, size_t chunk, int n)
{
    PROFILED(b, __func__, b->ops->vector_sumsq_chunks(b->context, out, x, chunk, n));
}

void adamw_update(pesc_backend *b, float *params, const float *grads, float grad_scale, float *m, float *v, float *delta, size_t n, float lr, float beta1, float beta2, float eps, float weight_decay, int step)
{
    PROFILED(b, __func__, b->ops->adamw_update(b->context, params, grads, grad_scale, m, v, delta, n, lr, beta1, beta2, eps, weight_decay, step));
}
