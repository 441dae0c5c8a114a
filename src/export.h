/* export — a training checkpoint as a model directory in Camelidae's layout, which pesc loads
 * directly (--model DIR) for eval, generate and further tuning:
 *
 *   config.json        the base's, plus num_experts, topk, adapter_dim, moe_scaling and
 *                      output_router_logits: false (the keys of Camelidae's released configs);
 *                      architectures and model_type stay the base's
 *   model.safetensors  the base weights, LoRA merged in (W + alpha/rank B A), and every router
 *                      and adapter under the Camelidae names; a full-mode run's weights as
 *                      trained (a dense model: no PESC keys)
 *   tokenizer.json, tokenizer_config.json, special_tokens_map.json, generation_config.json,
 *   tokenizer.model    copied from the base when present (tokenizer.json from the run's
 *                      --tokenizer when it had one)
 *
 * Dtypes: a base weight that training did not change is copied byte for byte in its own dtype
 * (F32, F16 or BF16), so a BF16 base stays as small as it was; weights that LoRA was merged into,
 * full-mode weights, routers and adapters are F32, the precision they were trained in, so the
 * exported model computes what the checkpoint does (merging rounds once, in float32).
 *
 * Owns: finding a checkpoint's base, checking it is the one trained on, the exported layout.
 * The directory appears whole or not at all (util's atomic directories). Must not: parse
 * command lines or print. */
#ifndef PESC_EXPORT_H
#define PESC_EXPORT_H

#include "util.h"

typedef struct export_options {
    const char *checkpoint;      /* a step-N checkpoint, or a --save directory (its newest) */
    const char *out;             /* the directory to write */
    const char *base;            /* --model DIR|URL: the base, instead of state.json's */
    int force;                   /* replace an existing, non-empty out */
    const char *command;         /* "pesc export": its phases on a terminal's stderr
                                    (pesc_show_phase); NULL: none */
} export_options;

/* What was written, for the command's summary. */
typedef struct export_report {
    char checkpoint[4096];       /* the checkpoint directory exported */
    char base[4096];             /* the base model directory, or the --init-config file */
    long step;
    int full;                    /* a --train full checkpoint: a dense model */
    int experts, top_k, adapter_dim;
    double adapter_scale;
    int lora_rank;               /* LoRA rank merged into the weights, 0 = none */
    int tensors, kept;           /* tensors written, of them base weights copied as they were */
    double bytes;                /* of model.safetensors' tensors */
} export_report;

int export_checkpoint(const export_options *o, export_report *r, pesc_error *err);

#endif
