/* checkpoint — a training run saved so it continues exactly: the trainables (Camelidae names),
 * the AdamW moments and state.json (step, schedule position, live overrides, RNG, data
 * cursor, the run's shape, where the base model is and a fingerprint of it).
 *
 * A checkpoint is DIR/step-NNNNNNNN/; it is written under a temporary name, every file
 * fsync'd, then renamed, so a kill at any instant leaves the previous one whole. The newest
 * `keep` are kept. Must not: know about threads or the UI. */
#ifndef PESC_CHECKPOINT_H
#define PESC_CHECKPOINT_H

#include <stdint.h>
#include <sys/stat.h>

#include "dataset.h"
#include "model.h"
#include "optim.h"
#include "util.h"

enum { CHECKPOINT_MAX_DATA = 16, CHECKPOINT_MAX_EVAL = 8, CHECKPOINT_MAX_SINKS = 8 };

typedef struct checkpoint_state {
    long step;                   /* optimizer steps done */
    long total_steps;
    int epochs;                  /* the run's length in epochs, whose last step ends at the
                                    data's end; 0: a --steps run (or a checkpoint from before
                                    it was recorded), which reads on into the next epoch */
    double lr_override;          /* < 0: none */
    double lr_scale;             /* halvings after non-finite steps */
    double aux_coef;             /* live value (may be overridden) */
    uint64_t model_rng;          /* dropout */
    ds_cursor cursor;
    long long tokens;
    double elapsed_s;
    long nan_skipped;
    int eval_pending;            /* the evaluation due after this step was cut short by a stop:
                                    the resumed run does it first, as this step's */
    uint64_t base_fingerprint;
    /* Where the base came from, so that export finds it without --model: an absolute model
     * directory, or the --init-config file of a run that started from random weights (the
     * seed makes them again). Empty in checkpoints written before pesc export. tokenizer is
     * the run's --tokenizer file, empty when it used the model's own. */
    char base_model[4096];
    char init_config[4096];
    char tokenizer[4096];
    /* what must match to continue */
    pesc_options pesc;
    int seq, batch, grad_accum;
    int pack;                    /* -1: not recorded (a checkpoint written before it was) */
    double eval_split;           /* --data records held out (--eval-split); 0: none */
    /* --keep-best: the best evaluation so far (best_by: 0 the lowest held-out loss, 1 the
     * largest share of --eval-generate's answers right: best_value is that loss or share)
     * and the step of its checkpoint (-1: none yet, or not kept) */
    int best_by;
    double best_value;
    long best_step;
    uint64_t best_eval_data;     /* a hash of the held-out records that value is on (and by
                                    answers, of what was answered); 0: not recorded (a
                                    checkpoint from before it was) */
    double run_lr, run_aux_coef; /* the run's --lr and --aux-coef, before any live change;
                                    -1: not recorded */
    uint64_t seed;
    /* What else the run was given, so that --resume alone continues it as it was (and
     * generate and eval use its template): the data (local paths, absolute, or the demo's
     * demo:FAMILY), its format, the held-out files, the chat template and the optimizer's
     * settings. Empty, 0 or -1 in checkpoints written before they were recorded. */
    ds_source data[CHECKPOINT_MAX_DATA];
    int n_data;
    char eval_data[CHECKPOINT_MAX_EVAL][4096];
    int n_eval;
    char eval_choices[4096];     /* --eval-choices's file; "" for none */
    char eval_generate[32];      /* --eval-generate's MATCH[:N]; "" for none */
    char eval_samples[4096];     /* --eval-samples's file; "" for none */
    long long eval_samples_bytes; /* its length with the answers up to this step in it (not
                                    those of an evaluation still pending); -1: not recorded */
    char format[64];
    char template_name[32];
    int schedule;                /* optim_schedule; -1: not recorded */
    long warmup;                 /* -1: not recorded */
    double weight_decay, clip;   /* -1: not recorded */
    double neftune;              /* --neftune; -1: not recorded (a run before it: 0) */
    /* where the run saved and logged (absolute; "" for none), how often it saved and scored
     * the held-out data, how many checkpoints it kept: a run resumed from its newest
     * checkpoint goes on with them. -1: not recorded. */
    char save_dir[4096], log[4096];
    long save_every, eval_every;
    int keep, keep_best;
    int keep_best_by;            /* --best-by: 0 loss, 1 answers (the best kept: best_by) */
    /* the run's --sink specs as given and --plugin files (absolute): not taken on resuming
     * (a module is code to run: given again, not found in a file), only named when missing */
    char sinks[CHECKPOINT_MAX_SINKS][4096], plugins[CHECKPOINT_MAX_SINKS][4096];
    int n_sinks, n_plugins;
} checkpoint_state;

/* Makes save_dir (one level) or checks that it is a directory this process can write in: a run
 * checks before its first step, not when its first checkpoint is due. */
int checkpoint_prepare(const char *save_dir, pesc_error *err);
/* Takes save_dir for this run until checkpoint_unlock: an exclusive flock on save_dir/.lock,
 * which records the holder's pid. A second run on the directory (which would pass
 * checkpoint_claim too while the first has saved nothing, then rotate the first's
 * checkpoints out) is refused at once. The lock goes with the process, so a killed run
 * leaves nothing that blocks the next; the file stays, and is no checkpoint. Returns the
 * lock, or -1 with err. */
int checkpoint_lock(const char *save_dir, pesc_error *err);
/* A run refused (or stopped) before its first checkpoint, in a save_dir it made itself: the
 * lock file goes while still held, then the lock, then the directory when it is empty (a
 * directory that holds anything else stays). */
void checkpoint_unlock_unused(int lock, const char *save_dir);
void checkpoint_unlock(int lock);   /* accepts -1 */
/* Refuses a save_dir that holds checkpoints this run does not continue: those of another run
 * (when the run is not resumed from save_dir itself), or, when it is, those past the resumed
 * step, which the run would overwrite. resumed is the checkpoint the run continues (NULL for
 * none). Saving then rotates out only the run's own checkpoints. */
int checkpoint_claim(const char *save_dir, const char *resumed, long resumed_step,
                     pesc_error *err);
/* Before a save: whether the lock this run holds (*lock, checkpoint_lock's, taken in the
 * directory *dir is the stat of) is still save_dir's. Removed while the run went (the
 * directory, or its lock file), save_dir may have been made again by another run, whose
 * checkpoints this run must neither write among nor rotate out. 0: the lock holds;
 * CHECKPOINT_LOCK_RENEWED: only the lock file had gone, and is taken anew in the same
 * directory; CHECKPOINT_RELOCKED: save_dir was made again and locked anew (what the run saved
 * there before is gone); both replace *lock and *dir. -1 with err: another run holds it now,
 * or it holds checkpoints this run did not write (*lock is kept: the next save tries
 * again). */
enum { CHECKPOINT_RELOCKED = 1, CHECKPOINT_LOCK_RENEWED = 2 };
int checkpoint_relock(int *lock, const char *save_dir, struct stat *dir, pesc_error *err);
/* Saves (preparing save_dir first) and rotates out all but the newest `keep` of the run's
 * checkpoints, and the one of step `kept` (-1: none), which stays; *saved (optional) receives
 * the checkpoint's directory (malloc'd). */
int checkpoint_save(const char *save_dir, int keep, long kept, model *m, optimizer *opt,
                    const checkpoint_state *st, char **saved, pesc_error *err);
/* Points save_dir/best at the checkpoint of that step (a relative symbolic link, replaced
 * atomically), then rotates as checkpoint_save does with that one kept: the best before it
 * goes unless it is among the newest `keep`. */
int checkpoint_mark_best(const char *save_dir, int keep, long step, pesc_error *err);

/* 1 and the step when name is a checkpoint directory's name as pesc writes it (step-%08ld),
 * else 0. */
int checkpoint_name_step(const char *name, long *step);
/* path is a checkpoint or a save directory (its newest complete checkpoint is taken).
 * CHECKPOINT_NONE when path holds no checkpoint at all, -1 when one is there but unreadable. */
enum { CHECKPOINT_NONE = -2 };
int checkpoint_find(const char *path, char **dir, pesc_error *err);
/* The newest checkpoint in save_dir before step whose state.json can be read (malloc'd), or
 * NULL: where a run whose newest checkpoint is damaged can go on from. */
char *checkpoint_older(const char *save_dir, long step);
/* Whether save_dir holds the checkpoint of step (its state.json is there). */
int checkpoint_there(const char *save_dir, long step);
/* model_load_trainables of what --adapters names: a trainables file, or a checkpoint or a
 * save directory (its newest checkpoint's trainables.safetensors). */
int checkpoint_load_adapters(model *m, const char *path, pesc_error *err);
int checkpoint_read_state(const char *dir, checkpoint_state *st, pesc_error *err);
/* The checkpoint --adapters names (a checkpoint or save directory, or the trainables file of
 * a checkpoint): *dir (malloc'd) and its state. CHECKPOINT_NONE, with err, for a trainables
 * file outside a checkpoint, which says nothing of its run. */
int checkpoint_of_adapters(const char *path, char **dir, checkpoint_state *st, pesc_error *err);

/* The base model a checkpoint's run trained, as its state.json recorded it, for a command
 * given the checkpoint without --model: the model directory, or the --init-config file of a
 * run from random weights (st->seed makes them again). Either must still be there; a
 * checkpoint from before pesc export recorded neither (err says to give --model DIR). */
typedef struct checkpoint_base {
    char *dir;                   /* the model directory; NULL for an --init-config run */
    char *config;                /* its config.json, or the --init-config file */
} checkpoint_base;
int checkpoint_base_find(const checkpoint_state *st, const char *ckpt, checkpoint_base *b,
                         pesc_error *err);
int checkpoint_base_load(model *m, const checkpoint_base *b, const checkpoint_state *st,
                         pesc_backend *be, pesc_error *err);
void checkpoint_base_free(checkpoint_base *b);

/* Loads trainables and moments into a model crafted as st->pesc says and an optimizer sized
 * for it. */
int checkpoint_load(const char *dir, model *m, optimizer *opt, pesc_error *err);

/* Loads only the trained weights (no AdamW moments) into a model, crafting it as the file's
 * metadata says: what export needs. */
int checkpoint_load_weights(const char *dir, model *m, pesc_error *err);

/* A fingerprint of the base model: config.json and every base tensor's name, shape and a
 * sample of its values. */
uint64_t checkpoint_fingerprint(model *m);

#endif
