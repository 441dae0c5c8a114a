/* pesc — the crafting options of Parameter-Efficient Sparsity Crafting (DESIGN section 1) and
 * their command-line flags.
 *
 * Owns: the options, their defaults, parsing and validation. Must not: touch weights (model.c
 * holds the crafted tensors; this module only says what to craft). */
#ifndef PESC_PESC_H
#define PESC_PESC_H

#include <stddef.h>

#include "util.h"

typedef enum pesc_train_mode { TRAIN_PESC, TRAIN_FULL } pesc_train_mode;

/* Where LoRA can sit: the attention and FFN projections. */
enum { LORA_Q, LORA_K, LORA_V, LORA_O, LORA_GATE, LORA_UP, LORA_DOWN, LORA_SITES };

typedef struct pesc_options {
    pesc_train_mode mode;        /* pesc: routers + adapters (+ LoRA); full: every weight */
    int experts;                 /* E, 8 */
    int top_k;                   /* K, 2 */
    int adapter_dim;             /* R, 64 */
    float adapter_scale;         /* s (moe_scaling), 0.25 */
    float adapter_dropout;       /* on the adapter input while training, 0.1 */
    float aux_coef;              /* alpha of the Switch load-balancing loss, 0.01 */
    float z_coef;                /* router z-loss, 0 */
    int lora_rank;               /* 0 = no LoRA */
    float lora_alpha;            /* 16 */
    unsigned lora_targets;       /* bit (1 << LORA_*) per site; all seven by default */
    unsigned given;              /* PESC_GIVEN_* bits: set on the command line, not defaults */
} pesc_options;

/* What pesc_apply_option records in `given`: a crafted model's own values win over defaults
 * but not over flags that contradict them (those are refused). */
enum {
    PESC_GIVEN_EXPERTS = 1u << 0, PESC_GIVEN_TOP_K = 1u << 1, PESC_GIVEN_ADAPTER_DIM = 1u << 2,
    PESC_GIVEN_ADAPTER_SCALE = 1u << 3, PESC_GIVEN_LORA_RANK = 1u << 4,
    PESC_GIVEN_LORA_ALPHA = 1u << 5, PESC_GIVEN_LORA_TARGETS = 1u << 6,
    PESC_GIVEN_ADAPTER_DROPOUT = 1u << 7, PESC_GIVEN_AUX_COEF = 1u << 8,
    PESC_GIVEN_Z_COEF = 1u << 9, PESC_GIVEN_MODE = 1u << 10
};

/* The ranges the crafting flags accept. Files that record the options (a checkpoint's
 * state.json, a trainables file's metadata) are held to them too: a damaged or hand-edited
 * value is refused as the flag would refuse it, not wrapped into an int or an infinity. */
#define PESC_MAX_EXPERTS 256          /* --experts, --top-k: 1 to this */
#define PESC_MAX_ADAPTER_DIM 65536    /* --adapter-dim: 1 to this */
#define PESC_MAX_LORA_RANK 65536      /* --lora-rank: 0 (off) to this */
#define PESC_MAX_COEF 1e6             /* --adapter-scale, --aux-coef, --z-coef, --lora-alpha:
                                         0 to this */
#define PESC_MAX_DROPOUT 0.99         /* --adapter-dropout: 0 to this */

void pesc_options_default(pesc_options *o);

/* "q,k,v,o,gate,up,down" (any subset) into a bit mask. */
int pesc_parse_lora_targets(const char *list, unsigned *mask, pesc_error *err);
const char *pesc_lora_site_name(int site);    /* "q", ..., "down" */

/* The crafting flags shared by every command that builds a PESC model. pesc_option_table
 * returns getopt long options (terminated) whose `val` is >= PESC_OPT_BASE; pesc_apply_option
 * takes one of them with its argument. Returns 0, or -1 with a message naming the flag. */
#define PESC_OPT_BASE 0x1000
struct option;
const struct option *pesc_option_table(void);
/* Writes a command's own options followed by the crafting options, terminated, into table
 * (cap entries, enough for both: asserted). */
void pesc_option_merge(struct option *table, size_t cap, const struct option *own,
                       size_t n_own);
int pesc_apply_option(pesc_options *o, int val, const char *arg, pesc_error *err);
/* Checks that the options fit together (top-k at most the number of experts). */
int pesc_options_check(const pesc_options *o, pesc_error *err);
/* Usage lines for --help. */
extern const char pesc_options_help[];

#endif
