/* session — a training run as a long-lived object: the trainer thread that owns the model and
 * the backend, the command queue front ends push to, the stats snapshot and history they
 * read, checkpoints, and the JSONL log (DESIGN section 2).
 *
 * Threads: session_new/start/wait/delete belong to the thread that made the session;
 * session_command and the monitor may be called from any thread (the UI, the control
 * socket) and never wait for a training step. Everything the trainer publishes goes through
 * one mutex-protected view; commands through one queue, taken between steps and between
 * generated tokens. Must not: draw anything or parse command lines of its own (train_options). */
#ifndef PESC_SESSION_H
#define PESC_SESSION_H

#include <stddef.h>

#include "monitor.h"
#include "train_options.h"
#include "util.h"

typedef struct session session;

/* Loads the model (downloading a URL first), the tokenizer and data, crafts or resumes; the
 * trainer is not running yet, and no output file (the log, a sink's) is opened: a front end
 * takes what can still refuse the run (its --control socket) before session_start. *err says
 * what failed. */
session *session_new(const train_config *c, pesc_error *err);
/* Opens the log and the sinks (refusing the run, with err, when one cannot be had; then none
 * was truncated), then starts the trainer. */
int session_start(session *s, pesc_error *err);
/* Waits for the trainer to end (finished, stopped or failed); returns the exit status:
 * 0 finished or stopped cleanly, 1 failed (session_error says why). With answer_after_end
 * (the workbench, which waits only as it quits) it stops the run first, and the trainer
 * answers no more prompts. */
int session_wait(session *s);
void session_delete(session *s);
const char *session_error(const session *s);
/* Whether stopping saves a checkpoint: a --save directory, given or (on --resume) the run's. */
int session_saves(const session *s);

/* The command language of monitor.h; the reply is one line, "ok: ..." or "error: ...". */
void session_command(session *s, const char *line, char *reply, size_t reply_len);
/* The monitor face of the session (valid until session_delete). */
monitor *session_monitor(session *s);

/* The last step's losses, for tests and the headless progress line. */
typedef struct session_progress {
    monitor_state state;
    long step, total_steps;
    double loss, aux_loss, lr, tokens_per_s, eta_s, elapsed_s;
    long nan_skipped;
} session_progress;
void session_get_progress(session *s, session_progress *p);

/* Fault injection for tests: the next n steps' gradients become NaN. */
void session_inject_nan(session *s, int n);

#endif
