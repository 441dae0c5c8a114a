/* backend — the interface every compute backend (cpu, cuda) implements, behind an opaque handle.
 *
 * Callers allocate buffers on a backend, move data in and out, and run ops on them. Op names are
 * `<op>_forward` / `<op>_backward`; arguments are outputs first, then inputs, then sizes, as in
 * llm.c. Tensor pointers passed to ops are backend memory from backend_alloc (device memory on
 * a GPU); shapes are row-major and given in the comments. N is the number of tokens (B * T).
 *
 * Must not: own model structure or know about files. The trainer thread owns a backend; nothing
 * else touches it (DESIGN section 2). */
#ifndef PESC_BACKEND_H
#define PESC_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

typedef struct pesc_backend pesc_backend;

/* name: "auto" (a usable GPU, else cpu), "cpu" or "cuda". Returns NULL with a message when
 * the backend is unknown or cannot start. */
pesc_backend *backend_new(const char *name, pesc_error *err);
void backend_delete(pesc_backend *b);
const char *backend_name(const pesc_backend *b);       /* "cpu" */
const char *backend_device(const pesc_backend *b);     /* "CPU, 2 threads, OpenBLAS" */

/* Memory. backend_alloc returns NULL with a message when the backend is out of memory. */
void *backend_alloc(pesc_backend *b, size_t bytes, pesc_error *err);
void backend_free(pesc_backend *b, void *p);
void backend_upload(pesc_backend *b, void *dst, const void *src, size_t bytes);
void backend_download(pesc_backend *b, void *dst, const void *src, size_t bytes);
void backend_synchronize(pesc_backend *b);

/* ---- forward ops ---------------------------------------------------------------------------- */

/* out (N, C) = table[tokens] with table (V, C). */
void embedding_forward(pesc_backend *b, float *out, const int32_t *tokens, const float *table,
                       int N, int C);

/* out (N, OC) = inp (N, C) @ weight (OC, C)^T + bias (OC) — bias may be NULL. */
void matmul_forward(pesc_backend *b, float *out, const float *inp, const float *weight,
                    const float *bias, int N, int C, int OC);

/* out (N, C) = weight * inp / sqrt(mean(inp^2) + eps); rstd (N) receives 1/sqrt(...) for the
 * backward pass and may be NULL. */
void rmsnorm_forward(pesc_backend *b, float *out, float *rstd, const float *inp,
                     const float *weight, int N, int C, float eps);

/* Rotary embedding, Hugging Face rotate-half convention, on (N, H, D) with D even:
 * angle = pos[n] * inv_freq[i], i < D/2; out[..i] = x[i] cos - x[i+D/2] sin,
 * out[..i+D/2] = x[i+D/2] cos + x[i] sin. out may equal inp. */
void rope_forward(pesc_backend *b, float *out, const float *inp, const int32_t *pos,
                  const float *inv_freq, int N, int H, int D);

/* Causal grouped-query attention over B sequences of T tokens.
 * q (N, Hq, D), k and v (N, Hkv, D), out (N, Hq, D); query head h reads kv head h / (Hq/Hkv).
 * Scores are scaled by 1/sqrt(D). window > 0 limits each query at t to keys s with
 * t - window < s <= t (sliding-window attention); 0 means unlimited.
 * lse (B, Hq, T) receives each row's log-sum-exp for the backward pass and may be NULL. */
void attention_forward(pesc_backend *b, float *out, float *lse, const float *q, const float *k,
                       const float *v, int B, int T, int Hq, int Hkv, int D, int window);

/* out (n) = silu(gate) * up, elementwise. */
void swiglu_forward(pesc_backend *b, float *out, const float *gate, const float *up, size_t n);

/* out (n) = x + y, elementwise; out may alias either input. */
void residual_forward(pesc_backend *b, float *out, const float *x, const float *y, size_t n);

/* losses (N) = logsumexp(logits[n]) - logits[n][targets[n]], from logits (N, V);
 * targets < 0 (the -100 of Hugging Face labels) give a loss of 0. */
void crossentropy_forward(pesc_backend *b, float *losses, const float *logits,
                          const int32_t *targets, int N, int V);

#endif
