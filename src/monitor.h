/* monitor — what a front end (the TUI) sees of a run and how it steers it, whether the run is
 * live in this process (session.c) or a headless run followed through its log (logview.c,
 * `pesc view`, optionally steering it through its control socket).
 *
 * Thread contract (DESIGN section 2): the front end calls monitor_snapshot at its own pace
 * (at most 10 Hz is plenty) and gets a private copy; it never waits for a training step.
 * Commands are text lines, the same as the control socket's:
 *   pause | resume | lr VALUE | lr *FACTOR | aux VALUE | save | stop
 *   generate [max=N] [temp=T] [top_p=P] [layer=L] PROMPT
 * (in PROMPT, "\n" stands for a line break and "\\" for a backslash, since a line has none)
 * Each returns at once with a one-line reply ("ok: ..." or "error: ..."); its effect shows in
 * a later snapshot. */
#ifndef PESC_MONITOR_H
#define PESC_MONITOR_H

#include <stddef.h>

#include "fetch.h"
#include "stats.h"

typedef enum monitor_state {
    MONITOR_STARTING, MONITOR_RUNNING, MONITOR_PAUSED, MONITOR_SAVING, MONITOR_EVALUATING,
    MONITOR_FINISHED,
    MONITOR_STOPPED, MONITOR_FAILED
} monitor_state;

#define MONITOR_HISTORY 4096     /* scalar points kept (older ones are thinned, not dropped) */
#define MONITOR_LOAD_HISTORY 512 /* steps of (L, E) loads kept for the per-layer history view */
#define MONITOR_EVENTS 64
#define MONITOR_GENERATION 8192  /* bytes of generated text kept */
#define MONITOR_DOWNLOADS 16     /* transfers shown at once */
#define MONITOR_COMPARED 4       /* runs compared with the one followed (pesc view A B ...) */

typedef struct monitor_point {
    long step;
    float loss, aux_loss, lr, grad_norm, tokens_per_s;
    float eval_loss;             /* NAN: no held-out evaluation at this step */
    float eval_accuracy;         /* NAN: no --eval-choices questions scored at it */
    float eval_answers;          /* the share of generated answers right (--eval-generate);
                                    NAN: none scored at it */
} monitor_point;

/* The point of a step record. */
monitor_point monitor_point_of(const stats_record *r);
/* Keeps every other point of a full history (n even), the later of each pair, and with it an
 * evaluation the earlier one held: evaluations are few and are not thinned away. Returns n/2. */
int monitor_points_thin(monitor_point *p, int n);

/* A run compared with the one followed: its log's file name and its losses, thinned as the
 * followed run's are (its stride is its own, so series line up by step, not by index). */
typedef struct monitor_series {
    char name[128];
    int n_points;
    monitor_point points[MONITOR_HISTORY];   /* oldest first */
} monitor_series;

/* A private copy of everything the screen shows; allocate with monitor_view_new. */
typedef struct monitor_view {
    monitor_state state;
    char message[512];           /* why it stopped or failed; the last command's reply */
    char note[256];              /* what the status line keeps showing about the source while
                                    it holds: a log gone quiet, malformed lines skipped; "" when
                                    nothing (a live run has none) */
    int quiet;                   /* a running log with no new line for a while: the run may
                                    be dead (killed) or hung; its ETA is not to be trusted */
    double reading;              /* a log being caught up with, over several snapshots: the
                                    share read (0 to 1), its steps come faster than they ran
                                    and their rate and ETA are not the run's now; 0 when
                                    caught up (a live run always is) */
    int gone;                    /* the run's process is gone without its log ending (a
                                    followed run killed: its socket refuses): shown stopped,
                                    and it takes no command, a prompt neither */
    stats_run run;               /* model, backend, sources, shape */
    stats_record *last;          /* the latest step; NULL before the first */
    double since_save_s;         /* < 0: never saved */
    int can_save;                /* a live run with a --save directory: stopping saves it */
    /* history, oldest first */
    int n_points;
    monitor_point points[MONITOR_HISTORY];
    int n_loads;
    long load_steps[MONITOR_LOAD_HISTORY];
    float *loads;                /* (n_loads, L, E) */
    /* recent events, oldest first */
    int n_events;
    stats_event events[MONITOR_EVENTS];
    /* the prompt console: the answer streaming in */
    int generating;              /* a generation is running */
    char prompt[512];
    char generated[MONITOR_GENERATION];
    int n_generated_tokens;
    unsigned char token_expert[MONITOR_GENERATION];   /* first-choice expert of each byte's
                                                          token at generation_layer; 255: none */
    int generation_layer;
    /* downloads before the run (launcher.h): running ones first; 0 when none to show */
    int n_downloads;
    fetch_progress downloads[MONITOR_DOWNLOADS];
    /* runs compared with this one (pesc view RUN OTHER...); 0 for a live run. Last: a live
     * session's snapshot copies the view up to here */
    int n_compared;
    monitor_series compared[MONITOR_COMPARED];
} monitor_view;

monitor_view *monitor_view_new(void);
void monitor_view_delete(monitor_view *v);

typedef struct monitor monitor;

typedef struct monitor_ops {
    /* Fills v (which may hold an older snapshot). 0, or -1 when the source is gone. */
    int (*snapshot)(void *ctx, monitor_view *v);
    /* Runs one command line; writes a one-line reply. Read-only sources reply with an error. */
    void (*command)(void *ctx, const char *line, char *reply, size_t reply_len);
    void (*close)(void *ctx);
} monitor_ops;

struct monitor {
    const monitor_ops *ops;
    void *ctx;
};

static inline int monitor_snapshot(monitor *m, monitor_view *v) { return m->ops->snapshot(m->ctx, v); }
static inline void monitor_command(monitor *m, const char *line, char *reply, size_t len)
{
    m->ops->command(m->ctx, line, reply, len);
}

#endif
