/* sink — metric sinks: where a run's step records and events go besides the screen.
 *
 * A sink is a `pesc_sink_ops` table (plugins/pesc-plugin.h): the built-in `jsonl` (the run
 * log of --log, man pesc-log(5)) and any sink plugin (`csv`, `tensorboard`, ...) are opened
 * and fed the same way. `--sink NAME[:TARGET]` names one; without TARGET a sink derives its
 * output from the base path (jsonl: BASE.jsonl, csv: BASE.csv, tensorboard: BASE.tb/), and a
 * fresh run refuses such a file when it is already there (it was not told to replace it).
 *
 * Each record is handed to every sink once: as named scalars ("loss", "aux_loss", "z_loss",
 * "lr", "grad_norm", "tokens_per_s", "step_s", "epoch", "tokens", "entropy/layer_03",
 * "imbalance/layer_03", "load/layer_03/expert_5"), histograms ("adapter_norm/down",
 * "adapter_norm/up": the (L, E) Frobenius norms) and the log line (stats_record_json).
 *
 * A sink that fails (cannot open its file, full disk) is reported ONCE — through the report
 * callback and as a "sink" event to the sinks still working (so the log records it) — then
 * closed and left out; the run goes on. Nothing here stops training.
 *
 * Threads: one thread (the trainer) calls everything, between steps. The report callback must
 * not call back into this sink set.
 *
 * Owns: the open sinks and the scalar tags of the run. Must not: know about sessions,
 * screens, or where plugins come from (a pesc_plugins registry is passed in). */
#ifndef PESC_SINK_H
#define PESC_SINK_H

#include "pesc-plugin.h"
#include "plugin.h"
#include "stats.h"
#include "util.h"

typedef struct sink_set sink_set;

/* A sink was disabled: name is the --sink name, message one line that says what and where. */
typedef void (*sink_report_fn)(void *ctx, const char *name, const char *message);

typedef struct sink_options {
    const char *base;            /* stem for default outputs; NULL: "pesc-run" */
    const pesc_plugins *plugins; /* where non-built-in sinks come from; NULL: built-ins only */
    int resume;                  /* append to existing outputs (jsonl, csv) */
    int strict_open;             /* a sink that cannot open is an error, not a report */
    int first_is_log;            /* specs[0] is what --log FILE asked for: say --log */
    sink_report_fn report;       /* NULL: "pesc: sink NAME: message" on stderr */
    void *report_ctx;
} sink_options;

/* specs: "NAME" or "NAME:TARGET", e.g. "jsonl:run.jsonl" (what --log FILE means),
 * "tensorboard:runs/tb", "csv". An unknown name, a malformed spec or the same output named
 * twice is an error (-1 / NULL with a message); a sink that cannot open is reported and left
 * out (or an error with strict_open: then what the built-in log would refuse is checked
 * before anything opens, and plugin sinks open before it, so a refused set has truncated no
 * log). The "start" line of the log is written here. */
sink_set *sinks_open(const char *const *specs, int n_specs, const stats_run *run,
                     const sink_options *o, pesc_error *err);
/* The stem of the outputs a --sink NAME without TARGET writes (BASE.csv): the --log FILE less
 * its .jsonl, else the --save directory, else pesc-run (either may be NULL). */
void sinks_base(char *out, size_t n, const char *log_path, const char *save_dir);
/* Whether --sink specs a and b (NAME[:TARGET]) are one sink writing one output: the same NAME
 * and one file, the TARGETs spelled two ways (a.csv and ./a.csv) or one of them the file a
 * NAME alone writes beside base (csv: BASE.csv; base NULL: not known yet). */
int sinks_same_output(const char *a, const char *b, const char *base);

/* Whether the file at path is run's log, to append to on resuming: 1 when its start line
 * names run's shape (layers, experts, top-k, adapter width) and data, 0 when it names another run's (or run is NULL), -1 when
 * it is no run log at all (a dataset, notes). */
int sinks_log_of_run(const char *path, const stats_run *run);

/* Every working sink gets the record / event. */
void sinks_record(sink_set *s, const stats_record *r);
void sinks_event(sink_set *s, const stats_event *e);
/* Closes every sink (flushing), the jsonl logs last: a failure to close is reported (its
 * output may be incomplete) and, from a sink other than a log, logged as a "sink" event.
 * Accepts NULL. */
void sinks_close(sink_set *s);

/* Sinks still working. */
int sinks_active(const sink_set *s);
/* Sinks reported and disabled so far. */
int sinks_failed(const sink_set *s);

/* Whether spec (NAME[:TARGET]) names a sink, built in or of plugins: 0, or -1 with the
 * message a run would give. For option checking before a run. */
int sinks_check_spec(const pesc_plugins *plugins, const char *spec, pesc_error *err);
/* 1 when name is a built-in sink ("jsonl"). */
int sinks_builtin(const char *name);
/* Built-in sink i (NULL past the end): name and one-line description. */
const char *sinks_builtin_name(int i, const char **description);

#endif
