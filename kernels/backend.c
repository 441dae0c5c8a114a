/* backend — dispatch from the public op names to the chosen backend's table. */
#include "config.h"

#include "backend_impl.h"

#include <stdlib.h>
#include <string.h>

pesc_backend *backend_new(const char *name, pesc_error *err)
{
    if (strcmp(name, "cuda") == 0) {
#ifdef HAVE_CUDA
        pesc_fail(err, "--backend cuda: the CUDA compute ops are not part of this build yet; "
                       "use --backend cpu (or auto)");
#else
        pesc_fail(err, "--backend cuda: this pesc was built without CUDA; reconfigure with "
                       "--with-cuda=DIR, or use --backend cpu");
#endif
        return NULL;
    }
    if (strcmp(name, "cpu") != 0 && strcmp(name, "auto") != 0) {
        pesc_fail(err, "--backend %s: unknown backend; choose auto, cpu or cuda", name);
        return NULL;
    }
    /* auto falls back to the CPU, which is registered last (STYLE: ggml). */
    pesc_backend *b = xcalloc(1, sizeof *b);
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

void backend_synchronize(pesc_backend *b)
{
    if (b->ops->synchronize)
        b->ops->synchronize(b->context);
}

/* ---- ops ------------------------------------------------------------------------------------ */

void embedding_forward(pesc_backend *b, float *out, const int32_t *tokens, const float *table,
                       int N, int C)
{
    b->ops->embedding_forward(b->context, out, tokens, table, N, C);
}

void matmul_forward(pesc_backend *b, float *out, const float *inp, const float *weight,
                    const float *bias, int N, int C, int OC)
{
    b->ops->matmul_forward(b->context, out, inp, weight, bias, N, C, OC);
}

void rmsnorm_forward(pesc_backend *b, float *out, float *rstd, const float *inp,
                     const float *weight, int N, int C, float eps)
{
    b->ops->rmsnorm_forward(b->context, out, rstd, inp, weight, N, C, eps);
}

void rope_forward(pesc_backend *b, float *out, const float *inp, const int32_t *pos,
                  const float *inv_freq, int N, int H, int D)
{
    b->ops->rope_forward(b->context, out, inp, pos, inv_freq, N, H, D);
}

void attention_forward(pesc_backend *b, float *out, float *lse, const float *q, const float *k,
                       const float *v, int B, int T, int Hq, int Hkv, int D, int window)
{
    b->ops->attention_forward(b->context, out, lse, q, k, v, B, T, Hq, Hkv, D, window);
}

void swiglu_forward(pesc_backend *b, float *out, const float *gate, const float *up, size_t n)
{
    b->ops->swiglu_forward(b->context, out, gate, up, n);
}

void residual_forward(pesc_backend *b, float *out, const float *x, const float *y, size_t n)
{
    b->ops->residual_forward(b->context, out, x, y, n);
}

void crossentropy_forward(pesc_backend *b, float *losses, const float *logits,
                          const int32_t *targets, int N, int V)
{
    b->ops->crossentropy_forward(b->context, losses, logits, targets, N, V);
}
