/* pesc-plugin.h — the ABI between pesc and its loadable modules (man pesc-plugin(7)).
 *
 * A module is a shared object with ONE exported function, `pesc_plugin_entry`, that returns a
 * pointer to a static, constant descriptor: the ABI version it was built against, a name, a
 * kind (dataset format or metric sink) and that kind's function table. pesc checks the
 * descriptor before it uses anything in it (version, sizes, names, that every pointer lies
 * inside the module), so a broken module is refused with a message and never called.
 *
 *     static const pesc_sink_ops my_ops = {.size = sizeof my_ops, .open = ..., ...};
 *     static const pesc_plugin my_plugin = {
 *         .abi_version = PESC_PLUGIN_ABI_VERSION, .size = sizeof my_plugin,
 *         .kind = PESC_PLUGIN_SINK, .name = "mysink", .version = "1.0",
 *         .description = "what it does", .sink = &my_ops};
 *     PESC_PLUGIN_DEFINE(my_plugin)
 *
 * This header needs only the C standard library; a module links nothing of pesc. The
 * built-in formats and the JSONL log are written against the same tables.
 *
 * Compatibility: PESC_PLUGIN_ABI_VERSION changes when a field is removed or changes meaning.
 * New fields are only ever appended, and every table starts with its `size`, so a module built
 * against an older header with the same ABI version keeps working (missing slots read as
 * NULL/0), and a module reads a host structure's new fields only after checking its size. */
#ifndef PESC_PLUGIN_H
#define PESC_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PESC_PLUGIN_ABI_VERSION 1u
#define PESC_PLUGIN_ENTRY_SYMBOL "pesc_plugin_entry"
#define PESC_PLUGIN_NAME_MAX 31          /* [a-z0-9_-], starting with a letter */

/* Whether the host's structure *s of type T has the appended field f (its size says so):
 * PESC_PLUGIN_HAS(config, pesc_sink_config, resumed_step). */
#define PESC_PLUGIN_HAS(s, T, f) ((s)->size >= offsetof(T, f) + sizeof (s)->f)

typedef enum pesc_plugin_kind {
    PESC_PLUGIN_FORMAT = 1,              /* a dataset format: records -> conversations/tokens */
    PESC_PLUGIN_SINK = 2,                /* a metric sink: step records and events -> somewhere */
} pesc_plugin_kind;

/* ================================================================ dataset formats ===== */

/* One JSON value of a record, read through the host's accessors (never dereferenced). */
typedef struct pesc_json pesc_json;
/* Where a format puts what it read from a record (opaque; written through the host). */
typedef struct pesc_record_out pesc_record_out;

typedef enum pesc_json_type {
    PESC_JSON_NULL, PESC_JSON_OBJECT, PESC_JSON_ARRAY, PESC_JSON_STRING, PESC_JSON_INTEGER,
    PESC_JSON_REAL, PESC_JSON_BOOL,
} pesc_json_type;

typedef enum pesc_role { PESC_ROLE_SYSTEM, PESC_ROLE_USER, PESC_ROLE_ASSISTANT } pesc_role;

/* What pesc offers a format's functions: reading the record and writing the result. Every
 * accessor accepts NULL and returns NULL/0 for a missing key or a value of another type. */
typedef struct pesc_format_host {
    size_t size;
    pesc_json_type (*type)(const pesc_json *v);
    const pesc_json *(*get)(const pesc_json *object, const char *key);
    /* the bytes of a string (not NUL-terminated in general; UTF-8), its length in *len */
    const char *(*string)(const pesc_json *v, size_t *len);
    size_t (*array_size)(const pesc_json *v);
    const pesc_json *(*array_get)(const pesc_json *array, size_t i);
    /* 0 and *out for an integer, -1 otherwise */
    int (*integer)(const pesc_json *v, long long *out);

    /* A conversation: messages in order (an optional system message first, then user and
     * assistant turns); the chat template renders them and only assistant turns carry loss. */
    void (*message)(pesc_record_out *out, pesc_role role, const char *text, size_t len);
    /* Or a plain document, every token trained. */
    void (*text)(pesc_record_out *out, const char *text, size_t len);
    /* Or token ids directly (no tokenizer needed); labels NULL = the ids, -100 = no loss. The
     * host checks them against the model's vocabulary. */
    void (*tokens)(pesc_record_out *out, const int32_t *ids, const int32_t *labels, size_t n);
    /* Why the record cannot be used (one line; the host adds file and line). Returns -1. */
    int (*fail)(pesc_record_out *out, const char *message);
} pesc_format_host;

enum {
    /* A line that is not JSON (or a bare JSON string) reaches convert as a string value, so a
     * format can read TSV, plain text or any line-oriented schema; also after JSON records,
     * so convert says what is wrong with a broken one. Without the flag such a
     * record is refused before convert is called. */
    PESC_FORMAT_LINES = 1u << 0,
};

typedef struct pesc_format_ops {
    size_t size;                         /* sizeof(pesc_format_ops) */
    unsigned flags;                      /* PESC_FORMAT_* */
    /* `--format auto`: how sure this format is that the record is one of its own, 0 (not
     * mine) to 100; the highest score wins, ties go to the format registered first (the
     * built-ins: completion 5, text 10-100, alpaca 30, magicoder 40, metamath 50, openai 60,
     * sharegpt 70, camelidae 80, tokens 90). NULL: never chosen by auto. */
    int (*detect)(const pesc_format_host *h, const pesc_json *record);
    /* The record to messages, text or tokens through h; 0, or h->fail(...). Required. */
    int (*convert)(const pesc_format_host *h, const pesc_json *record, pesc_record_out *out);

    /* Optional: a source format makes its records itself (a generator, a binary or columnar
     * file) instead of pesc reading JSON records from the file; detect/convert may then be
     * NULL. open gets the --data argument less a ":WEIGHT" after its last ':' (a path, or
     * whatever the format accepts, e.g. "demo:sort,records=100"; a name with a ':' is given
     * with a weight: --data gen:6:1 opens "gen:6"); next gives one record through h and
     * returns 1, 0 at the end, or -1 after h->fail for a bad record (skipped with a warning,
     * or fatal with --strict), or -2 after h->fail when the source cannot go on; close frees
     * the source. */
    void *(*open)(const char *path, char *err, size_t errlen);
    int (*next)(const pesc_format_host *h, void *source, pesc_record_out *out);
    void (*close)(void *source);
    /* `--format auto` with open: how sure it is that it reads this --data (0..100) before
     * pesc tries the path as a file. NULL: only chosen by name. */
    int (*probe)(const char *path);
} pesc_format_ops;

/* ================================================================== metric sinks ===== */

/* The run a sink is opened for; strings valid during open only (copy what you keep). */
typedef struct pesc_run_info {
    size_t size;
    int n_layers, n_experts, top_k;      /* n_experts = 0: a dense run, no loads */
    int n_sources;
    const char *const *sources;          /* (n_sources) --data names */
    const char *model, *backend;
    long total_steps;                    /* 0: unknown */
    int adapter_dim;
    double adapter_scale;
    const char *json;                    /* the run as the log's "start" line (no newline) */
} pesc_run_info;

typedef struct pesc_sink_config {
    size_t size;
    /* NAME:TARGET of --sink, or NULL when only NAME was given: then derive the output from
     * base (a path stem: csv writes BASE.csv, tensorboard BASE.tb/). A fresh run (resume 0)
     * replaces nothing: a derived file that is already there, and a TARGET with content, may
     * be another run's or other data, so refuse it, naming it, rather than truncate it (open
     * a derived file with O_EXCL). */
    const char *target;
    const char *base;
    int resume;                          /* a resumed run: append to what is there */
    /* Appended (read it only when size says it is there): a resumed run's checkpoint step S.
     * A run that crashed after S had logged steps past it, which this one runs again from
     * S + 1: drop or mark your records past S (csv drops its rows, tensorboard writes a
     * SessionLog START at S + 1). 0: a fresh run, or a host that does not say. */
    long resumed_step;
} pesc_sink_config;

/* A named scalar: "loss", "lr", "load/layer_03/expert_5", ... */
typedef struct pesc_scalar {
    const char *tag;
    double value;
} pesc_scalar;

/* Raw values for a histogram (the sink buckets them): "adapter_norm/down", ... */
typedef struct pesc_histogram {
    const char *tag;
    const float *values;                 /* (n) */
    size_t n;
} pesc_histogram;

/* One optimizer step. Pointers valid during the call only. */
typedef struct pesc_step {
    size_t size;
    long step;                           /* 1-based */
    double wall_time;                    /* seconds since the Unix epoch */
    double elapsed_s;                    /* since the run started */
    /* everything numeric about the step, the same tags and order every step of a run; a
     * value is NaN at a step that did not measure it (eval_loss between evaluations) */
    const pesc_scalar *scalars;
    size_t n_scalars;
    const pesc_histogram *histograms;
    size_t n_histograms;
    const char *json;                    /* the step as a log line (no newline) */
} pesc_step;

/* pause, resume, lr, save, nan-skip, generate, sink, stop, ... */
typedef struct pesc_event {
    size_t size;
    long step;
    double wall_time, elapsed_s;
    const char *kind;
    const char *text;
    const char *json;                    /* the event as a log line (no newline) */
} pesc_event;

/* Errors: write one line into err (errlen bytes, NUL-terminated) and return -1 (or NULL from
 * open). pesc reports a failing sink once, closes it and goes on without it. All calls come
 * from one thread (the trainer), between steps. */
typedef struct pesc_sink_ops {
    size_t size;                         /* sizeof(pesc_sink_ops) */
    void *(*open)(const pesc_sink_config *config, const pesc_run_info *run, char *err,
                  size_t errlen);
    int (*record)(void *sink, const pesc_step *step, char *err, size_t errlen);
    int (*event)(void *sink, const pesc_event *event, char *err, size_t errlen);  /* optional */
    /* flushes, closes and frees; called exactly once per successful open */
    int (*close)(void *sink, char *err, size_t errlen);
} pesc_sink_ops;

/* ===================================================================== descriptor ===== */

typedef struct pesc_plugin {
    uint32_t abi_version;                /* PESC_PLUGIN_ABI_VERSION; must stay first */
    uint32_t size;                       /* sizeof(pesc_plugin) */
    int kind;                            /* pesc_plugin_kind */
    const char *name;                    /* --format NAME / --sink NAME */
    const char *version;                 /* the module's own version, shown by pesc plugins */
    const char *description;             /* one line (no control characters) */
    const pesc_format_ops *format;       /* kind == PESC_PLUGIN_FORMAT */
    const pesc_sink_ops *sink;           /* kind == PESC_PLUGIN_SINK */
} pesc_plugin;

typedef const pesc_plugin *(*pesc_plugin_entry_fn)(void);

/* The one symbol a module exports. */
const pesc_plugin *pesc_plugin_entry(void);

#define PESC_PLUGIN_DEFINE(descriptor) \
    const pesc_plugin *pesc_plugin_entry(void) { return &(descriptor); }

#ifdef __cplusplus
}
#endif

#endif
