/* csv — a metric sink plugin: one row per optimizer step, one column per scalar.
 *
 * `--sink csv[:FILE]` (default BASE.csv). A fresh run writes a new or empty file only: it
 * refuses a BASE.csv that is already there, and a FILE with content (another run's csv, which it
 * would replace, as a fresh run refuses a --log that holds one; or any other data, which it
 * would destroy); nothing is ever truncated. Columns: step, wall_time, elapsed_s, then every
 * scalar of the step in the order pesc gives them (loss, aux_loss, z_loss, lr, grad_norm,
 * tokens_per_s, step_s, epoch, tokens, eval_loss, eval_accuracy, eval_answer_accuracy, aux_coef,
 * entropy/layer_NN, imbalance/layer_NN, load/layer_NN/expert_E); a value not measured at a step
 * (eval_loss between evaluations) is an empty cell. The header is written with the first step. A
 * resumed run appends to a file that has content under that file's header, each value in the
 * column its tag names; when the run has a tag the header lacks (a file of a pesc before
 * eval_loss, eval_accuracy or eval_answer_accuracy), the file is rewritten once, through a file
 * beside it renamed over it, with the column added and the rows before it empty there, so no row
 * lands under the wrong column and none is lost. A resumed run goes on from its checkpoint's
 * step (config->resumed_step): the rows past it, which a run that crashed later wrote and this
 * one writes again, are dropped the same way. Rows are flushed as written, so a spreadsheet or
 * `tail -F` sees them live. Events are not written (they are in the JSONL log).
 *
 * Built as a libtool module; it links nothing of pesc (plugins/pesc-plugin.h only). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pesc-plugin.h"

#define FIXED 3                  /* step, wall_time, elapsed_s */
#define NONE SIZE_MAX

typedef struct csv_sink {
    FILE *f;
    char path[4096];
    int header_done;
    int created;                 /* the open made the file: a run that wrote no row removes it */
    char **cols;                 /* the header's scalar columns, after the fixed three */
    size_t n_cols;
    size_t *map;                 /* the step scalar each column holds, or NONE */
} csv_sink;

static int io_error(const char *path, char *err, size_t errlen)
{
    snprintf(err, errlen, "%s: %s", path, strerror(errno ? errno : EIO));
    return -1;
}

/* The fields of one CSV line (RFC 4180 quoting; the line break, if any, ends it), as strings
 * the caller frees with free_fields; NULL when out of memory. */
static char **split_fields(const char *line, size_t *n)
{
    size_t len = strlen(line), cap = 8;
    char **fields = malloc(cap * sizeof *fields);
    char *buf = malloc(len + 1);
    *n = 0;
    if (!fields || !buf)
        goto fail;
    for (const char *p = line;;) {
        size_t k = 0;
        int quoted = 0;
        for (; *p && (quoted || (*p != ',' && *p != '\n' && *p != '\r')); p++) {
            if (*p == '"' && quoted && p[1] == '"')
                buf[k++] = *p++;
            else if (*p == '"')
                quoted = !quoted;
            else
                buf[k++] = *p;
        }
        buf[k] = '\0';
        if (*n == cap) {
            char **grown = realloc(fields, 2 * cap * sizeof *fields);
            if (!grown)
                goto fail;
            fields = grown, cap *= 2;
        }
        if (!(fields[*n] = strdup(buf)))
            goto fail;
        ++*n;
        if (*p != ',')
            break;
        p++;
    }
    free(buf);
    return fields;
fail:
    while (fields && *n)
        free(fields[--*n]);
    free(fields);
    free(buf);
    return NULL;
}

static void free_fields(char **fields, size_t n)
{
    for (size_t i = 0; fields && i < n; i++)
        free(fields[i]);
    free(fields);
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

static void put_header(FILE *f, char *const *cols, size_t n)
{
    fputs("step,wall_time,elapsed_s", f);
    for (size_t i = 0; i < n; i++) {
        fputc(',', f);
        put_field(f, cols[i]);
    }
    fputc('\n', f);
}

/* The scalar columns of the pesc csv at path (its header after the fixed three): 1 with
 * *cols (free_fields) and *n, 0 when its first line is no pesc csv header, -1 with errno when
 * it cannot be read or memory is short. */
static int read_columns(const char *path, char ***cols, size_t *n)
{
    FILE *f = fopen(path, "r");
    char *line = NULL;
    size_t cap = 0;
    char **fields = NULL;
    *n = 0;
    if (!f)
        return -1;
    errno = 0;
    if (getline(&line, &cap, f) > 0 && !(fields = split_fields(line, n)))
        errno = ENOMEM;
    int failed = errno != 0 && !fields;
    fclose(f);
    free(line);
    if (failed)
        return -1;
    if (!fields || *n < FIXED || strcmp(fields[0], "step") || strcmp(fields[1], "wall_time") ||
        strcmp(fields[2], "elapsed_s")) {
        free_fields(fields, *n);
        *n = 0;
        return 0;
    }
    free(fields[0]), free(fields[1]), free(fields[2]);
    memmove(fields, fields + FIXED, (*n - FIXED) * sizeof *fields);
    *cols = fields;
    *n -= FIXED;
    return 1;
}

/* Reads the header of the file a resumed run appends to into c->cols: 0, or -1 with err. */
static int read_header(csv_sink *c, char *err, size_t errlen)
{
    int is_csv = read_columns(c->path, &c->cols, &c->n_cols);
    if (is_csv < 0)
        return io_error(c->path, err, errlen);
    if (is_csv == 0) {
        snprintf(err, errlen, "%s: its first line is not a pesc csv header (step,wall_time,"
                 "elapsed_s,...), so its columns are unknown: name a new file, --sink csv:FILE",
                 c->path);
        return -1;
    }
    return 0;
}

/* The step of a row (its first field), or LONG_MIN when it has none: kept whatever it is. */
static long row_step(const char *row)
{
    char *end;
    errno = 0;
    long step = strtol(row, &end, 10);
    return end == row || errno || (*end != ',' && *end != '\n' && *end != '\0') ? LONG_MIN : step;
}

/* Rewrites the file beside itself and renames it over the old one: the header cols (n_cols),
 * then every row with its fixed fields and, in column k, the old column from[k] (NONE: an empty
 * cell), leaving out the rows past last_step (LONG_MAX: none). Appends go to the new file
 * after; on a failure the old file is left as it was. 0, or -1 with err. */
static int rewrite(csv_sink *c, char *const *cols, const size_t *from, size_t n_cols,
                   long last_step, char *err, size_t errlen)
{
    char tmp[PATH_MAX + 16], real[PATH_MAX];
    /* beside the file a link names, so the link stays one */
    const char *file = realpath(c->path, real) ? real : c->path;
    FILE *in = NULL, *out = NULL;
    char *line = NULL;
    size_t cap = 0;
    int rc = -1, fd = -1, made_tmp = 0;
    struct stat st;
    errno = 0;
    if (fflush(c->f) != 0 || !(in = fopen(c->path, "r")) || fstat(fileno(in), &st) != 0) {
        io_error(c->path, err, errlen);
        goto done;
    }
    snprintf(tmp, sizeof tmp, "%s.XXXXXX", file);
    if ((fd = mkstemp(tmp)) >= 0)
        made_tmp = 1;
    if (fd < 0 || !(out = fdopen(fd, "w"))) {
        io_error(tmp, err, errlen);
        goto done;
    }
    fd = -1;
    fchmod(fileno(out), st.st_mode & 07777);
    put_header(out, cols, n_cols);
    for (int first = 1; getline(&line, &cap, in) > 0; first = 0) {
        size_t n;
        char **fields;
        if (first)
            continue;                     /* the old header */
        long step = row_step(line);
        if (step != LONG_MIN && step > last_step)
            continue;
        if (!(fields = split_fields(line, &n))) {
            snprintf(err, errlen, "out of memory");
            goto done;
        }
        for (size_t k = 0; k < FIXED; k++) {
            if (k)
                fputc(',', out);
            put_field(out, k < n ? fields[k] : "");
        }
        for (size_t k = 0; k < n_cols; k++) {
            fputc(',', out);
            if (from[k] != NONE && FIXED + from[k] < n)
                put_field(out, fields[FIXED + from[k]]);
        }
        fputc('\n', out);
        free_fields(fields, n);
    }
    errno = 0;
    if (ferror(in)) {
        io_error(c->path, err, errlen);
        goto done;
    }
    if (ferror(out) || fflush(out) != 0 || fsync(fileno(out)) != 0) {
        io_error(tmp, err, errlen);
        goto done;
    }
    int closed = fclose(out);
    out = NULL;
    if (closed != 0 || rename(tmp, file) != 0) {
        io_error(tmp, err, errlen);
        goto done;
    }
    made_tmp = 0;
    fclose(c->f);
    if (!(c->f = fopen(c->path, "a"))) {   /* csv_close knows a NULL f */
        io_error(c->path, err, errlen);
        goto done;
    }
    rc = 0;
done:
    if (out)
        fclose(out);
    if (fd >= 0)
        close(fd);
    if (made_tmp)
        unlink(tmp);
    if (in)
        fclose(in);
    free(line);
    return rc;
}

/* A row a run killed (or out of space) cut short ends the file without its newline: it is
 * cut off, so that the next row starts a line of its own. 0, or -1 with err. */
static int cut_partial_row(const csv_sink *c, char *err, size_t errlen)
{
    int fd = open(c->path, O_RDWR | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        if (fd >= 0)
            close(fd);
        return io_error(c->path, err, errlen);
    }
    off_t end = st.st_size;
    char buf[4096];
    int rc = 0;
    while (end > 0) {   /* back to the last newline */
        size_t n = end < (off_t)sizeof buf ? (size_t)end : sizeof buf;
        ssize_t got = pread(fd, buf, n, end - (off_t)n);
        if (got != (ssize_t)n) {
            rc = io_error(c->path, err, errlen);
            break;
        }
        size_t at = n;
        while (at > 0 && buf[at - 1] != '\n')
            at--;
        end -= (off_t)(n - at);
        if (at > 0)
            break;
    }
    if (rc == 0 && end < st.st_size && ftruncate(fd, end) != 0)
        rc = io_error(c->path, err, errlen);
    close(fd);
    return rc;
}

/* A resumed run goes on from its checkpoint's step: the rows past it, which a run that
 * crashed later logged and this one runs again, are dropped (the file rewritten as
 * add_columns does), so that no step has two rows. 0, or -1 with err. */
static int drop_rows_after(csv_sink *c, long last_step, char *err, size_t errlen)
{
    FILE *in = fopen(c->path, "r");
    char *line = NULL;
    size_t cap = 0;
    int past = 0;
    if (!in)
        return io_error(c->path, err, errlen);
    for (int first = 1; !past && getline(&line, &cap, in) > 0; first = 0) {
        long step = first ? LONG_MIN : row_step(line);
        past = step != LONG_MIN && step > last_step;
    }
    fclose(in);
    free(line);
    if (!past)
        return 0;
    size_t *same = malloc((c->n_cols ? c->n_cols : 1) * sizeof *same);
    if (!same) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t k = 0; k < c->n_cols; k++)
        same[k] = k;
    int rc = rewrite(c, c->cols, same, c->n_cols, last_step, err, errlen);
    free(same);
    return rc;
}

/* A fresh run's named FILE that has content: a pesc csv is another run's rows, which it
 * would replace; anything else is data it would destroy. Either is refused (-1 with err), as
 * a fresh run's --log is; an empty file is taken (0). */
static int refuse_content(const csv_sink *c, int fd, char *err, size_t errlen)
{
    struct stat st;
    char **cols = NULL;
    size_t n = 0;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0)
        return 0;
    int is_csv = read_columns(c->path, &cols, &n);
    free_fields(cols, n);
    if (is_csv > 0)
        snprintf(err, errlen, "%s already holds a pesc csv (%lld bytes), which a fresh run "
                 "would replace: remove it, name another file, or continue its run with "
                 "--resume", c->path, (long long)st.st_size);
    else
        snprintf(err, errlen, "%s is not a pesc csv (its first line is not step,wall_time,"
                 "elapsed_s,...), and this sink would destroy it: name another file, "
                 "--sink csv:FILE", c->path);
    return -1;
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
    /* never truncated: a fresh run takes a new or empty file, a resumed one appends; a BASE.csv
     * already there may be another run's, so a fresh run does not take it even empty */
    int flags = O_WRONLY | O_CLOEXEC | (config->resume ? O_APPEND : 0);
    int fd = open(c->path, flags | O_CREAT | O_EXCL, 0666);
    c->created = fd >= 0;
    if (fd < 0 && errno == EEXIST && (config->resume || config->target))
        fd = open(c->path, flags);
    if (fd < 0) {
        if (errno == EEXIST)
            snprintf(err, errlen, "%s is already there, and this run was not told to replace it: "
                     "name the file (--sink csv:FILE), remove it, or continue its run with "
                     "--resume", c->path);
        else
            io_error(c->path, err, errlen);
        free(c);
        return NULL;
    }
    if (!config->resume && refuse_content(c, fd, err, errlen) != 0) {
        close(fd);
        free(c);
        return NULL;
    }
    if (!(c->f = fdopen(fd, config->resume ? "a" : "w"))) {
        io_error(c->path, err, errlen);
        close(fd);
        free(c);
        return NULL;
    }
    /* appending to rows already there: under their header, by column name (fdopen does not
     * seek to the end, so ftell would read 0) */
    struct stat st;
    int failed = config->resume && cut_partial_row(c, err, errlen) != 0;
    c->header_done = config->resume && fstat(fd, &st) == 0 && st.st_size > 0;
    long resumed_step = PESC_PLUGIN_HAS(config, pesc_sink_config, resumed_step)
                            ? config->resumed_step : 0;
    if (failed || (c->header_done &&
                   (read_header(c, err, errlen) != 0 ||
                    (resumed_step > 0 && drop_rows_after(c, resumed_step, err, errlen) != 0)))) {
        if (c->f)
            fclose(c->f);
        free_fields(c->cols, c->n_cols);
        free(c);
        return NULL;
    }
    return c;
}

/* Points every column at the step scalar of its name; returns how many scalars have a
 * column, or -1 when out of memory. */
static long map_columns(csv_sink *c, const pesc_step *step)
{
    size_t *map = realloc(c->map, (c->n_cols ? c->n_cols : 1) * sizeof *map);
    if (!map)
        return -1;
    c->map = map;
    long mapped = 0;
    for (size_t j = 0; j < c->n_cols; j++) {
        map[j] = NONE;
        for (size_t i = 0; i < step->n_scalars; i++)
            if (!strcmp(step->scalars[i].tag, c->cols[j])) {
                map[j] = i, mapped++;
                break;
            }
    }
    return mapped;
}

/* Whether the columns still hold this step's scalars, each tag in the column of its name. */
static int map_holds(const csv_sink *c, const pesc_step *step)
{
    size_t mapped = 0;
    if (!c->map)
        return 0;
    for (size_t j = 0; j < c->n_cols; j++) {
        if (c->map[j] == NONE)
            continue;
        if (c->map[j] >= step->n_scalars || strcmp(step->scalars[c->map[j]].tag, c->cols[j]))
            return 0;
        mapped++;
    }
    return mapped == step->n_scalars;
}

/* The header gains the step's tags it lacks: the file is rewritten, every row under the new
 * header with an empty cell in each new column. 0, or -1 with err. */
static int add_columns(csv_sink *c, const pesc_step *step, char *err, size_t errlen)
{
    size_t n_new = 0;
    char **cols = malloc((c->n_cols + step->n_scalars) * sizeof *cols);
    size_t *from = malloc((c->n_cols + step->n_scalars) * sizeof *from); /* old column or NONE */
    int rc = -1;
    if (!cols || !from) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    /* the step's tags in its order (each an old column where it was one), then the old
     * columns it no longer has */
    for (size_t i = 0; i < step->n_scalars; i++) {
        cols[n_new] = (char *)step->scalars[i].tag, from[n_new] = NONE;
        for (size_t j = 0; j < c->n_cols; j++)
            if (!strcmp(c->cols[j], cols[n_new]))
                from[n_new] = j;
        n_new++;
    }
    for (size_t j = 0; j < c->n_cols; j++) {
        size_t i = 0;
        while (i < step->n_scalars && strcmp(step->scalars[i].tag, c->cols[j]))
            i++;
        if (i == step->n_scalars)
            cols[n_new] = c->cols[j], from[n_new++] = j;
    }
    if (rewrite(c, cols, from, n_new, LONG_MAX, err, errlen) != 0)
        goto done;
    for (size_t k = 0; k < n_new; k++)   /* the old columns' strings, and copies of the new */
        if (from[k] != NONE)
            cols[k] = c->cols[from[k]];
        else if (!(cols[k] = strdup(cols[k]))) {
            while (k--)
                if (from[k] == NONE)
                    free(cols[k]);
            snprintf(err, errlen, "out of memory");
            goto done;
        }
    free(c->cols);                        /* its strings live on in cols */
    c->cols = cols, cols = NULL;
    c->n_cols = n_new;
    rc = 0;
done:
    free(cols);
    free(from);
    return rc;
}

static int csv_record(void *self, const pesc_step *step, char *err, size_t errlen)
{
    csv_sink *c = self;
    errno = 0;
    if (!c->header_done) {
        c->cols = malloc((step->n_scalars ? step->n_scalars : 1) * sizeof *c->cols);
        if (!c->cols) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        for (c->n_cols = 0; c->n_cols < step->n_scalars; c->n_cols++)
            if (!(c->cols[c->n_cols] = strdup(step->scalars[c->n_cols].tag))) {
                snprintf(err, errlen, "out of memory");
                return -1;
            }
        put_header(c->f, c->cols, c->n_cols);
        c->header_done = 1;
    }
    if (!map_holds(c, step)) {
        long mapped = map_columns(c, step);
        if (mapped >= 0 && (size_t)mapped < step->n_scalars) {
            if (add_columns(c, step, err, errlen) != 0)
                return -1;
            mapped = map_columns(c, step);
        }
        if (mapped < 0) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
    }
    fprintf(c->f, "%ld,%.6f,%.6g", step->step, step->wall_time, step->elapsed_s);
    for (size_t j = 0; j < c->n_cols; j++) {   /* NaN or no such scalar: an empty cell */
        double v = c->map[j] == NONE ? NAN : step->scalars[c->map[j]].value;
        if (v == v)
            fprintf(c->f, ",%.9g", v);
        else
            fputc(',', c->f);
    }
    fputc('\n', c->f);
    if (ferror(c->f) || fflush(c->f) != 0)
        return io_error(c->path, err, errlen);
    return 0;
}

static int csv_close(void *self, char *err, size_t errlen)
{
    csv_sink *c = self;
    int rc = 0;
    errno = 0;
    if (c->f && fclose(c->f) != 0)
        rc = io_error(c->path, err, errlen);
    /* a run refused for another output, or stopped before its first step, leaves no empty
     * BASE.csv behind that its next run would be refused for */
    if (c->created && !c->header_done)
        unlink(c->path);
    free_fields(c->cols, c->n_cols);
    free(c->map);
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
