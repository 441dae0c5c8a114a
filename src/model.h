/* model — a Llama-family decoder on a backend: weights loaded from a Hugging Face checkpoint,
 * PESC crafting (routers + adapters on every FFN, optional LoRA), the forward pass, the
 * backward pass of the trainable part, and next-token losses.
 *
 * Owns: the weight layout (one backend allocation carved into tensors, the trainables in
 * another, gradients mirroring them), the activation buffers, the order of ops.
 * Must not: parse files itself (safetensors.c, hfconfig.c do) or touch the device except
 * through the backend. KV-cache generation arrives with the generate command. */
#ifndef PESC_MODEL_H
#define PESC_MODEL_H

#include <stdint.h>

#include "backend.h"
#include "hfconfig.h"
#include "pesc.h"
#include "util.h"

/* Shapes use C = hidden_size, F = intermediate_size, D = head_dim, Hq / Hkv = heads. */
typedef struct model_layer {
    float *attn_norm;            /* (C) */
    float *wq, *bq;              /* (Hq*D, C), (Hq*D) or NULL */
    float *wk, *bk;              /* (Hkv*D, C), (Hkv*D) or NULL */
    float *wv, *bv;              /* (Hkv*D, C), (Hkv*D) or NULL */
    float *wo, *bo;              /* (C, Hq*D), (C) or NULL */
    float *q_norm, *k_norm;      /* (D) each head's RMSNorm of q and k (qwen3, gemma3), or NULL */
    float *attn_post_norm;       /* (C) the attention's output normed (gemma3), or NULL */
    float *ffn_norm;             /* (C) */
    float *ffn_post_norm;        /* (C) the FFN's output normed (gemma3), or NULL */
    float *w_gate, *w_up;        /* (F, C) */
    float *w_down;               /* (C, F) */
} model_layer;

/* The crafted part of one layer: in the trainable block. LoRA pairs are NULL where off. */
typedef struct pesc_layer {
    float *router;               /* (E, C) */
    float *down;                 /* (E, R, C) adapter_down of every expert */
    float *up;                   /* (E, C, R) adapter_up of every expert */
    float *lora_a[LORA_SITES];   /* (rank, in) */
    float *lora_b[LORA_SITES];   /* (out, rank) */
} pesc_layer;

/* What one layer's forward keeps for its backward (N tokens). In inference every layer
 * shares one set. Routing fields are NULL in a dense model; lora_t[site] where LoRA is off. */
typedef struct layer_acts {
    float *x_in;                 /* (N, C) residual stream entering the layer */
    float *xn1, *rstd1;          /* (N, C), (N) attention norm; xn1 compact but where LoRA
                                  * adapts q, k or v */
    float *q, *k, *v;            /* (N, Hq*D), (N, Hkv*D) x2, after RoPE; compact but where
                                  * LoRA adapts their products (want_layer says when) */
    float *q_raw, *k_raw;        /* qk_norm: q and k before their norms, (N, Hq*D), (N, Hkv*D) */
    float *rstd_q, *rstd_k;      /* qk_norm: (N*Hq), (N*Hkv) */
    float *att, *lse;            /* (N, Hq*D) compact but with LoRA at o, (B, Hq, T) */
    float *x_mid;                /* (N, C) after the attention residual */
    float *xn2, *rstd2;          /* (N, C), (N) FFN norm: the FFN's and router's input */
    float *gate, *up, *act;      /* (N, F) pre-activation gate, up, silu(gate) * up; compact
                                  * (gate and up but where LoRA adapts them) */
    float *h;                    /* (N, C) frozen FFN output, computed once per token */
    /* sandwich_norms (Gemma): the o projection's output and a crafted FFN's (h and the
     * adapters'), each before its norm (a dense FFN's is h), and their norms' rstd */
    float *att_out, *rstd_att;   /* (N, C), (N) */
    float *ffn_out, *rstd_ffn;   /* (N, C) crafted only, (N) */
    float *router_logits, *probs, *router_lse;   /* (N, E), (N, E), (N) */
    int32_t *topk_idx;           /* (N, K) */
    float *topk_w;               /* (N, K) */
    int32_t *perm;               /* (N*K) (token, slot) pairs grouped by expert */
    int *offsets;                /* (E+1) host memory: group bounds */
    /* (rows, C), (rows, R), (rows, R), rows = backend_adapter_rows(N*K, E), in the backend's
     * format (backend_activation_bytes) and layout (backend_adapter_starts) */
    float *gathered, *pre, *gelu;
    float *lora_t[LORA_SITES];   /* (N, rank) scaled LoRA inner activations */
} layer_acts;

/* Activation buffers for `capacity` tokens, carved from two backend allocations: the FFN's
 * intermediates and their gradients (marked compact) from backend_alloc_compact's, kept in the
 * backend's own format (bf16 in CUDA's bf16 math), the rest from plain memory. */
typedef struct model_activations {
    int capacity;                /* tokens */
    size_t bytes;                /* both allocations */
    int per_layer;               /* 1: each layer keeps its own (training) */
    int recompute;               /* training keeps only each layer's x_in (model.recompute) */
    uint64_t *mask_seed;         /* (n_layers, training) host: each layer's dropout seed */
    int logit_rows;              /* tokens whose logits are materialised at once */
    layer_acts *layers;          /* (n_layers) */
    float *x;                    /* (N, C) residual stream leaving the last layer */
    float *xn, *rstd;            /* (N, C), (N) final norm */
    float *logits;               /* (logit_rows, V) */
    float *losses;               /* (N) next-token loss of each row */
    float *scratch;              /* (rows as gathered's, or N, max(C, F, Hq*D)) */
    float *scratch_r;            /* (rows as gathered's, R) */
    int32_t *tokens, *targets, *pos;   /* (N) */
    int32_t *seg;                /* (N) row position where each token's document starts */
    int packed;                  /* seg is in use */
    const float *freq;           /* RoPE's inv_freq for these positions (longrope: past the
                                  * original context, its long factors' ones) */
    int dropout;                 /* the last forward applied the adapters' dropout masks */
    int32_t *sources;            /* (N) the --data source of each token (PESC, with a layout) */
    double *route_stats;         /* MOE_STATS(E, K, MODEL_MAX_SOURCES): a layer's moe_group */
    double *route_host;          /* (as route_stats) host: their download */
    /* gradients (training only) */
    float *dx, *dxn, *dh;        /* (N, C) */
    float *dq, *dk, *dv, *datt;  /* (N, Hq*D), (N, Hkv*D) x2, (N, Hq*D); compact as q, k, v
                                  * and att (want_gradients says when) */
    float *dq_raw, *dk_raw;      /* qk_norm: the gradients before the norms, as dq and dk */
    float *dgate, *dup, *dact;   /* (N, F) compact */
    float *drouter, *dtopk_w;    /* (N, E), (N, K) */
    float *aux_grad;             /* (L, E) d aux / d P of each layer */
    float *dlora;                /* (N, rank) */
} model_activations;

/* Losses of the last training forward (before any scaling for accumulation). */
typedef struct model_losses {
    double ce;                   /* mean NLL over the counted targets */
    double aux;                  /* load balancing, summed over layers */
    double z;                    /* router z-loss, summed over layers */
    long long targets;           /* counted (non-ignored) targets */
} model_losses;

/* Routing of the last forward, counted on the backend while grouping tokens (moe_group; the
 * host takes them with the group sizes, which it needs for the GEMM shapes anyway).
 * L = n_layers, E = experts. MODEL_MAX_SOURCES is also the CUDA kernels' GROUP_MAX_SOURCES. */
#define MODEL_MAX_SOURCES 16
typedef struct model_routing {
    int *counts;                 /* (L, E) (token, slot) assignments */
    int *first;                  /* (L, E) first choices (slot 0) */
    double *gate_sum;            /* (L, E) sum of gate weights of the assignments */
    double *entropy;             /* (L) mean entropy of the softmax over all E */
    int *source_counts;          /* (MODEL_MAX_SOURCES, L, E) assignments per --data source */
    int n_sources;               /* sources seen in the last forward (max index + 1) */
    int32_t *last_experts;       /* (L, K) experts of the last token */
    long long tokens;            /* tokens routed in the last forward */
} model_routing;

/* How a training batch is laid out when rows are packed with several documents. Any field
 * may be NULL: positions 0..T-1 per row, one document per row, no source statistics. */
typedef struct model_layout {
    const int32_t *positions;    /* (B*T) position within the document */
    const int32_t *doc_ids;      /* (B*T) document within the row; attention stays inside it */
    const int32_t *sources;      /* (B*T) --data index of each token, -1 for padding */
} model_layout;

/* A named trainable tensor (a view into the trainable block). */
typedef struct model_tensor {
    char name[96];
    float *data;
    int ndim;
    int64_t shape[2];
    size_t n;
} model_tensor;

typedef struct model {
    hf_config config;
    pesc_backend *backend;       /* not owned */
    void *param_block;           /* every base weight, one allocation */
    long long n_params;
    size_t param_floats;         /* floats in param_block (tensors padded) */
    float *embed;                /* (V, C) */
    float *lm_head;              /* (V, C); equals embed when tied */
    float *final_norm;           /* (C) */
    float *inv_freq;             /* (D/2) */
    float *inv_freq_long;        /* (D/2) longrope's past the original context, else NULL */
    float *inv_freq_local;       /* (D/2) Gemma's sliding layers' (rope_local_theta), else NULL */
    /* where the base files keep the tensors named model.*: "" (there), or for
     * Gemma3ForConditionalGeneration's text model language_model.model. (the hub's files) or
     * model.language_model. (transformers' since 4.52); model_file_name */
    char text_prefix[32];
    char source[1024];           /* the directory model_load read, "" otherwise: messages name it */
    model_layer *layers;         /* (n_layers) */
    model_tensor *base_tensors;  /* named views of every base weight, checkpoint order */
    int n_base_tensors;
    /* The weights only products read, where the backend keeps frozen weights in its own
     * format (backend_alloc_frozen: CUDA in bf16 math), from the load on; param_block then
     * holds the rest. NULL otherwise, and after model_unpack. With it, the first MODEL_SAMPLE
     * values of every base tensor as loaded, which checkpoints fingerprint. */
    void *packed_block;
    size_t packed_floats;
    float *base_samples;         /* (n_base_tensors, MODEL_SAMPLE), with packed_block */

    /* crafting (model_craft) */
    int crafted;                 /* PESC layers present */
    pesc_options pesc;
    pesc_layer *pesc_layers;     /* (n_layers) when crafted */
    float *train_block;          /* trainables: the crafted block, or param_block in full mode */
    size_t n_train;              /* floats in train_block */
    float *grad_block;           /* (n_train) gradients, same layout */
    void *crafted_block;         /* allocation behind the PESC trainables */
    model_tensor *trainables;    /* named views, in file order */
    int n_trainables;
    uint64_t rng;                /* dropout */
    int recompute;               /* training: keep only each layer's input and run the layer
                                    again in the backward pass (less memory, ~1/3 more work) */
    float neftune;               /* NEFTune's alpha: training steps add uniform noise of
                                    alpha / sqrt(T C) to the embeddings; 0: none */
    model_routing routing;       /* when crafted */
    const int32_t *cur_sources;  /* host, during a forward with a layout */

    /* generation: keys and values of every layer for the tokens so far, of one sequence
     * (cache_len of them) or of cache_slots (model_cache_slots: slot_len[s] each) */
    float *k_cache, *v_cache;    /* (n_layers, cache_rows, Hkv*D) each; a slot's rows are
                                    cache_capacity apart */
    int cache_capacity, cache_len, cache_rows, cache_slots;
    int *slot_len;
    int32_t *picks;              /* (pick_rows) backend: model_decode_step_greedy's ids */
    int pick_rows;
    const int *step_slots;       /* a step's tokens' slots (model_decode_step) */
    const int *prompt_slots;     /* a pass of prompts' slots and lengths */
    const int *prompt_lens;      /* (model_decode_prompts) */

    model_activations act;
    void *act_block;
    float *act_compact;          /* the compact activations' allocation */
    int B, T;                    /* shape of the last forward */
    model_losses losses;
} model;

/* Loads config.json and the safetensors weights of a model directory onto backend b. Every
 * tensor is checked against the shape config.json implies. A directory written by pesc export
 * (config.json with num_experts, topk, adapter_dim, moe_scaling) comes back crafted, its
 * routers and adapters loaded: a missing or misshapen one is an error naming the tensor. */
int model_load(model *m, const char *dir, pesc_backend *b, pesc_error *err);
/* Phi-3's files join q, k, v as qkv_proj and gate, up as gate_up_proj (c->fused_proj): for a
 * base tensor name of a part, the joined tensor's number of parts (3, 2), its name, its rows
 * and the part's first row in it; 0 for any other name or model. */
/* The name base tensor NAME has in the model's files (model.text_prefix) */
void model_file_name(const model *m, const char *name, char *out, size_t len);
int model_fused_part(const hf_config *c, const char *name, char *joined, size_t len,
                     int64_t *first, int64_t *rows);
void model_free(model *m);

/* A model of the given shape with random weights (benchmarks, tests); no files. */
int model_init_random(model *m, const hf_config *c, pesc_backend *b, uint64_t seed,
                      pesc_error *err);
/* The same from a config.json file (--init-config): the seed makes the same weights again. */
int model_init_config(model *m, const char *config_path, pesc_backend *b, uint64_t seed,
                      pesc_error *err);

/* Loading (model_load, model_init_random) puts the weights that only products read (each
 * layer's q, k, v, o, gate, up and down, and an untied LM head) in the backend's memory for
 * frozen weights where it has some (CUDA in bf16 math keeps them as bf16 alone, half their
 * fp32 bytes), the rest in param_block. model_unpack gathers them all in one fp32 block again,
 * the values as stored (bf16-rounded), for --train full, which trains them; model_craft calls
 * it. */
int model_unpack(model *m, pesc_error *err);
/* The base will not change from here on (crafted, or only evaluated): backend_freeze of the
 * fp32 weights where a product still reads them (all of them when nothing is packed; a tied LM
 * head when the rest is). */
void model_freeze_base(model *m);
/* The first n (<= MODEL_SAMPLE) values of base tensor i as loaded, even once packing rounded
 * them (a checkpoint's fingerprint of its base). */
#define MODEL_SAMPLE 16
void model_base_sample(model *m, int i, float *out, size_t n);

/* Crafts the loaded dense model: adds routers (Kaiming-uniform), adapters (down
 * Kaiming-uniform, up = 0, so the crafted model equals the dense one exactly) and LoRA pairs
 * (A Kaiming-uniform, B = 0), and allocates their gradients. In full mode nothing is added:
 * every base weight becomes trainable. seed drives the initialisation and dropout. */
int model_craft(model *m, const pesc_options *o, uint64_t seed, pesc_error *err);

/* On a crafted model, model_craft crafts again with the options given (they must keep the
 * experts, top-k and adapter width): routers, adapters and LoRA pairs both craftings share keep
 * their values, new LoRA pairs start with B = 0, so the model computes what it did. Full mode
 * is refused there (it would drop the routers and adapters).
 *
 * model_merge_lora folds every LoRA pair into its frozen weight, W += (alpha / rank) B A, and
 * crafts the model again without LoRA: the same function up to float32 rounding, with the
 * weights Camelidae's modeling code expects. Nothing to do without LoRA. */
int model_merge_lora(model *m, pesc_error *err);
/* The frozen weight a LoRA site of a layer adapts (wq for LORA_Q, ...). */
float *model_lora_weight(const model *m, int layer, int site);

/* Reads trainables by name from a safetensors file (Camelidae names for routers and adapters;
 * `...{q,k,v,o}_proj.lora_{A,B}.weight`, `...mlp.{gate,up,down}_proj.lora_{A,B}.weight`). When
 * the model is not crafted yet, the file's __metadata__ (num_experts, topk, adapter_dim,
 * moe_scaling, lora_rank, lora_alpha) says how to craft it first. Every trainable must be in
 * the file with its shape. */
int model_load_trainables(model *m, const char *path, pesc_error *err);
/* Writes the trainables with that metadata (atomically). */
int model_save_trainables(model *m, const char *path, pesc_error *err);

/* Training: forward with every activation kept, the losses, and the backward pass, adding
 * loss_scale * d(ce + aux + z)/d(trainable) into grad_block (zero it with model_zero_grad
 * first; accumulation over micro-batches is repeated calls). tokens and targets are host
 * arrays (B*T); targets as from model_shift_targets; layout may be NULL (see model_layout).
 * dropout: apply adapter dropout. */
int model_train_step(model *m, const int32_t *tokens, const int32_t *targets,
                     const model_layout *layout, int B, int T, float loss_scale, int dropout,
                     model_losses *out, pesc_error *err);
void model_zero_grad(model *m);
/* Bytes of the activation and gradient buffers a pass over B x T tokens allocates (training:
 * as model_train_step; recompute: as under model.recompute), for the memory estimate a run
 * makes before it starts. */
size_t model_activation_bytes(model *m, int B, int T, int training, int recompute);
/* Bytes a training step over B x T tokens allocates beyond the model and the optimizer: its
 * activations and gradients (as model_activation_bytes) and the backend's scratch for them
 * (backend_work_bytes), for the memory estimate a run makes before it starts. */
size_t model_step_bytes(model *m, int B, int T, int recompute);

/* Runs B sequences of T tokens (tokens: host array, B*T) through the decoder up to the final
 * norm. Positions restart at 0 in every sequence. */
int model_forward(model *m, const int32_t *tokens, int B, int T, pesc_error *err);

/* After model_forward: sums next-token negative log-likelihood over targets (host, B*T; a
 * target < 0 is ignored) into *nll and counts the targets into *count. When logits_out is not
 * NULL it receives all B*T*V logits (Gemma 2's softcapped, as the loss takes them). Logits are made a slice of rows at a time, so long
 * sequences never hold (N, V) at once. */
int model_nll(model *m, const int32_t *targets, double *nll, long long *count,
              float *logits_out, pesc_error *err);

/* model_nll for each of the B sequences of the last forward: seq_nll[b] sums sequence b's
 * targets (0 where it has none). Multiple-choice scoring runs a question's options as one
 * batch, an option a sequence. */
int model_nll_sequences(model *m, const int32_t *targets, double *seq_nll, pesc_error *err);

/* Held-out scoring inside a training run: model_forward (no dropout) then model_nll, in the
 * training buffers the run already holds when B x T fits them, so scoring between steps
 * allocates nothing. */
int model_score(model *m, const int32_t *tokens, const int32_t *targets, int B, int T,
                double *nll, long long *count, pesc_error *err);
/* The same, each sequence's sum (model_nll_sequences): multiple-choice questions in a run.
 * In the training buffers, grown when B x T does not fit them: keep it within a step's. */
int model_score_sequences(model *m, const int32_t *tokens, const int32_t *targets, int B,
                          int T, double *seq_nll, pesc_error *err);

/* Generation with a KV cache. model_cache_reset empties the cache (allocating room for
 * `capacity` tokens); model_decode appends n tokens (a prompt, then one token at a time) and
 * writes the logits (V) of the last one into logits (host). Uses the current weights with no
 * dropout. *experts (optional, n_layers * K) receives the last token's experts per layer. */
int model_cache_reset(model *m, int capacity, pesc_error *err);
/* Keeps the first `keep` cached tokens (at most those cached), the rest forgotten, with room
 * for `capacity` in all: a conversation's next turn decodes only what differs from what the
 * cache already holds. */
int model_cache_keep(model *m, int keep, int capacity, pesc_error *err);
/* How many of `wanted` answer tokens fit after a prompt of n tokens in the model's context
 * (max_position_embeddings): wanted, or fewer; -1 (err says so) when the prompt fills it. */
int model_answer_room(const model *m, int n, int wanted, pesc_error *err);
int model_decode(model *m, const int32_t *tokens, int n, float *logits, int32_t *experts,
                 pesc_error *err);

/* Batched generation: `slots` sequences of at most `capacity` tokens each, all empty (the
 * one sequence's cache is forgotten). Slots take their prompts with model_decode_prompts,
 * then model_decode_step appends one token to each of several slots in one pass: what
 * answering many prompts greedily (answers.h) runs on, a pass for many where model_decode is
 * one each. Both write the logits (V) of each slot's last token. A pass takes one RoPE table
 * (longrope's); sequences on either side of its original context run a pass each. */
int model_cache_slots(model *m, int slots, int capacity, pesc_error *err);
int model_decode_step(model *m, const int *slots, const int32_t *tokens, int n, float *logits,
                      pesc_error *err);
/* As model_decode_step, but the greedy pick of each slot's next token (the lowest id of the
 * largest logit, as sampler_next's greedy) goes into picks (n, host) instead of the logits:
 * argmax_rows on the backend, so on a GPU n ids reach the host, not n x V logits (but for a
 * final softcap, applied on the host: those logits are picked there). A slot whose logits
 * have no finite largest value fails it (model_fail_logits). */
int model_decode_step_greedy(model *m, const int *slots, const int32_t *tokens, int n,
                             int32_t *picks, pesc_error *err);
/* n prompts at once into slots[0, n) (distinct; any order, any others going on): row i of
 * tokens (n, T) holds lens[i] tokens and padding after them (any ids); each of those slots
 * then holds its prompt alone, whatever it held before. */
int model_decode_prompts(model *m, const int *slots, const int32_t *tokens, const int *lens,
                         int n, int T, float *logits, pesc_error *err);
/* -1 with the message for logits with no finite largest value while generating (a pick of
 * -1 from sampler_next, or from model_decode_step_greedy, which returns this): m's weights,
 * or its adapters, overflow on this input. It names the model and what to try. */
int model_fail_logits(const model *m, pesc_error *err);
/* "; try --backend cpu to rule out the device" where m runs on a device, else "": the end of a
 * message that blames the model's values for not being finite. */
const char *model_device_advice(const model *m);
/* Frees the cache (a training run's evaluations give its memory back to the steps). */
void model_cache_release(model *m);
/* The slots of capacity tokens that fit in a share of the backend's free memory (1 to max). */
int model_cache_slots_fitting(model *m, int capacity, int max);

/* Next-token targets of one record as Hugging Face shifts them: target[t] = labels[t+1],
 * the last position gets -100. labels may be NULL (then the ids are the labels). */
void model_shift_targets(int32_t *targets, const int32_t *ids, const int32_t *labels, int T);

#endif
