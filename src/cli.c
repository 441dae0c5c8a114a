/* cli — see cli.h. */
#include "cli.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *usage_where;

void cli_usage_where(const char *where) { usage_where = where; }

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "pesc %s: %s%s", cmd, usage_where ? usage_where : "", usage_where ? ": " : "");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see pesc %s --help)\n", cmd);
    va_end(ap);
    return EXIT_USAGE;
}

int cli_unexpected(const char *cmd, const char *arg, const char *hint)
{
    char shown[80];
    size_t n = pesc_show_controls(shown, sizeof shown, arg);
    return cli_usage_error(cmd, "unexpected argument '%s%s'%s%s", shown,
                           n < strlen(arg) ? "..." : "", hint ? ": " : "", hint ? hint : "");
}

const char *cli_data_hint(const char *arg)
{
    struct stat st;
    return strstr(arg, ".json") || (stat(arg, &st) == 0 && S_ISREG(st.st_mode))
               ? "a data file goes after --data" : NULL;
}

int cli_fail(const char *cmd, const pesc_error *err)
{
    fprintf(stderr, "pesc %s: %s\n", cmd, err->msg);
    return 1;
}

pesc_backend *cli_backend_new(const char *cmd, const char *name)
{
    pesc_error err;
    pesc_backend *b = backend_new(name, &err);
    if (!b)
        cli_fail(cmd, &err);
    else if (*backend_gpu_passed_over(b))
        fprintf(stderr, "pesc %s: note: --backend auto runs on the CPU: %s\n", cmd,
                backend_gpu_passed_over(b));
    return b;
}

/* Edits (insert, delete, replace, swap two neighbours) from a to b; a name of 32 bytes or
 * more is no typo of an option's: INT_MAX. */
static int edits(const char *a, const char *b)
{
    enum { MAX = 32 };
    size_t n = strlen(a), m = strlen(b);
    if (n >= MAX || m >= MAX)
        return INT_MAX;
    int d[MAX][MAX];
    for (size_t i = 0; i <= n; i++)
        for (size_t j = 0; j <= m; j++) {
            if (i == 0 || j == 0) {
                d[i][j] = (int)(i + j);
                continue;
            }
            int best = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            best = d[i - 1][j] + 1 < best ? d[i - 1][j] + 1 : best;
            best = d[i][j - 1] + 1 < best ? d[i][j - 1] + 1 : best;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    return d[n][m];
}

/* Whether d edits make a typo of a name this long: within two, and fewer than half its length
 * (no name is a typo of "lr"). */
static int typo_edits(const char *name, int d)
{
    return d < (strlen(name) < 6 ? (int)strlen(name) / 2 + 1 : 3);
}

const char *cli_nearest_option(const struct option *table, const char *name)
{
    const char *best = NULL;
    int fewest = INT_MAX;
    for (const struct option *o = table; o->name; o++) {
        int d = edits(name, o->name);
        if (d < fewest && typo_edits(name, d)) {
            fewest = d;
            best = o->name;
        }
    }
    return best;
}

const char *cli_nearest_word(const char *const *words, size_t n, const char *name)
{
    const char *best = NULL;
    int fewest = INT_MAX;
    for (size_t i = 0; i < n; i++) {
        int d = edits(name, words[i]);
        if (d < fewest && typo_edits(name, d)) {
            fewest = d;
            best = words[i];
        }
    }
    return best;
}

/* The names a Hugging Face TrainingArguments, LLaMA-Factory or Camelidae config (or their
 * command lines) give what pesc has under another name, dashes for underscores */
static const char *const other_names[][2] = {
    {"model-name-or-path", "model"}, {"dataset", "data"}, {"eval-dataset", "eval-data"},
    {"cutoff-len", "seq"}, {"max-seq-length", "seq"}, {"max-length", "seq"},
    {"per-device-train-batch-size", "batch"}, {"gradient-accumulation-steps", "grad-accum"},
    {"packing", "pack"}, {"gradient-checkpointing", "recompute"}, {"max-steps", "steps"},
    {"num-train-epochs", "epochs"}, {"learning-rate", "lr"}, {"lr-scheduler-type", "schedule"},
    {"warmup-steps", "warmup"}, {"max-grad-norm", "clip"}, {"output-dir", "save"},
    {"save-steps", "save-every"}, {"save-total-limit", "keep"}, {"eval-steps", "eval-every"},
    {"val-size", "eval-split"}, {"resume-from-checkpoint", "resume"}, {"report-to", "sink"},
    {"num-experts", "experts"}, {"num-experts-per-tok", "top-k"}, {"topk", "top-k"},
    {"moe-scaling", "adapter-scale"}, {"router-aux-loss-coef", "aux-coef"},
    {"router-z-loss-coef", "z-coef"}, {"lora-target", "lora-targets"},
    {"neftune-noise-alpha", "neftune"}, {"predict-with-generate", "eval-generate"},
    {"metric-for-best-model", "best-by"}, {"load-best-model-at-end", "keep-best"},
    {"max-new-tokens", "max-tokens"}, {"model-path", "model"}};

const char *cli_other_name(const struct option *table, const char *name)
{
    char dashed[64];
    snprintf(dashed, sizeof dashed, "%s", name);
    for (char *p = dashed; *p; p++)
        *p = *p == '_' ? '-' : *p;
    for (size_t k = 0; k < sizeof other_names / sizeof *other_names; k++)
        if (strcmp(dashed, other_names[k][0]) == 0)
            for (const struct option *o = table; o->name; o++)
                if (strcmp(o->name, other_names[k][1]) == 0)
                    return o->name;
    return NULL;
}

int cli_getopt(const char *cmd, int argc, char **argv, const char *shortopts,
               const struct option *longopts)
{
    opterr = 0;
    int before = optind;
    int c = getopt_long(argc, argv, shortopts, longopts, NULL);
    if (c != '?')
        return c;
    const char *arg = optind - 1 >= before && optind - 1 < argc ? argv[optind - 1] : "?";
    /* getopt reports a missing value by setting optopt to the option it belongs to */
    int known = optopt && (strncmp(arg, "--", 2) == 0 || strchr(shortopts, optopt));
    /* --pack=true: a value given to a flag, which getopt reports as it does a missing one */
    const char *eq = strncmp(arg, "--", 2) == 0 ? strchr(arg, '=') : NULL;
    const struct option *flag = NULL;
    for (const struct option *o = longopts; eq && known && o->name; o++)
        if (strlen(o->name) == (size_t)(eq - arg - 2) && strncmp(o->name, arg + 2, eq - arg - 2) == 0)
            flag = o->has_arg == no_argument ? o : NULL;
    if (flag)
        cli_usage_error(cmd, "option --%s takes no value: it is a flag (give --%s alone)",
                        flag->name, flag->name);
    else if (known && strncmp(arg, "--", 2) == 0)
        cli_usage_error(cmd, "option %s needs a value", arg);
    else if (known)
        cli_usage_error(cmd, "option -%c needs a value", optopt);
    else if (optopt)
        cli_usage_error(cmd, "unknown option -%c", optopt);
    else {
        /* a typo of a long option is told the nearest one */
        char name[64] = "";
        if (strncmp(arg, "--", 2) == 0)
            snprintf(name, sizeof name, "%.*s", (int)strcspn(arg + 2, "="), arg + 2);
        const char *start[4];
        int n_starting = 0;
        for (const struct option *o = longopts; *name && o->name; o++)
            if (strncmp(o->name, name, strlen(name)) == 0 && n_starting++ < 4)
                start[n_starting - 1] = o->name;
        char starting[200] = "";
        for (int i = 0; i < n_starting && i < 4; i++)
            snprintf(starting + strlen(starting), sizeof starting - strlen(starting), "%s--%s",
                     i == 0 ? "" : i + 1 == n_starting ? " or " : ", ", start[i]);
        const char *other = *name ? cli_other_name(longopts, name) : NULL;
        const char *near = *name ? cli_nearest_option(longopts, name) : NULL;
        if (n_starting > 1)   /* getopt takes a prefix of one option only */
            cli_usage_error(cmd, "option %s is ambiguous: %s%s?", arg, starting,
                            n_starting > 4 ? ", ..." : "");
        else if (other)
            cli_usage_error(cmd, "unknown option %s: pesc's name for it is --%s", arg, other);
        else if (near)
            cli_usage_error(cmd, "unknown option %s: did you mean --%s?", arg, near);
        else
            cli_usage_error(cmd, "unknown option %s", arg);
    }
    return '?';
}

int cli_backend(const char *cmd, const char *name)
{
    if (strcmp(name, "auto") == 0 || strcmp(name, "cpu") == 0 || strcmp(name, "cuda") == 0)
        return 0;
    return cli_usage_error(cmd, "--backend %s: unknown backend; choose auto, cpu or cuda", name);
}

int cli_path(const char *cmd, const char *flag, const char *arg, const char *what,
             const char **out)
{
    if (!*arg)
        return cli_usage_error(cmd, "%s '': the path is empty; name %s", flag, what);
    *out = arg;
    return 0;
}

cli_json_text cli_json_number(double v, int digits)
{
    cli_json_text t;
    if (isfinite(v))
        snprintf(t.text, sizeof t.text, "%.*g", digits, v);
    else
        snprintf(t.text, sizeof t.text, "null");
    return t;
}

int cli_parse_long(const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}
