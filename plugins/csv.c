/* csv — a metric sink plugin: one row per optimizer step, one column per scalar.
 *
 * `--sink csv[:FILE]` (default BASE.csv, which a fresh run refuses to replace when it is already
 * there: only a FILE named for it is truncated). Columns: step, wall_time, elapsed_s, then every
 * scalar of the step in the order pesc gives them (loss, aux_loss, z_loss, lr, grad_norm,
 * tokens_per_s, step_s, epoch, tokens, eval_loss, eval_accuracy, eval_answer_accuracy,
 * entropy/layer_NN, imbalance/layer_NN, load/layer_NN/expert_E); a value not measured at a
 * step (eval_loss between evaluations) is an empty cell. The header is written with the first step (not when a resumed
 * run appends to a file that has content: then that header must name as many columns as
 * the run has, or the sink stops before a row lands under the wrong one). Rows are flushed as
 * written, so a spreadsheet or `tail -f` sees them live. Events are not written (they are in
 * the JSONL log).
 *
 * Built as a libtool module; it links nothing of pesc (plugins/pesc-plugin.h only). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pesc-plugin.h"

typedef struct csv_sink {
    FILE *f;
    char path[4096];
    int header_done;
    size_t columns;              /* scalars a row holds, fixed by the header */
} csv_sink;

static int io_error(csv_sink *c, char *err, size_t errlen)
{
    snprintf(err, errlen, "%s: %s", c->path, strerror(errno ? errno : EIO));
    return -1;
}

/* The scalars the header line at the top of path names (its fields after step, wall_time and
 * elapsed_s), or 0 when it cannot be read. */
static size_t header_columns(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t fields = 1;
    int ch, quoted = 0;
    while ((ch = getc(f)) != EOF && (quoted || ch != '\n')) {
        if (ch == '"')
            quoted = !quoted;
        else if (ch == ',' && !quoted)
            fields++;
    }
    fclose(f);
    return fields > 3 ? fields - 3 : 0;
}

static void *csv_open(const pesc_sink_config *config, const pesc_run_info *run, char *err,
                      size_t errlen)
{
    (void)run;
    csv_sink *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (config->target)
        snprintf(c->path, sizeof c->path, "%s", config->target);
    else
        snprintf(c->path, sizeof c->path, "%s.csv", config->base ? config->base : "pesc-run");
    if (config->resume || config->target) {
        c->f = fopen(c->path, config->resume ? "a" : "w");
    } else {   /* a BASE.csv already there may be another run's: a fresh run does not replace it */
        int fd = open(c->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        c->f = fd >= 0 ? fdopen(fd, "w") : NULL;
    }
    if (!c->f) {
        if (errno == EEXIST)
            snprintf(err, errlen, "%s is already there, and this run was not told to replace it: "
                     "name the file (--sink csv:FILE), remove it, or continue its run with "
                     "--resume", c->path);
        else
            io_error(c, err, errlen);
        free(c);
        return NULL;
    }
    /* appending to rows already there: keep their header, and its columns (a file of a
     * pesc without eval_loss, eval_accuracy or eval_answer_accuracy has fewer) */
    c->header_done = config->resume && ftell(c->f) > 0;
    if (c->header_done)
        c->columns = header_columns(c->path);
    return c;
}

/* A field, quoted when it holds a comma, quote or line break (RFC 4180). */
static void put_field(FILE *f, const char *s)
{
    if (!strpbrk(s, ",\"\r\n")) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"')
            fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static int csv_record(void *self, const pesc_step *step, char *err, size_t errlen)
{
    csv_sink *c = self;
    errno = 0;
    if (!c->header_done) {
        fputs("step,wall_time,elapsed_s", c->f);
        for (size_t i = 0; i < step->n_scalars; i++) {
            fputc(',', c->f);
            put_field(c->f, step->scalars[i].tag);
        }
        fputc('\n', c->f);
        c->header_done = 1;
        c->columns = step->n_scalars;
    } else if (c->columns == 0) {
        c->columns = step->n_scalars;   /* resumed, its header unread: trust it */
    }
    if (step->n_scalars != c->columns) {
        snprintf(err, errlen, "%s: a step has %zu scalars but the header has %zu columns (a "
                 "file of another run or pesc version: name a new one, --sink csv:FILE)",
                 c->path, step->n_scalars, c->columns);
        return -1;
    }
    fprintf(c->f, "%ld,%.6f,%.6g", step->step, step->wall_time, step->elapsed_s);
    for (size_t i = 0; i < step->n_scalars; i++) {   /* NaN: not measured, an empty cell */
        double v = step->scalars[i].value;
        if (v == v)
            fprintf(c->f, ",%.9g", v);
        else
            fputc(',', c->f);
    }
    fputc('\n', c->f);
    if (ferror(c->f) || fflush(c->f) != 0)
        return io_error(c, err, errlen);
    return 0;
}

static int csv_close(void *self, char *err, size_t errlen)
{
    csv_sink *c = self;
    int rc = 0;
    errno = 0;
    if (fclose(c->f) != 0)
        rc = io_error(c, err, errlen);
    free(c);
    return rc;
}

static const pesc_sink_ops csv_ops = {
    .size = sizeof csv_ops, .open = csv_open, .record = csv_record, .close = csv_close};

static const pesc_plugin csv_plugin = {
    .abi_version = PESC_PLUGIN_ABI_VERSION, .size = sizeof csv_plugin,
    .kind = PESC_PLUGIN_SINK, .name = "csv", .version = "1.0",
    .description = "one CSV row per step, a column per scalar (csv[:FILE], default BASE.csv)",
    .sink = &csv_ops};

PESC_PLUGIN_DEFINE(csv_plugin)
