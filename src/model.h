/* model — a Llama-family decoder on a backend: weights loaded from a Hugging Face checkpoint,
 * the forward pass, and next-token losses.
 *
 * Owns: the weight layout (one backend allocation carved into tensors), the activation
 * buffers, the order of ops. Must not: parse files itself (safetensors.c, hfconfig.c do) or
 * touch the device except through the backend. Later issues add the PESC layers, backward
 * and KV-cache generation here. */
#ifndef PESC_MODEL_H
#define PESC_MODEL_H

#include <stdint.h>

#include "backend.h"
#include "hfconfig.h"
#include "util.h"

/* Shapes use C = hidden_size, F = intermediate_size, D = head_dim, Hq / Hkv = heads. */
typedef struct model_layer {
    float *attn_norm;            /* (C) */
    float *wq, *bq;              /* (Hq*D, C), (Hq*D) or NULL */
    float *wk, *bk;              /* (Hkv*D, C), (Hkv*D) or NULL */
    float *wv, *bv;              /* (Hkv*D, C), (Hkv*D) or NULL */
    float *wo, *bo;              /* (C, Hq*D), (C) or NULL */
    float *ffn_norm;             /* (C) */
    float *w_gate, *w_up;        /* (F, C) */
    float *w_down;               /* (C, F) */
} model_layer;

/* Buffers for `capacity` tokens, carved from one backend allocation. */
typedef struct model_activations {
    int capacity;                /* tokens */
    int logit_rows;              /* tokens whose logits are materialised at once */
    float *x;                    /* (N, C) residual stream */
    float *xn;                   /* (N, C) normed input of the current block */
    float *q;                    /* (N, Hq*D) */
    float *k, *v;                /* (N, Hkv*D) */
    float *att;                  /* (N, Hq*D) */
    float *proj;                 /* (N, C) */
    float *gate, *up;            /* (N, F) */
    float *logits;               /* (logit_rows, V) */
    float *losses;               /* (logit_rows) */
    int32_t *tokens, *targets, *pos;   /* (N) */
} model_activations;

typedef struct model {
    hf_config config;
    pesc_backend *backend;       /* not owned */
    void *param_block;           /* every weight, one allocation */
    long long n_params;
    float *embed;                /* (V, C) */
    float *lm_head;              /* (V, C); equals embed when tied */
    float *final_norm;           /* (C) */
    float *inv_freq;             /* (D/2) */
    model_layer *layers;         /* (n_layers) */
    model_activations act;
    void *act_block;
    int B, T;                    /* shape of the last forward */
} model;

/* Loads config.json and the safetensors weights of a model directory onto backend b. Every
 * tensor is checked against the shape config.json implies. */
int model_load(model *m, const char *dir, pesc_backend *b, pesc_error *err);
void model_free(model *m);

/* Runs B sequences of T tokens (tokens: host array, B*T) through the decoder up to the final
 * norm. Positions restart at 0 in every sequence. */
int model_forward(model *m, const int32_t *tokens, int B, int T, pesc_error *err);

/* After model_forward: sums next-token negative log-likelihood over targets (host, B*T; a
 * target < 0 is ignored) into *nll and counts the targets into *count. When logits_out is not
 * NULL it receives all B*T*V logits. Logits are made a slice of rows at a time, so long
 * sequences never hold (N, V) at once. */
int model_nll(model *m, const int32_t *targets, double *nll, long long *count,
              float *logits_out, pesc_error *err);

/* Next-token targets of one record as Hugging Face shifts them: target[t] = labels[t+1],
 * the last position gets -100. labels may be NULL (then the ids are the labels). */
void model_shift_targets(int32_t *targets, const int32_t *ids, const int32_t *labels, int T);

#endif
