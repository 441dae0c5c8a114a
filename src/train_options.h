/* train_options — the TRAIN OPTIONS of DESIGN section 5, shared by `pesc tui` and
 * `pesc train`: parsing, defaults, help text. Must not: load anything. */
#ifndef PESC_TRAIN_OPTIONS_H
#define PESC_TRAIN_OPTIONS_H

#include <stdint.h>

#include "answers.h"
#include "dataset.h"
#include "optim.h"
#include "pesc.h"
#include "stats.h"
#include "util.h"

#define TRAIN_MAX_SINKS 8
#define TRAIN_MAX_EVAL 8

/* Tokens in one micro-batch (--batch x --seq) at most: index arithmetic stays in int. */
#define TRAIN_MAX_TOKENS (1 << 24)

/* The ranges of the flags a checkpoint's state.json records too; checkpoint.c holds the file
 * to them, so that a resumed run gets no value its command line could not have given. */
#define TRAIN_MAX_SEQ DS_MAX_SEQ       /* --seq: 2 to this */
#define TRAIN_MAX_BATCH (1 << 16)      /* --batch, --grad-accum: 1 to this */
#define TRAIN_MAX_STEPS (1L << 40)     /* --steps, --warmup, --save-every, --eval-every */
#define TRAIN_MAX_EPOCHS (1 << 20)     /* --epochs: 1 to this */
#define TRAIN_MAX_KEEP 1000            /* --keep: 1 to this */
#define TRAIN_MAX_LR OPTIM_LR_MAX      /* --lr, --weight-decay: 0 to this */
#define TRAIN_MAX_CLIP 1e9             /* --clip */
#define TRAIN_MAX_NEFTUNE 1e4          /* --neftune */
#define TRAIN_MAX_EVAL_SPLIT 1e9       /* --eval-split: a fraction or a count up to this */

typedef struct train_config {
    const char *model;           /* directory or URL; NULL: the built-in demo */
    const char *init_config;     /* a config.json: start from random weights of that shape */
    ds_source sources[STATS_MAX_SOURCES];
    int n_sources;
    const char *format, *template_name, *tokenizer;
    int seq, batch, grad_accum, pack, strict;
    int recompute;               /* activation recomputation (model.recompute) */
    float neftune;               /* NEFTune's noise on the embeddings (model.neftune); 0 off */
    /* held-out data scored during the run (--eval-data, or --eval-split of --data), every
     * eval_every steps (0: ten times over the run) and after the last */
    const char *eval_paths[TRAIN_MAX_EVAL];
    int n_eval;
    double eval_split;           /* or --data records held out: a fraction (< 1) or a count */
    const char *eval_choices;    /* multiple-choice questions scored with them (choices.h):
                                    the accuracy during the run */
    int eval_generate;           /* 1: the held-out records' answers are generated and matched
                                    too (answers.h), by eval_match: the accuracy, live */
    ans_match eval_match;
    long eval_answers;           /* records answered an evaluation at most, spread over the
                                    held-out ones; 0: all */
    const char *eval_samples;    /* each answer appended to it (JSONL), or NULL */
    long eval_every;
    int keep_best;               /* save at each new best evaluation; keep it, save/best */
    int best_by;                 /* what is best: TRAIN_BEST_LOSS (lowest held-out loss) or
                                    TRAIN_BEST_ANSWERS (most --eval-generate answers right) */
    long steps;                  /* 0: by epochs */
    int epochs;                  /* 0 with steps 0: one epoch */
    optim_config optim;
    pesc_options pesc;
    uint64_t seed;
    const char *backend;
    const char *save_dir;
    long save_every;             /* steps; 0: only at the end and on request */
    int keep;                    /* checkpoints kept */
    const char *resume;
    const char *log_path;
    const char *control_path;
    const char *sinks[TRAIN_MAX_SINKS];
    int n_sinks;
    const char *plugins[TRAIN_MAX_SINKS];
    int n_plugins;
    int nan_limit;               /* non-finite steps in a row before the LR is halved */
    int headless;
    /* the workbench: once training ends (finished or stopped, not failed), the trainer stays
     * to answer generate commands until a stop (the screen quits) */
    int answer_after_end;
    /* "pesc train", "pesc tui": while the run is made (the model loads, the data is
     * tokenized), what it is doing shows on stderr when that is a terminal, in one line
     * cleared again; NULL: nothing */
    const char *command;
    unsigned given;              /* TRAIN_GIVEN_*: what the command line set */
} train_config;

/* Options given on the command line, where a default would not say so: the built-in demo
 * has its own defaults for some, and a resumed run takes its checkpoint's for the rest. */
enum { TRAIN_GIVEN_SEQ = 1, TRAIN_GIVEN_BATCH = 2, TRAIN_GIVEN_LR = 4, TRAIN_GIVEN_WARMUP = 8,
       TRAIN_GIVEN_SAVE_EVERY = 16, TRAIN_GIVEN_KEEP = 32, TRAIN_GIVEN_FORMAT = 64,
       TRAIN_GIVEN_EVAL_EVERY = 128, TRAIN_GIVEN_TEMPLATE = 256, TRAIN_GIVEN_GRAD_ACCUM = 512,
       TRAIN_GIVEN_PACK = 1024, TRAIN_GIVEN_SEED = 2048, TRAIN_GIVEN_SCHEDULE = 4096,
       TRAIN_GIVEN_WEIGHT_DECAY = 8192, TRAIN_GIVEN_CLIP = 16384,
       TRAIN_GIVEN_KEEP_BEST = 32768, TRAIN_GIVEN_NEFTUNE = 65536,
       TRAIN_GIVEN_BEST_BY = 131072 };

enum { TRAIN_BEST_LOSS, TRAIN_BEST_ANSWERS };
/* "loss" or "answers" into *best_by: 0, or -1 with a message naming both. */
int train_best_parse(const char *name, int *best_by, pesc_error *err);

void train_config_default(train_config *c);
/* The built-in demo (`pesc` with no arguments): the demo model and one source per task family
 * of the generated data, so the routing view shows the families apart; its --seq, --batch,
 * --lr and --warmup unless the command line gave them. */
void train_config_demo(train_config *c);

/* Parses argv (argv[0] is the command name). Returns -1 to go on, TRAIN_HELP when --help was
 * asked (the command prints its usage), or 2 after a usage error, already reported. */
#define TRAIN_HELP 0x100
int train_config_parse(train_config *c, const char *cmd, int argc, char **argv);

/* --eval-every, --keep-best, --save-every and --keep have what they act on (held-out data, a
 * --save directory), and no two --sink write one file: 0, or -1 with why. The parse checks it,
 * but for a resumed run, whose checkpoint may give them: its session checks once it has taken
 * them. */
int train_config_check_needs(const train_config *c, pesc_error *err);

/* --eval-generate's value, MATCH or MATCH:N (exact or number; N records at most): into
 * c->eval_match and c->eval_answers, 0; -1 with a message naming neither flag nor file. The
 * same text back (n bytes) for a checkpoint. */
int train_eval_generate_parse(train_config *c, const char *arg, pesc_error *err);
void train_eval_generate_name(const train_config *c, char *out, size_t n);

/* Help text of the shared options. */
extern const char train_options_help[];

#endif
