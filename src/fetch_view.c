/* fetch_view — see fetch_view.h. */
#include "fetch_view.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

struct fetch_view {
    fetcher *f;
    int tty;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    int stop;
    /* the thread's own */
    int drawn;                    /* bar lines on screen below the permanent ones */
    fetch_progress *seen;         /* last state shown per id */
    double *line_at;              /* when the last plain progress line was written, per id */
    int n_seen;
};

static int terminal_columns(void)
{
    struct winsize ws;
    if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 40)
        return ws.ws_col;
    return 80;
}

/* The permanent line for a transfer that has ended (failures are reported by the caller). */
static void print_ended(const fetch_progress *p)
{
    char size[32];
    pesc_format_bytes((double)p->done, size, sizeof size);
    if (p->state == FETCH_DONE)
        fprintf(stderr, "pesc: %s: %s in %.1f s\n", p->name, size, p->elapsed_s);
    else if (p->state == FETCH_CACHED)
        fprintf(stderr, "pesc: %s: %s, %s\n", p->name, size, p->message);
    else if (p->state == FETCH_ABSENT)
        fprintf(stderr, "pesc: %s: not in the repository (optional)\n", p->name);
}

static void print_plain_progress(const fetch_progress *p)
{
    char done[32], total[32], rate[32], eta[32];
    pesc_format_bytes((double)p->done, done, sizeof done);
    pesc_format_bytes((double)p->total, total, sizeof total);
    pesc_format_bytes(p->rate, rate, sizeof rate);
    pesc_format_duration(p->eta_s, eta, sizeof eta);
    if (p->total > 0)
        fprintf(stderr, "pesc: %s: %s of %s (%d%%), %s/s, %s left\n", p->name, done, total,
                (int)(100.0 * (double)p->done / (double)p->total), rate, eta);
    else
        fprintf(stderr, "pesc: %s: %s, %s/s\n", p->name, done, rate);
}

static void print_bar(const fetch_progress *p, int columns)
{
    char done[32], total[32], rate[32], eta[32];
    pesc_format_bytes((double)p->done, done, sizeof done);
    pesc_format_bytes((double)p->total, total, sizeof total);
    pesc_format_bytes(p->rate, rate, sizeof rate);
    pesc_format_duration(p->eta_s, eta, sizeof eta);
    enum { tail_width = 44, bar_width = 20 };
    char numbers[192];
    snprintf(numbers, sizeof numbers, "%10s / %-10s %10s/s %6s", done,
             p->total >= 0 ? total : "?", rate, eta);
    const char *tail = p->state == FETCH_RUNNING ? numbers : p->message;
    int name_width = columns - bar_width - tail_width - 10;
    if (name_width < 8)
        name_width = 8;
    char bar[32];
    int filled = p->total > 0 ? (int)((double)bar_width * (double)p->done / (double)p->total) : 0;
    for (int i = 0; i < bar_width; i++)
        bar[i] = i < filled ? '#' : '.';
    bar[bar_width] = '\0';
    int percent = p->total > 0 ? (int)(100.0 * (double)p->done / (double)p->total) : 0;
    fprintf(stderr, "%-*.*s [%s] %3d%% %-*.*s\033[K\n", name_width, name_width, p->name, bar,
            percent, (int)tail_width, (int)tail_width, tail);
}

static void view_draw(fetch_view *v)
{
    int n = fetcher_snapshot(v->f, NULL, 0);
    fetch_progress *now = xmalloc((size_t)(n ? n : 1) * sizeof *now);
    fetcher_snapshot(v->f, now, n);   /* transfers are only ever added: n stays valid */
    if (n > v->n_seen) {
        v->seen = xrealloc(v->seen, (size_t)n * sizeof *v->seen);
        v->line_at = xrealloc(v->line_at, (size_t)n * sizeof *v->line_at);
        for (int i = v->n_seen; i < n; i++) {
            v->seen[i] = (fetch_progress){.state = FETCH_QUEUED};
            v->line_at[i] = pesc_now();
        }
        v->n_seen = n;
    }
    if (v->tty && v->drawn > 0)
        fprintf(stderr, "\r\033[%dA\033[J", v->drawn);
    v->drawn = 0;
    double t = pesc_now();
    for (int i = 0; i < n; i++) {
        const fetch_progress *p = &now[i], *old = &v->seen[i];
        /* even when it has ended since; by URL, as the failure would be: two files of one
         * name must not give two lines alike */
        if (!v->tty && p->retries > old->retries)
            fprintf(stderr, "pesc: %s: %s\n", p->url, p->last_retry);
        if (fetch_state_final(p->state)) {
            if (!fetch_state_final(old->state))
                print_ended(p);
        } else if (!v->tty && p->state == FETCH_RUNNING && t - v->line_at[i] >= 10) {
            print_plain_progress(p);
            v->line_at[i] = t;
        }
        v->seen[i] = *p;
    }
    if (v->tty) {
        int columns = terminal_columns(), shown = 0, hidden = 0;
        for (int i = 0; i < n; i++) {
            if (fetch_state_final(now[i].state) || now[i].state == FETCH_QUEUED)
                continue;
            if (shown < 8) {
                print_bar(&now[i], columns);
                shown++;
            } else {
                hidden++;
            }
        }
        if (hidden > 0) {
            fprintf(stderr, "  ... and %d more\033[K\n", hidden);
            shown++;
        }
        v->drawn = shown;
    }
    fflush(stderr);
    free(now);
}

static void *view_main(void *arg)
{
    fetch_view *v = arg;
    double period = v->tty ? 0.2 : 1.0;
    for (;;) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += (long)(period * 1e9);
        until.tv_sec += until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
        pthread_mutex_lock(&v->lock);
        if (!v->stop)
            pthread_cond_timedwait(&v->wake, &v->lock, &until);
        int stop = v->stop;
        pthread_mutex_unlock(&v->lock);
        view_draw(v);
        if (stop)
            return NULL;
    }
}

fetch_view *fetch_view_start(fetcher *f)
{
    fetch_view *v = xcalloc(1, sizeof *v);
    v->f = f;
    v->tty = isatty(STDERR_FILENO);
    pthread_mutex_init(&v->lock, NULL);
    pthread_cond_init(&v->wake, NULL);
    if (pthread_create(&v->thread, NULL, view_main, v) != 0) {
        pthread_mutex_destroy(&v->lock);
        pthread_cond_destroy(&v->wake);
        free(v);
        return NULL;   /* no progress display; the downloads still run */
    }
    return v;
}

void fetch_view_stop(fetch_view *v)
{
    if (!v)
        return;
    pthread_mutex_lock(&v->lock);
    v->stop = 1;
    pthread_cond_signal(&v->wake);
    pthread_mutex_unlock(&v->lock);
    pthread_join(v->thread, NULL);
    pthread_mutex_destroy(&v->lock);
    pthread_cond_destroy(&v->wake);
    free(v->seen);
    free(v->line_at);
    free(v);
}

/* ---- the one-call helpers, with progress ------------------------------------------------- */

typedef enum fetch_kind { FETCH_FILE, FETCH_MODEL, FETCH_TOKENIZER } fetch_kind;

static int with_view(const char *url, char **out, fetch_kind kind, pesc_error *err)
{
    if (!fetch_is_url(url)) {
        *out = xstrdup(url);
        return 0;
    }
    fetcher *f = fetcher_new(NULL, err);
    if (!f)
        return -1;
    fetch_view *v = fetch_view_start(f);
    int rc = kind == FETCH_MODEL       ? fetcher_get_model(f, url, out, err)
             : kind == FETCH_TOKENIZER ? fetcher_get_tokenizer(f, url, out, err)
                                       : fetcher_get(f, url, NULL, out, err);
    fetch_view_stop(v);
    fetcher_delete(f);
    return rc;
}

int fetch_view_url_to_cache(const char *url, char **path, pesc_error *err)
{
    return with_view(url, path, FETCH_FILE, err);
}

int fetch_view_resolve_model(const char *url, char **dir, pesc_error *err)
{
    if (pesc_names_demo(url)) {
        *dir = pesc_demo_model_dir();
        return 0;
    }
    return with_view(url, dir, FETCH_MODEL, err);
}

int fetch_view_resolve_tokenizer(const char *url, char **dir, pesc_error *err)
{
    if (pesc_names_demo(url)) {
        *dir = pesc_demo_model_dir();
        return 0;
    }
    return with_view(url, dir, FETCH_TOKENIZER, err);
}
