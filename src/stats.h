/* stats — what a training run reports: one record per step, events, and their JSONL form
 * (the run log of `--log`, schema in man/pesc-log.5).
 *
 * Owns: the record layout, its (de)serialisation. Must not: know about threads or screens;
 * session.c fills records, sinks and the UI read them. */
#ifndef PESC_STATS_H
#define PESC_STATS_H

#include <stddef.h>

#include "util.h"

#define STATS_MAX_SOURCES 16

typedef struct stats_shape {
    int n_layers;                /* L */
    int n_experts;               /* E; 0 for a dense (full-mode) run */
    int top_k;
    int n_sources;               /* S: --data sources */
} stats_shape;

/* One optimizer step. Arrays are row-major, (L, E) unless noted; load-like arrays are
 * fractions of the layer's (token, slot) assignments over the step (each row sums to 1). */
typedef struct stats_record {
    long step;                   /* optimizer updates done, 1-based */
    long total_steps;            /* planned; 0 = unknown (epochs with an endless source) */
    double epoch;                /* fractional */
    long long tokens;            /* tokens trained on so far */
    double loss, aux_loss, z_loss;
    double lr;                   /* in effect for this step */
    int lr_overridden;           /* set from the keyboard or control socket */
    double aux_coef;             /* the load-balancing coefficient in effect (aux_loss carries
                                    it); NaN in a log from before it was logged */
    double grad_norm;            /* before clipping */
    double tokens_per_s, step_s, elapsed_s, eta_s;   /* eta < 0: unknown */
    double rss_bytes, device_bytes;
    /* the held-out evaluation run after this step (--eval-data): mean next-token loss over
     * eval_tokens targets; eval_tokens 0: none this step */
    double eval_loss;
    long long eval_tokens;
    /* and --eval-choices's questions: the accuracy, plain and a byte (choices.h), over
     * eval_questions; eval_questions 0: none this step */
    double eval_accuracy, eval_accuracy_norm;
    long eval_questions;
    /* and the held-out records' generated answers (--eval-generate): the share that matched,
     * over eval_answers scored; eval_answers 0: none this step */
    double eval_answer_accuracy;
    long eval_answers;
    stats_shape shape;
    float *load;                 /* (L, E) share of the top-k assignments */
    float *first;                /* (L, E) share of the first choices */
    float *gate;                 /* (L, E) mean gate weight of the assignments */
    float *norm_down, *norm_up;  /* (L, E) Frobenius norms of D and U */
    float *update_ratio;         /* (L, E) ||update|| / ||D, U|| of this step */
    float *entropy;              /* (L) mean router entropy, nats */
    float *imbalance;            /* (L) max / mean of load */
    float *cv;                   /* (L) coefficient of variation of load */
    float *source_load;          /* (S, L, E) share of each source's assignments */
} stats_record;

/* Lifetime pair; arrays are sized from the shape (NULL when E = 0). */
stats_record *stats_record_new(stats_shape shape);
void stats_record_delete(stats_record *r);
/* r when it has this shape, else a new record of it (r deleted; r may be NULL). */
stats_record *stats_record_fit(stats_record *r, stats_shape shape);
/* Copies a record into one of the same shape. */
void stats_record_copy(stats_record *dst, const stats_record *src);
/* Fills imbalance and cv from load. */
void stats_record_derive(stats_record *r);

/* Events: pause, resume, lr, aux, save, eval, nan-skip, generate, start, stop, error, ... */
typedef struct stats_event {
    long step;
    double elapsed_s;
    char kind[16];
    char text[512];              /* a failure's reason with its advice fits whole */
    /* a generate event's prompt and whole answer, NULL in others: borrowed for the call that
     * publishes it (the log line carries them), NULL in the copies kept after it */
    const char *prompt, *answer;
} stats_event;

/* JSONL: one object per line, no newline inside. Step records carry at least step, loss,
 * aux_loss, lr, grad_norm, tokens_per_s and load; events carry "event". The first line of a
 * log is a "start" event with the run's shape and configuration (stats_run). */
typedef struct stats_run {
    stats_shape shape;
    char model[256];             /* model directory or "demo" */
    char backend[256];           /* the backend's device line (backend_device) */
    char sources[STATS_MAX_SOURCES][128];   /* --data names, for the per-source view */
    long total_steps;
    int adapter_dim;
    double adapter_scale;
    long data_records;           /* the records loaded from every --data, and their tokens */
    long long data_tokens;
    char control[256];           /* its --control socket (absolute), "" when none: what a
                                    view of the log names for steering the run */
    long resumed_step;           /* a resumed run: its checkpoint's step, from which it runs
                                    again the steps a crashed run logged past it; 0: fresh */
} stats_run;

/* An "lr" event's text begins with the rate in force from then on, so that a reader of the
 * log (pesc view) shows it before the next step record: set by hand (then maybe followed by
 * what of the schedule it ends), or halved after steps that were not finite. */
#define STATS_LR_SET "learning rate %.6g (was %.6g)"
#define STATS_LR_HALVED "learning rate %.6g, halved after %d non-finite steps"
/* The rate an "lr" event put in force, and whether it was set by hand: 0, or -1 when e is not
 * such an event. */
int stats_lr_event(const stats_event *e, double *lr, int *by_hand);
/* An expert's share of its layer's assignments over an even share (1/E): under IDLE it is idle,
 * over HOT it is hot. The workbench marks each so; the trainer says a layer whose mean is
 * either has collapsed. */
#define STATS_IDLE_SHARE 0.05
#define STATS_HOT_SHARE 2.0

/* The aux event's text, as the session writes it, and its reading: the coefficient from then
 * on; 0, or -1 when e is no such event. */
#define STATS_AUX_SET "aux coefficient %.6g (was %.6g)"
int stats_aux_event(const stats_event *e, double *coef);

/* An "eval" event's text begins with what it scored, in one of these forms, so that a reader
 * of the log (pesc view) shows an evaluation made while paused, which no step record carries. */
#define STATS_EVAL_LOSS "eval loss %.4f"
#define STATS_EVAL_ACCURACY "eval accuracy %.4f"
#define STATS_EVAL_ANSWERS "eval answers %.4f right"
/* The held-out loss, accuracy or answers' share an "eval" event reports (the other two NAN):
 * 0, or -1 when e is not such an event. */
int stats_eval_event(const stats_event *e, double *loss, double *accuracy, double *answers);

/* A run's last event is "finish", "stop" or "error" with the text STATS_END_TEXT; an "error"
 * before it is the reason it failed, or an error the run went on after (a failed save), which
 * a step's record that follows undoes. What an event is to the run's end, for a log's readers
 * (pesc view, pesc inspect). */
#define STATS_END_TEXT "at step %ld"
typedef enum stats_end { STATS_END_NONE, STATS_END_ERROR, STATS_END_CLOSING } stats_end;
stats_end stats_event_end(const char *kind, const char *text);

char *stats_record_json(const stats_record *r);            /* malloc'd, no newline */
char *stats_event_json(const stats_event *e);
char *stats_run_json(const stats_run *run);

/* Parsing a log line: returns 1 for a step record (into *r, allocated or reused when the
 * shape matches), 2 for an event (into *e), 3 for the start line (into *run), -1 with a
 * message for a malformed line. */
int stats_parse_line(const char *line, stats_record **r, stats_event *e, stats_run *run,
                     pesc_error *err);

/* Whether o (a parsed JSON value) is a line of a run log, by its fields: the start line
 * ("event": "start" with "total_steps"), an event ("event" one of the kinds pesc writes,
 * with an integer "step") or a step's record (an integer "step" with "loss", "lr",
 * "grad_norm" and "tokens_per_s"). How it is spaced or ordered does not matter, so a log
 * that went through a JSON tool is one too. A dataset record has none of these shapes. */
struct json_t;
int stats_is_log_record(const struct json_t *o);
/* Whether the first record of the file at path (past a UTF-8 byte order mark and blank
 * lines; CRLF line ends allowed) is a line of a run log: a whole log, or its end (tail -n).
 * The one test of pesc inspect, which reads a log, and the dataset loader, which refuses one. */
int stats_is_log_file(const char *path);
/* The same file's first record as a run log: 1 when it is the start line (its run read into
 * run, when not NULL), 0 a log's other record (a log's end), -1 no log at all. */
int stats_log_file_start(const char *path, stats_run *run);

#endif
