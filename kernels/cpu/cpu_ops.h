/* cpu_ops — the float32 CPU ops: the specification every other backend is compared with.
 * Same names and argument order as backend.h, with the `cpu_` prefix of their backend.
 * Products go through CBLAS (OpenBLAS); the rest is split across cores with OpenMP. */
#ifndef PESC_CPU_OPS_H
#define PESC_CPU_OPS_H

#include <stddef.h>
#include <stdint.h>

/* Attention keeps one query row's accumulator on the stack. */
#define CPU_MAX_HEAD_DIM 512

void cpu_embedding_forward(float *out, const int32_t *tokens, const float *table, int N, int C);
void cpu_matmul_forward(float *out, const float *inp, const float *weight, const float *bias,
                        int N, int C, int OC);
void cpu_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N,
                         int C, float eps);
void cpu_rope_forward(float *out, const float *inp, const int32_t *pos, const float *inv_freq,
                      int N, int H, int D);
void cpu_attention_forward(float *out, float *lse, const float *q, const float *k,
                           const float *v, int B, int T, int Hq, int Hkv, int D, int window);
void cpu_swiglu_forward(float *out, const float *gate, const float *up, size_t n);
void cpu_residual_forward(float *out, const float *x, const float *y, size_t n);
void cpu_crossentropy_forward(float *losses, const float *logits, const int32_t *targets, int N,
                              int V);

#endif
