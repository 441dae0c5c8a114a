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
/* Why "auto" runs on the CPU although a GPU might have been used: the CUDA module could not
 * be opened, or a device was found but would not start. "" when auto found no GPU to try
 * (no driver, no device, a build without CUDA), and for cpu and cuda. */
const char *backend_gpu_passed_over(const pesc_backend *b);

/* Memory. backend_alloc returns NULL with a message when the backend is out of memory. */
void *backend_alloc(pesc_backend *b, size_t bytes, pesc_error *err);
void backend_free(pesc_backend *b, void *p);
void backend_upload(pesc_backend *b, void *dst, const void *src, size_t bytes);
void backend_download(pesc_backend *b, void *dst, const void *src, size_t bytes);
/* A download the host collects later: backend_download_wait, before it reads dst, gives dst
 * the bytes src holds once the work queued before the start is done, so that the host can
 * queue more work meanwhile (the GPU then never waits for it). One at a time: a second start
 * collects the first. Where the backend has no such download (the CPU's), it is made at once. */
void backend_download_start(pesc_backend *b, void *dst, const void *src, size_t bytes);
void backend_download_wait(pesc_backend *b);
void backend_synchronize(pesc_backend *b);
/* A promise that the n floats at p (the frozen base weights of a PESC model) will not change
 * until p is freed or another region is frozen: a backend may keep a faster copy for its
 * products (CUDA: a bf16 mirror, made once, instead of a conversion in every product). NULL
 * forgets the region. A no-op where a backend has no use for it (the CPU). */
void backend_freeze(pesc_backend *b, const float *p, size_t n);
/* A promise that the n floats at p (the trainables) will be written only by adamw_update over
 * exactly [p, p + n), backend_upload and backend_copy, until p is freed or another region is
 * named: a backend may keep their values in its products' format, rewritten by each update
 * (CUDA in bf16 math: bf16 values for the adapters' products, made by AdamW as it writes the
 * fp32 ones, instead of a conversion in every op). NULL forgets the region. A no-op where a
 * backend has no use for it (the CPU). */
void backend_trainables(pesc_backend *b, const float *p, size_t n);
/* A promise that the n floats at p (the trainables' gradients) are written only as the weight
 * gradients of the backward ops (matmul_backward's dweight and dbias, rmsnorm_backward's and
 * embedding_backward's, moe_adapter_backward's ddown and dup), and otherwise touched only by
 * the vector ops, adamw_update, upload, download and copy, until p is freed or another region
 * is named: a backend may then keep a vector_zero over exactly [p, p + n) pending, and have
 * each weight gradient's first writer write it instead of adding to zeros (CUDA). NULL forgets
 * the region. A no-op where a backend has no use for it (the CPU). */
void backend_gradients(pesc_backend *b, const float *p, size_t n);
/* Memory for n floats of frozen weights that only products read, which the backend may keep in
 * its products' own format (CUDA in bf16 math: bf16 alone, half the bytes of fp32). Upload,
 * download and copy (either side) convert as they go, and backend_free releases it; a download
 * gives the stored values (bf16-rounded). A product (matmul_forward and matmul_backward's
 * weight) takes it as its weight; no other op may read or write it. NULL where the backend
 * offers no such memory (the CPU; CUDA in other maths), or has no room: keep fp32 weights. */
float *backend_alloc_frozen(pesc_backend *b, size_t n);
/* The memory the backend computes in: the GPU's for CUDA (used = total - free, as nvidia-smi
 * shows it), the host's for the CPU (used = 0: the process's RSS says it; available =
 * MemAvailable). 0, or -1 when it cannot be read. */
typedef struct backend_memory {
    size_t used, available, total;
} backend_memory;
int backend_memory_info(pesc_backend *b, backend_memory *out);
/* Products with at most this many inputs or outputs (routers, LoRA's, a small model's
 * projections or head) may take a backend's slower, finer path: CUDA runs them in fp32, after
 * widening any operand it keeps in bf16 alone (backend_step_shape's narrow_compact_floats). */
#define BACKEND_NARROW_SIDE 64
/* A training step's shape, as the scratch a backend takes for it depends on it. */
typedef struct backend_step_shape {
    int batch, seq, heads, kv_heads, head_dim;
    size_t operand_floats;   /* the most one product operand holds, frozen weights aside */
    /* the most one holds but a slice of the logits' gradient (which one of CUDA's three bf16
     * operand copies holds at a time) and the FFN's intermediates (never copied) */
    size_t other_operand_floats;
    int experts, top_k, hidden, adapter_dim;   /* the PESC adapters (experts 0: none) */
    /* the most floats of bf16-alone memory (backend_alloc_compact's, or the frozen weights of
     * backend_alloc_frozen) that one product with at most BACKEND_NARROW_SIDE inputs or outputs
     * reads or writes */
    size_t narrow_compact_floats;
} backend_step_shape;
/* Bytes of scratch the backend still has to allocate for a training step of this shape,
 * beyond the buffers it is handed and the scratch it holds now, for the memory estimate a run
 * makes before it starts (CUDA: attention's backward or the adapters' work, and in bf16 math
 * bf16 copies of product operands and fp32 ones of compact memory, as its scratch grows). 0
 * where that scratch is small (the CPU backend's lives in host memory, a few rows per
 * thread). */
size_t backend_work_bytes(pesc_backend *b, const backend_step_shape *s);
/* Bytes a value takes in this backend's own format for activations: 4, or 2 where it keeps
 * them in bf16 (CUDA's bf16 math). moe_adapter_forward's saved rows (gathered, pre, act) need
 * that many bytes a value; backend_alloc_compact's memory holds values of this size. */
size_t backend_activation_bytes(pesc_backend *b);
/* Memory for n floats of activations (or their gradients) that the backend may keep in its own
 * format, backend_activation_bytes a value (CUDA in bf16 math: bf16 alone, behind an fp32
 * address range reserved on the host as for backend_alloc_frozen); where that is 4, plain
 * backend_alloc memory. Only these ops may take it, in any of their tensor arguments:
 * matmul_forward and matmul_backward without a bias, rmsnorm_forward's out, swiglu_forward,
 * swiglu_backward, geglu_forward, geglu_backward, vector_zero and vector_axpy; upload, download and copy (either side)
 * convert, and a value read back is the stored one (bf16-rounded). backend_free releases it.
 * NULL with a message when out of memory. */
float *backend_alloc_compact(pesc_backend *b, size_t n, pesc_error *err);
/* Copies bytes between two buffers of the backend. */
void backend_copy(pesc_backend *b, void *dst, const void *src, size_t bytes);
/* Device errors do not stop the program: a backend that fails (a CUDA or cuBLAS error, a
 * kernel fault) records the first failure, turns every later op into a no-op, and downloads
 * zeros. backend_check waits for the queued work and returns 0, or -1 with that failure
 * ("CUDA backend: <call> failed at <file>:<line>: <reason>"); call it once per step. The CPU
 * backend never fails and returns 0. */
int backend_check(pesc_backend *b, pesc_error *err);

/* Per-op timing, for `pesc bench --profile`. While a profile runs, every op waits for the
 * backend's queued work before and after it, and its wall time adds to an entry named after
 * the op (a product also by its shape, "matmul_forward 2048x5632"): the sum shows where a step
 * goes, at the price of the overlap between host and device that the waits remove. Its
 * host_seconds is the part before the wait after it: the host's own work to queue the op
 * (launches, cuBLAS's choice of kernels, a wait inside the op), as its queue was empty when it
 * began; on the CPU backend, all of it. Where a backend marks parts of an op's time (CUDA: the
 * adapters' and flash attention's), each part has an entry too, by the device's clock between the
 * marks (host_seconds: the host's over the same stretch), not counted in the step's sum.
 * backend_profile_stop ends the run and returns its entries, the ops slowest first, each op's
 * parts right after it in the order marked (the caller frees them), or -1 when none ran. */
typedef struct backend_profile_entry {
    char op[64];        /* a part's label, for a part */
    char part_of[64];   /* "" for an op; a part's op */
    double seconds;
    double host_seconds;   /* of seconds, the op's call before the wait after it */
    double flops;   /* the floating-point operations of its products; 0 for other ops */
    long calls;
} backend_profile_entry;
void backend_profile_start(pesc_backend *b);
int backend_profile_stop(pesc_backend *b, backend_profile_entry **entries);

/* ---- forward ops ---------------------------------------------------------------------------- */

/* out (N, C) = table[tokens] with table (V, C). */
void embedding_forward(pesc_backend *b, float *out, const int32_t *tokens, const float *table,
                       int N, int C);

/* out (N, OC) = inp (N, C) @ weight (OC, C)^T + bias (OC) — bias may be NULL. */
void matmul_forward(pesc_backend *b, float *out, const float *inp, const float *weight,
                    const float *bias, int N, int C, int OC);

/* out (N, C) = (offset + weight) * inp / sqrt(mean(inp^2) + eps); rstd (N) receives
 * 1/sqrt(...) for the backward pass and may be NULL. offset is 0, or 1 for Gemma's norms,
 * whose stored weight is the scale's difference from 1. */
void rmsnorm_forward(pesc_backend *b, float *out, float *rstd, const float *inp,
                     const float *weight, float offset, int N, int C, float eps);

/* Rotary embedding, Hugging Face rotate-half convention, on the first R (even, <= D) of each
 * head's D values of (N, H, D): angle = pos[n] * inv_freq[i], i < R/2, with cos and sin
 * scaled by `scale` (longrope's attention factor, else 1);
 * out[..i] = x[i] cos - x[i+R/2] sin, out[..i+R/2] = x[i+R/2] cos + x[i] sin; the other
 * D - R values pass through, unscaled (Phi-4-mini's partial rotary). out may equal inp. */
void rope_forward(pesc_backend *b, float *out, const float *inp, const int32_t *pos,
                  const float *inv_freq, int N, int H, int D, int R, float scale);

/* Causal grouped-query attention over B sequences of T tokens.
 * q (N, Hq, D), k and v (N, Hkv, D), out (N, Hq, D); query head h reads kv head h / (Hq/Hkv).
 * Scores are scaled by 1/sqrt(D), then, when softcap > 0, capped to softcap tanh(s / softcap)
 * (Gemma 2's attn_logit_softcapping) before the mask and the softmax. window > 0 limits each query at t to keys s with
 * t - window < s <= t (sliding-window attention); 0 means unlimited. seg_start (B, T), when
 * not NULL, packs several documents in a row: the query at t sees only keys s >= seg_start[t],
 * the row position where its document begins.
 * lse (B, Hq, T) receives each row's log-sum-exp for the backward pass and may be NULL. */
void attention_forward(pesc_backend *b, float *out, float *lse, const float *q, const float *k,
                       const float *v, int B, int T, int Hq, int Hkv, int D, int window,
                       float softcap, const int32_t *seg_start);

/* Generation: n new query rows (n, Hq, D) at positions past .. past+n-1 of one sequence,
 * against a KV cache (past+n, Hkv, D) that already holds their own keys and values. */
void attention_cached_forward(pesc_backend *b, float *out, const float *q, const float *k_cache,
                              const float *v_cache, int n, int past, int Hq, int Hkv, int D,
                              int window, float softcap);

/* Batched generation: one new token of each of n sequences cached in slots of slot_rows rows
 * (Hkv * D floats a row) of k_cache and v_cache. Token i's key and value (rows i of k and v,
 * (n, Hkv, D)) go into row past[i] of slot slots[i], and its query (row i of q, (n, Hq, D))
 * attends to that slot's rows 0 .. past[i], as attention_cached_forward does for one
 * sequence. slots and past (n each) are in backend memory; the slots are distinct. */
void attention_step_forward(pesc_backend *b, float *out, const float *q, const float *k,
                            const float *v, float *k_cache, float *v_cache,
                            const int32_t *slots, const int32_t *past, int n, int slot_rows,
                            int Hq, int Hkv, int D, int window, float softcap);

/* out (n) = silu(gate) * up, elementwise. */
void swiglu_forward(pesc_backend *b, float *out, const float *gate, const float *up, size_t n);
/* out (n) = gelu_tanh(gate) * up, elementwise: Gemma's FFN ("gelu_pytorch_tanh", GELU's tanh
 * approximation 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)))). */
void geglu_forward(pesc_backend *b, float *out, const float *gate, const float *up, size_t n);

/* out (n) = x + y, elementwise; out may alias either input. */
void residual_forward(pesc_backend *b, float *out, const float *x, const float *y, size_t n);

/* out (rows, backend memory) = the index of each row's largest value (x: rows x cols), the
 * lowest of equals; NaN is never the largest. -1 when that value is not finite (a row of NaN,
 * or an infinity at the top): a model that overflows, told by the max it finds anyway. The
 * greedy pick of a generated token without the logits leaving the device. */
void argmax_rows(pesc_backend *b, int32_t *out, const float *x, int rows, int cols);

/* losses (N) = logsumexp(y[n]) - y[n][targets[n]], from logits (N, V): y = logits, or when
 * softcap > 0 softcap tanh(logits / softcap) (Gemma 2's final_logit_softcapping);
 * targets < 0 (the -100 of Hugging Face labels) give a loss of 0. */
void crossentropy_forward(pesc_backend *b, float *losses, const float *logits,
                          const int32_t *targets, int N, int V, float softcap);

/* ---- PESC routing and adapters ------------------------------------------------------------ */

/* From router logits (N, E): the top-k experts of each token in descending order
 * (topk_idx (N, K)), their gate weights softmax(logits over the kept k) (topk_w (N, K)), the
 * softmax over all E (probs (N, E), for the load-balancing loss) and the log-sum-exp over all
 * E (lse (N), for the z-loss). A token whose source (sources (N), as moe_group's; NULL: none)
 * is negative is padding and routed nowhere: its experts are -1, its weights, probabilities
 * and lse 0, so that it is in no expert's group, no statistic, loss or gradient, and its
 * FFN output is the frozen FFN's alone. */
void moe_route_forward(pesc_backend *b, int32_t *topk_idx, float *topk_w, float *probs,
                       float *lse, const float *logits, const int32_t *sources, int N, int E,
                       int K);

/* One layer's (token, slot) pairs grouped by expert, and the routing statistics, for the host
 * to take in one small download (the group sizes decide the adapters' product shapes: on a
 * GPU that download is the one wait of a layer's forward).
 *   perm (N*K): the pairs p = n*K + j expert by expert, each expert's in increasing order;
 *     the pairs of padding (expert -1) are in none, so the groups may hold fewer than N*K
 *   stats (MOE_STATS(E, K, S) doubles): for each expert e, [e] its pairs, [E + e] its first
 *   choices (slot 0), [2E + e] the sum of their gate weights, [3E + e] the sum over tokens of
 *   probs[n][e]; [4E] the sum over tokens of the entropy of probs[n] (natural log), [4E + 1]
 *   the sum of lse[n]^2; [4E + 2 + j] the last token's expert in slot j; then (S, E): the
 *   pairs by the source of their token, sources (N) (-1, or S and above: counted nowhere;
 *   NULL with S = 0).
 * topk_idx, topk_w, probs and lse as moe_route_forward left them. */
#define MOE_STATS(E, K, S) (4 * (size_t)(E) + 2 + (size_t)(K) + (size_t)(S) * (size_t)(E))
void moe_group(pesc_backend *b, int32_t *perm, double *stats, const int32_t *topk_idx,
               const float *topk_w, const float *probs, const float *lse,
               const int32_t *sources, int N, int E, int K, int S);

/* Gradient of the router logits (overwritten, (N, E)) from the gate weights' gradient
 * dtopk_w (N, K), the load-balancing term and the z-loss term:
 *   through w = softmax(logits[topk]):  dr_T = w * (dw - sum(w * dw))
 *   aux (sum_i g_i * sum_n probs[n,i], g = aux_grad (E): the mean's 1/n in it):
 *     dr += p * (g - sum(p * g))
 *   z (z_scale * sum_n lse_n^2):  dr += 2 * z_scale * lse_n * p.
 * aux_grad may be NULL (no aux term). A padding token's row (topk_idx -1) is 0. */
void moe_route_backward(pesc_backend *b, float *dlogits, const float *dtopk_w,
                        const int32_t *topk_idx, const float *topk_w, const float *probs,
                        const float *lse, const float *aux_grad, float z_scale, int N, int E,
                        int K);

/* The adapters of one PESC layer over tokens grouped by expert, and the layer's residual sum
 * around them: y = x + h + the adapters' outputs. perm (N*K) lists (token, slot)
 * pairs as token*K + slot, grouped by expert; offsets (E+1, HOST memory) bounds each group.
 * For every pair j of expert e, with h_j = h[token], times row j of the dropout mask when
 * dropout > 0 (the (N*K, C) mask dropout_mask(dropout, seed) draws, made where it is applied
 * and never stored):
 *   gathered_j = h_j,  pre_j = D_e gathered_j,  act_j = GELU(pre_j),
 *   y[token] = x[token] + h[token] + sum over its slots of scale * topk_w[token, slot] U_e act_j
 * (a slot in no group, padding's, adds nothing).
 * x, h (N, C); y (N, C) may be x; x may be NULL, for y = h + the adapters' outputs (Gemma's
 * norm after the FFN comes before the residual sum); down (E, R, C); up (E, C, R); gathered
 * (rows, C), pre and act (rows, R) are saved for the backward pass, in the backend's own format
 * (fp32, or bf16 in CUDA's bf16 math: backend_activation_bytes) and layout
 * (backend_adapter_starts), which only this backend's moe_adapter_backward reads; scratch
 * (rows, C); rows = backend_adapter_rows(b, N*K, E). The sum with x and h is the FFN's
 * residual: made here, it costs the GPU no pass of its own. */
void moe_adapter_forward(pesc_backend *b, float *y, const float *x, float *gathered, float *pre,
                         float *act, float *scratch, const float *h, float dropout, uint64_t seed,
                         const float *down, const float *up, const int32_t *perm,
                         const int *offsets, const float *topk_w, int N, int K, int E, int C,
                         int R, float scale);

/* Backward of moe_adapter_forward (the same dropout and seed) from dy = d loss / d y: writes
 * dh = dy + the adapters' part (N, C; dh may be dy: the residual's gradient, which is also
 * x's), accumulates ddown (E, R, C) and dup (E, C, R) when not NULL, overwrites dtopk_w
 * (N, K; 0 for a slot in no group). scratch (rows, C), scratch_r (rows, R), rows as the
 * forward's. */
void moe_adapter_backward(pesc_backend *b, float *dh, float *ddown, float *dup, float *dtopk_w,
                          float *scratch, float *scratch_r, const float *dy,
                          const float *gathered, const float *pre, const float *act,
                          float dropout, uint64_t seed, const float *down, const float *up,
                          const int32_t *perm, const int *offsets, const float *topk_w, int N,
                          int K, int E, int C, int R, float scale);

/* The rows moe_adapter_forward's and moe_adapter_backward's row buffers need for pairs (N*K)
 * slots of E experts: pairs, or more where the backend lays each expert's rows out on a
 * multiple of some rows, or all alike (CUDA: PESC_CUDA_EXPERT_ALIGN, PESC_CUDA_EXPERT_ROOM;
 * moe_rows.h). */
size_t backend_adapter_rows(pesc_backend *b, size_t pairs, int E);
/* The bytes of fp32 logits the model makes at a time, a slice of rows (at least 256 rows, as
 * model_forward.c's logit_rows takes them): 64 MiB, or the backend's own (CUDA:
 * PESC_CUDA_LOGITS_MIB). */
size_t backend_logit_bytes(pesc_backend *b);
/* Where those rows put each expert's pairs, for the groups offsets (E + 1) bounds among pairs
 * slots (moe_rows.h): returns block, and fills starts (E + 1). Expert e's i-th pair, in perm's
 * order, is on row e * block + i for i below block, else starts[e] + i - block
 * (pesc_adapter_row); the other rows up to starts[E] are zeros. block 0 and starts = offsets
 * where the backend keeps perm's order. */
int backend_adapter_starts(pesc_backend *b, int *starts, const int *offsets, int E,
                           size_t pairs);

/* ---- backward ops: gradients are ACCUMULATED (+=) unless the comment says overwritten;
 * a weight gradient pointer of NULL means the weight is frozen and its gradient is skipped. */

void embedding_backward(pesc_backend *b, float *dtable, const float *dout, const int32_t *tokens,
                        int N, int C);
/* dinp (N, C) += dout @ weight; dweight (OC, C) += dout^T @ inp; dbias (OC) += colsum(dout). */
void matmul_backward(pesc_backend *b, float *dinp, float *dweight, float *dbias,
                     const float *dout, const float *inp, const float *weight, int N, int C,
                     int OC);
void rmsnorm_backward(pesc_backend *b, float *dinp, float *dweight, const float *dout,
                      const float *inp, const float *weight, float offset, const float *rstd,
                      int N, int C);
/* dinp (overwritten; may equal dout) = the transpose of rope_forward's map applied to dout. */
void rope_backward(pesc_backend *b, float *dinp, const float *dout, const int32_t *pos,
                   const float *inv_freq, int N, int H, int D, int R, float scale);
/* dq, dk, dv overwritten. out and lse are attention_forward's. */
void attention_backward(pesc_backend *b, float *dq, float *dk, float *dv, const float *dout,
                        const float *q, const float *k, const float *v, const float *out,
                        const float *lse, int B, int T, int Hq, int Hkv, int D, int window,
                        float softcap, const int32_t *seg_start);
/* dgate, dup overwritten (dgate may equal dout). */
void swiglu_backward(pesc_backend *b, float *dgate, float *dup, const float *dout,
                     const float *gate, const float *up, size_t n);
/* geglu_forward's, as swiglu_backward. */
void geglu_backward(pesc_backend *b, float *dgate, float *dup, const float *dout,
                    const float *gate, const float *up, size_t n);
/* dlogits (N, V) overwritten with (softmax(y) - onehot(target)) * scale, y as in
 * crossentropy_forward, times dy/dlogits = 1 - (y / softcap)^2 when softcap > 0; rows with
 * target < 0 become 0. May equal logits. losses (N), when not NULL, receives what
 * crossentropy_forward would, from the same softmax (training needs both; one pass over the
 * logits). */
void crossentropy_backward(pesc_backend *b, float *dlogits, float *losses, const float *logits,
                           const int32_t *targets, float scale, int N, int V, float softcap);

/* ---- vectors and the optimizer ------------------------------------------------------------ */

void vector_zero(pesc_backend *b, float *x, size_t n);
/* y += alpha * x */
void vector_axpy(pesc_backend *b, float *y, const float *x, float alpha, size_t n);
void vector_scale(pesc_backend *b, float *x, float alpha, size_t n);
/* mask[i] = 0 with probability p, else 1 / (1 - p): the draw of dropout_hash.h, the same on
 * every backend for the same seed. */
void dropout_mask(pesc_backend *b, float *mask, size_t n, float p, uint64_t seed);
/* x[i] += magnitude * (2 u - 1), u the uniform draw of dropout_hash.h for (seed, i): noise
 * uniform in [-magnitude, magnitude), the same on every backend (NEFTune's on embeddings). */
void vector_add_uniform(pesc_backend *b, float *x, size_t n, float magnitude, uint64_t seed);
/* sum of squares, accumulated in double */
double vector_sumsq(pesc_backend *b, const float *x, size_t n);
/* out[i] = vector_sumsq of x[i * chunk .. (i + 1) * chunk) for i < n, the same value as that
 * call gives. out (n doubles) is in the backend's memory, so nothing waits for the device: the
 * adapters' norms, E experts of a layer a call, come to the host in one download a step. */
void vector_sumsq_chunks(pesc_backend *b, double *out, const float *x, size_t chunk, int n);

/* One AdamW step as torch.optim.AdamW: p -= lr*wd*p; m, v moments; bias-corrected update.
 * The gradient is grads[i] * grad_scale (a float product: clipping's scale, applied in the
 * step instead of a pass of its own; 1 for none). step counts from 1. delta (n), when not
 * NULL, receives each parameter's before - after (in float, as the subtraction gives it): the
 * update, for its norm, without a copy of the parameters. */
void adamw_update(pesc_backend *b, float *params, const float *grads, float grad_scale, float *m,
                  float *v, float *delta, size_t n, float lr, float beta1, float beta2, float eps,
                  float weight_decay, int step);

#endif
