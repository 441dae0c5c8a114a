/* backend — dispatch from the public op names to the chosen backend's table. */
#include "config.h"

#include "backend_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

pesc_backend *backend_new(const char *name, pesc_error *err)
{
    int want_cuda = strcmp(name, "cuda") == 0, want_auto = strcmp(name, "auto") == 0;
    if (!want_cuda && !want_auto && strcmp(name, "cpu") != 0) {
        pesc_fail(err, "--backend %s: unknown backend; choose auto, cpu or cuda", name);
        return NULL;
    }
    pesc_backend *b = xcalloc(1, sizeof *b);
#ifdef HAVE_CUDA
    if (want_cuda || want_auto) {
        /* auto: a usable GPU, else the CPU (why the GPU was passed over is not an error) */
        pesc_error why;
        if (cuda_backend_init(&b->ops, &b->context, want_cuda ? err : &why) == 0)
            return b;
        if (want_cuda) {
            free(b);
            return NULL;
        }
    }
#else
    if (want_cuda) {
        pesc_fail(err, "--backend cuda: this pesc was built without CUDA; reconfigure with "
                       "--with-cuda=DIR, or use --backend cpu");
        free(b);
        return NULL;
    }
#endif
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
    free(b);
}

const char *backend_name(const pesc_backend *b) { return b->ops->name; }
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
    b->ops->upload(b->context, dst, src, bytes);
}

void backend_download(pesc_backend *b, void *dst, const void *src, size_t bytes)
{
    b->ops->download(b->context, dst, src, bytes);
}

void backend_copy(pesc_backend *b, void *dst, const void *src, size_t bytes)
{
    b->ops->copy(b->context, dst, src, bytes);
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

int backend_memory_info(pesc_backend *b, backend_memory *out)
{
    *out = (backend_memory){0};
    return b->ops->memory ? b->ops->memory(b->context, out) : host_memory(out);
}

int backend_check(pesc_backend *b, pesc_error *err)
{
    return b->ops->check ? b->ops->check(b->context, err) : 0;
}

/* ---- ops: each forwards to the backend's slot ---------------------------------------------- */

void embedding_forward(pesc_backend *b, float *out, const int32_t *tokens, const float *table, int N, int C)
{
    b->ops->embedding_forward(b->context, out, tokens, table, N, C);
}

void matmul_forward(pesc_backend *b, float *out, const float *inp, const float *weight, const float *bias, int N, int C, int OC)
{
    b->ops->matmul_forward(b->context, out, inp, weight, bias, N, C, OC);
}

void rmsnorm_forward(pesc_backend *b, float *out, float *rstd, const float *inp, const float *weight, int N, int C, float eps)
{
    b->ops->rmsnorm_forward(b->context, out, rstd, inp, weight, N, C, eps);
}

void rope_forward(pesc_backend *b, float *out, const float *inp, const int32_t *pos, const float *inv_freq, int N, int H, int D)
{
    b->ops->rope_forward(b->context, out, inp, pos, inv_freq, N, H, D);
}

void attention_forward(pesc_backend *b, float *out, float *lse, const float *q, const float *k, const float *v, int B, int T, int Hq, int Hkv, int D, int window, const int32_t *seg_start)
{
    b->ops->attention_forward(b->context, out, lse, q, k, v, B, T, Hq, Hkv, D, window, seg_start);
}

void attention_cached_forward(pesc_backend *b, float *out, const float *q, const float *k_cache, const float *v_cache, int n, int past, int Hq, int Hkv, int D, int window)
{
    b->ops->attention_cached_forward(b->context, out, q, k_cache, v_cache, n, past, Hq, Hkv, D, window);
}

void swiglu_forward(pesc_backend *b, float *out, const float *gate, const float *up, size_t n)
{
    b->ops->swiglu_forward(b->context, out, gate, up, n);
}

void residual_forward(pesc_backend *b, float *out, const float *x, const float *y, size_t n)
{
    b->ops->residual_forward(b->context, out, x, y, n);
}

void crossentropy_forward(pesc_backend *b, float *losses, const float *logits, const int32_t *targets, int N, int V)
{
    b->ops->crossentropy_forward(b->context, losses, logits, targets, N, V);
}

void moe_route_forward(pesc_backend *b, int32_t *topk_idx, float *topk_w, float *probs, float *lse, const float *logits, int N, int E, int K)
{
    b->ops->moe_route_forward(b->context, topk_idx, topk_w, probs, lse, logits, N, E, K);
}

void moe_route_backward(pesc_backend *b, float *dlogits, const float *dtopk_w, const int32_t *topk_idx, const float *topk_w, const float *probs, const float *lse, const float *aux_grad, float z_scale, int N, int E, int K)
{
    b->ops->moe_route_backward(b->context, dlogits, dtopk_w, topk_idx, topk_w, probs, lse, aux_grad, z_scale, N, E, K);
}

void moe_adapter_forward(pesc_backend *b, float *y, float *gathered, float *pre, float *act, float *scratch, const float *h, const float *mask, const float *down, const float *up, const int32_t *perm, const int *offsets, const float *topk_w, int N, int K, int E, int C, int R, float scale)
{
    b->ops->moe_adapter_forward(b->context, y, gathered, pre, act, scratch, h, mask, down, up, perm, offsets, topk_w, N, K, E, C, R, scale);
}

void moe_adapter_backward(pesc_backend *b, float *dh, float *ddown, float *dup, float *dtopk_w, float *scratch, float *scratch_r, const float *dy, const float *gathered, const float *pre, const float *act, const float *mask, const float *down, const float *up, const int32_t *perm, const int *offsets, const float *topk_w, int N, int K, int E, int C, int R, float scale)
{
    b->ops->moe_adapter_backward(b->context, dh, ddown, dup, dtopk_w, scratch, scratch_r, dy, gathered, pre, act, mask, down, up, perm, offsets, topk_w, N, K, E, C, R, scale);
}

void embedding_backward(pesc_backend *b, float *dtable, const float *dout, const int32_t *tokens, int N, int C)
{
    b->ops->embedding_backward(b->context, dtable, dout, tokens, N, C);
}

void matmul_backward(pesc_backend *b, float *dinp, float *dweight, float *dbias, const float *dout, const float *inp, const float *weight, int N, int C, int OC)
{
    b->ops->matmul_backward(b->context, dinp, dweight, dbias, dout, inp, weight, N, C, OC);
}

void rmsnorm_backward(pesc_backend *b, float *dinp, float *dweight, const float *dout, const float *inp, const float *weight, const float *rstd, int N, int C)
{
    b->ops->rmsnorm_backward(b->context, dinp, dweight, dout, inp, weight, rstd, N, C);
}

void rope_backward(pesc_backend *b, float *dinp, const float *dout, const int32_t *pos, const float *inv_freq, int N, int H, int D)
{
    b->ops->rope_backward(b->context, dinp, dout, pos, inv_freq, N, H, D);
}

void attention_backward(pesc_backend *b, float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k, const float *v, const float *out, const float *lse, int B, int T, int Hq, int Hkv, int D, int window, const int32_t *seg_start)
{
    b->ops->attention_backward(b->context, dq, dk, dv, dout, q, k, v, out, lse, B, T, Hq, Hkv, D, window, seg_start);
}

void swiglu_backward(pesc_backend *b, float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n)
{
    b->ops->swiglu_backward(b->context, dgate, dup, dout, gate, up, n);
}

void crossentropy_backward(pesc_backend *b, float *dlogits, float *losses, const float *logits, const int32_t *targets, float scale, int N, int V)
{
    b->ops->crossentropy_backward(b->context, dlogits, losses, logits, targets, scale, N, V);
}

void vector_zero(pesc_backend *b, float *x, size_t n)
{
    b->ops->vector_zero(b->context, x, n);
}

void vector_axpy(pesc_backend *b, float *y, const float *x, float alpha, size_t n)
{
    b->ops->vector_axpy(b->context, y, x, alpha, n);
}

void dropout_mask(pesc_backend *b, float *mask, size_t n, float p, uint64_t seed)
{
    b->ops->dropout_mask(b->context, mask, n, p, seed);
}

void vector_scale(pesc_backend *b, float *x, float alpha, size_t n)
{
    b->ops->vector_scale(b->context, x, alpha, n);
}

double vector_sumsq(pesc_backend *b, const float *x, size_t n)
{
    return b->ops->vector_sumsq(b->context, x, n);
}

void adamw_update(pesc_backend *b, float *params, const float *grads, float *m, float *v, size_t n, float lr, float beta1, float beta2, float eps, float weight_decay, int step)
{
    b->ops->adamw_update(b->context, params, grads, m, v, n, lr, beta1, beta2, eps, weight_decay, step);
}
