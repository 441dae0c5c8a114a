/* cmd_fetch — `pesc fetch`: downloads files and whole models into the cache (or -o PATH)
 * and prints where each one is. Progress goes to stderr: bars on a terminal, plain lines
 * otherwise; the paths go to stdout, one a line, in the order of the arguments. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "fetch.h"
#include "fetch_view.h"

static const char fetch_usage[] =
    "usage: pesc fetch URL... [-o PATH] [--sha256 HEX] [--force] [--jobs N] [--retries N]\n"
    "                  [--quiet]\n"
    "\n"
    "Downloads each URL into the cache ($XDG_CACHE_HOME/pesc, default ~/.cache/pesc) and\n"
    "prints the local path of each, one a line. A complete file already in the cache is\n"
    "reused; an interrupted download resumes where it stopped.\n"
    "\n"
    "URLs:\n"
    "  hf://datasets/OWNER/NAME/PATH[@REV]   a file of a dataset on the hub\n"
    "  hf://OWNER/NAME/PATH[@REV]            a file of a model repository\n"
    "  hf://OWNER/NAME[@REV]                 a whole model: config, tokenizer, safetensors\n"
    "  http://... https://...\n"
    "\n"
    "  -o PATH         with one URL: the file to write (or a directory to write it into:\n"
    "                  one that exists, or PATH/ to make it);\n"
    "                  with several: a directory; -o - writes the one file's content to\n"
    "                  standard output (it is kept in the cache). A file already there is\n"
    "                  refused unless\n"
    "                  --sha256 or --force says what to do with it (never a device or\n"
    "                  FIFO)\n"
    "  --sha256 HEX    expected SHA-256 of the file (one URL); a mismatch deletes the\n"
    "                  download. A file already there is kept when it matches, else\n"
    "                  replaced by a download that does\n"
    "  -f, --force     download even when the file is already there (in the cache or at\n"
    "                  -o), replacing it once the new copy is complete\n"
    "  -j, --jobs N    transfers at once (default 4)\n"
    "  --retries N     retries before a file is given up (0 to 30; default\n"
    "                  $PESC_FETCH_RETRIES, else 5). Only tries without progress count: one\n"
    "                  that moves the download 64 KiB on starts the count over\n"
    "  -q, --quiet     no progress on stderr\n"
    "\n"
    "Environment: HF_TOKEN (sent to the hub only), PESC_HF_ENDPOINT, XDG_CACHE_HOME,\n"
    "http_proxy/https_proxy/no_proxy, CURL_CA_BUNDLE, SSL_CERT_FILE, SSL_CERT_DIR.\n";

typedef struct fetch_cli {
    const char *output, *sha256;
    int jobs, quiet, force;
    int to_stdout;                /* -o -: the file's content on stdout, not its path */
    int retries;                  /* -1 when not given: the environment, then 5 */
    char **urls;
    int n_urls;
} fetch_cli;

static int parse_fetch(fetch_cli *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"output", required_argument, NULL, 'o'}, {"sha256", required_argument, NULL, 's'},
        {"jobs", required_argument, NULL, 'j'},   {"quiet", no_argument, NULL, 'q'},
        {"retries", required_argument, NULL, 'r'}, {"force", no_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0}};
    *o = (fetch_cli){.jobs = 4, .retries = -1};
    int c;
    long jobs, retries;
    while ((c = cli_getopt("fetch", argc, argv, "o:j:qfh", longopts)) != -1) {
        switch (c) {
        case 'o':
            if (cli_path("fetch", "-o", optarg, "the file to write", &o->output))
                return EXIT_USAGE;
            break;
        case 's':
            o->sha256 = optarg;
            if (strlen(optarg) != 64 || strspn(optarg, "0123456789abcdefABCDEF") != 64)
                return cli_usage_error("fetch", "--sha256 %s: expected 64 hex digits%s", optarg,
                                       fetch_is_url(optarg) ? " (the hash is missing)" : "");
            break;
        case 'j':
            if (cli_parse_long(optarg, 1, 64, &jobs) != 0)
                return cli_usage_error("fetch", "--jobs %s: expected a number from 1 to 64",
                                       optarg);
            o->jobs = (int)jobs;
            break;
        case 'r':
            if (cli_parse_long(optarg, 0, 30, &retries) != 0)
                return cli_usage_error("fetch", "--retries %s: expected a number from 0 to 30",
                                       optarg);
            o->retries = (int)retries;
            break;
        case 'q': o->quiet = 1; break;
        case 'f': o->force = 1; break;
        case 'h': fputs(fetch_usage, stdout); return 0;
        default: return EXIT_USAGE;
        }
    }
    o->urls = argv + optind;
    o->n_urls = argc - optind;
    if (o->n_urls == 0 && o->output && fetch_is_url(o->output))
        return cli_usage_error("fetch", "no URL given: -o took %s as the file to write (-o "
                               "PATH URL)", o->output);
    if (o->n_urls == 0)
        return cli_usage_error("fetch", "no URL given");
    int files = 0;
    for (int i = 0; i < o->n_urls; i++) {
        const char *url = o->urls[i];
        if (!fetch_is_url(url))
            return cli_usage_error("fetch", "%s: not a URL (use hf://, http:// or https://)",
                                   url);
        if (fetch_is_model_url(url)) {
            if (o->output || o->sha256 || o->force)
                return cli_usage_error("fetch", "%s is a whole model: -o, --sha256 and --force "
                                       "apply to single files", url);
            continue;
        }
        files++;
        char *request, *cached;
        pesc_error err = {{0}};
        if (fetch_map_url(url, NULL, &request, &cached, &err) != 0)
            return cli_usage_error("fetch", "%s", err.msg);
        free(request);
        free(cached);
    }
    if (o->sha256 && files != 1)
        return cli_usage_error("fetch", "--sha256 needs exactly one file URL");
    if (o->output && strcmp(o->output, "-") == 0) {
        if (o->n_urls != 1)
            return cli_usage_error("fetch", "-o - writes one file to standard output: give one "
                                   "URL");
        o->output = NULL;   /* into the cache, then out */
        o->to_stdout = 1;
    }
    struct stat st;   /* several files go into -o as a directory: one error, not one a URL */
    if (o->output && o->n_urls > 1 && stat(o->output, &st) == 0 && !S_ISDIR(st.st_mode))
        return cli_usage_error("fetch", "-o %s: several URLs go into a directory, and that is "
                               "a file: name a directory (or fetch one URL to it)", o->output);
    return -1;   /* go on */
}

/* ---- where each file goes ------------------------------------------------------------------ */

static int is_directory(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The -o destination of url, or NULL for the cache. One URL's -o is a file unless it is a
 * directory already or ends in '/' (which names a directory to make: as a file name, it
 * left DIR/.part behind and failed to rename it onto DIR/). */
static char *output_path(const fetch_cli *o, const char *url)
{
    if (!o->output)
        return NULL;
    size_t n = strlen(o->output);
    if (o->n_urls == 1 && !is_directory(o->output) && o->output[n - 1] != '/')
        return xstrdup(o->output);
    char *request, *cached;
    if (fetch_map_url(url, NULL, &request, &cached, NULL) != 0)
        return NULL;   /* checked when parsing */
    const char *base = strrchr(cached, '/');
    char *path = pesc_path_join(o->output, base ? base + 1 : cached);
    free(request);
    free(cached);
    return path;
}

/* ---- the command ---------------------------------------------------------------------------- */

typedef struct fetch_item {
    int id;                       /* fetcher id of a file, -1 for a model */
    char *path;                   /* the result */
    pesc_error err;
    int failed;
    int repeats;                  /* an earlier argument that is the same download, or -1 */
} fetch_item;

/* A file at an -o destination may be anything; only --sha256 can show that it is this URL's
 * content, and only --force may replace it. Otherwise it is refused, before any request,
 * rather than reported as downloaded. What is not a file (a device such as /dev/null, a FIFO,
 * a socket, or a link to one) is refused even then: the download would be renamed over it,
 * and --sha256 would read /dev/zero forever. */
static int refuse_existing(const fetch_cli *o, const char *url, const char *dest,
                           pesc_error *err)
{
    struct stat st;
    if (lstat(dest, &st) != 0)
        return 0;
    if (stat(dest, &st) == 0 && !S_ISREG(st.st_mode))   /* a link's target counts */
        return pesc_fail(err, "%s: %s is not a regular file (a device, FIFO or socket), which "
                         "pesc fetch never replaces; choose a file name or a directory for -o",
                         url, dest);
    if (o->sha256 || o->force)
        return 0;
    return pesc_fail(err, "%s: %s already exists; pass --force to replace it, or --sha256 HEX "
                     "to keep it when it matches", url, dest);
}

/* The first earlier argument with argument i's URL, or -1. */
static int earlier_url(const fetch_cli *o, int i)
{
    for (int j = 0; j < i; j++)
        if (strcmp(o->urls[j], o->urls[i]) == 0)
            return j;
    return -1;
}

/* Queues every file once; two URLs may not share one -o destination. A URL given again is
 * not queued a second time: the fetcher would queue it anew once the first had failed (its
 * queue takes a failed download back), and its failure would be reported twice. */
static int queue_files(const fetch_cli *o, fetcher *f, fetch_item *items)
{
    for (int i = 0; i < o->n_urls; i++) {
        items[i].id = -1;
        if (fetch_is_model_url(o->urls[i]))
            continue;
        char *dest = output_path(o, o->urls[i]);
        for (int j = 0; dest && j < i; j++)
            if (items[j].path && strcmp(items[j].path, dest) == 0) {
                cli_usage_error("fetch", "%s and %s would both be saved as %s", o->urls[j],
                                o->urls[i], dest);
                free(dest);
                return -1;
            }
        items[i].path = dest;   /* held until the result replaces it */
    }
    for (int i = 0; i < o->n_urls; i++) {
        if (fetch_is_model_url(o->urls[i]) || earlier_url(o, i) >= 0)
            continue;   /* a repeat shares the earlier one's result (find_repeats) */
        if (items[i].path && refuse_existing(o, o->urls[i], items[i].path, &items[i].err) != 0) {
            items[i].failed = 1;
        } else {
            items[i].id = fetcher_add(f, o->urls[i], items[i].path, o->sha256,
                                      o->force ? FETCH_REPLACE : 0, &items[i].err);
            items[i].failed = items[i].id < 0;
        }
        free(items[i].path);
        items[i].path = NULL;
    }
    return 0;
}

/* An argument may name the same download as an earlier one (a URL given twice, which
 * queue_files queues once, or two spellings of one hub file, which the fetcher queues once
 * while the first is not yet done): it shares that one's result, so that a failure is
 * reported once. */
static void find_repeats(const fetch_cli *o, fetch_item *items)
{
    for (int i = 0; i < o->n_urls; i++) {
        items[i].repeats = earlier_url(o, i);
        for (int j = 0; j < i && items[i].repeats < 0; j++)
            if (items[i].id >= 0 && items[j].id == items[i].id)
                items[i].repeats = j;
        int r = items[i].repeats;   /* the first of them all (j's is settled already) */
        if (r >= 0 && items[r].repeats >= 0)
            items[i].repeats = items[r].repeats;
    }
}

static void collect_results(const fetch_cli *o, fetcher *f, fetch_item *items)
{
    /* models one after the other (each fetches its files in parallel) while files run */
    for (int i = 0; i < o->n_urls; i++)
        if (fetch_is_model_url(o->urls[i]) && items[i].repeats < 0)
            items[i].failed = fetcher_get_model(f, o->urls[i], &items[i].path,
                                                &items[i].err) != 0;
    for (int i = 0; i < o->n_urls; i++) {
        if (items[i].id < 0 || items[i].repeats >= 0)
            continue;
        fetcher_wait(f, items[i].id, -1);
        items[i].failed = fetcher_result(f, items[i].id, &items[i].path, &items[i].err) != 0;
    }
}

/* What the interrupted download leaves (its .part) is resumed by the same command: said in
 * one line; then pesc dies of the signal, so that a shell script stops there too. */
static void on_interrupt(int sig)
{
    static const char said[] = "\npesc fetch: interrupted; what was downloaded so far is "
                               "kept: run the same command again to resume\n";
    ssize_t ignored = write(STDERR_FILENO, said, sizeof said - 1);
    (void)ignored;
    signal(sig, SIG_DFL);
    raise(sig);
}

/* -o -: the downloaded file's content to standard output. 0, or -1 with err set. */
static int print_content(const char *path, pesc_error *err)
{
    FILE *in = fopen(path, "rb");
    if (!in)
        return pesc_fail(err, "%s: %s", path, strerror(errno));
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, stdout) != n)
            break;   /* main reports standard output's error */
    int failed = ferror(in);
    fclose(in);
    return failed ? pesc_fail(err, "%s: read error", path) : 0;
}

int cmd_fetch(int argc, char **argv)
{
    fetch_cli o;
    int status = parse_fetch(&o, argc, argv);
    if (status >= 0)
        return status;
    pesc_error err = {{0}};
    /* fetch_options.retries: 0 is "the default", below 0 "none" */
    fetch_options options = {.jobs = o.jobs, .retries = o.retries < 0    ? 0
                                                       : o.retries == 0 ? -1
                                                                        : o.retries};
    fetcher *f = fetcher_new(&options, &err);
    if (!f)
        return cli_fail("fetch", &err);
    fetch_item *items = xcalloc((size_t)o.n_urls, sizeof *items);
    if (queue_files(&o, f, items) != 0) {
        fetcher_delete(f);
        for (int i = 0; i < o.n_urls; i++)
            free(items[i].path);
        free(items);
        return EXIT_USAGE;
    }
    find_repeats(&o, items);
    struct sigaction stop = {.sa_handler = on_interrupt}, was;
    for (int sig = SIGINT; sig; sig = sig == SIGINT ? SIGTERM : 0)   /* what was ignored stays */
        if (sigaction(sig, NULL, &was) == 0 && was.sa_handler != SIG_IGN)
            sigaction(sig, &stop, NULL);
    fetch_view *view = o.quiet ? NULL : fetch_view_start(f);
    collect_results(&o, f, items);
    fetch_view_stop(view);
    status = 0;
    for (int i = 0; i < o.n_urls; i++) {
        const fetch_item *result = items[i].repeats >= 0 ? &items[items[i].repeats] : &items[i];
        if (result->failed) {
            if (result == &items[i])   /* one line per download, not per argument */
                cli_fail("fetch", &result->err);
            status = 1;
        } else if (o.to_stdout) {
            if (print_content(result->path, &err) != 0) {
                cli_fail("fetch", &err);
                status = 1;
            }
        } else {
            printf("%s\n", result->path);
        }
    }
    for (int i = 0; i < o.n_urls; i++)
        free(items[i].path);
    free(items);
    fetcher_delete(f);
    return status;   /* main checks that the paths reached standard output */
}
