/* cli — see cli.h. */
#include "cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "pesc %s: ", cmd);
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
    if (known && strncmp(arg, "--", 2) == 0)
        cli_usage_error(cmd, "option %s needs a value", arg);
    else if (known)
        cli_usage_error(cmd, "option -%c needs a value", optopt);
    else if (optopt)
        cli_usage_error(cmd, "unknown option -%c", optopt);
    else
        cli_usage_error(cmd, "unknown option %s", arg);
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
