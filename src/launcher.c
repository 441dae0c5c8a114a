/* launcher — see launcher.h.
 *
 * `lock` guards the phase (state, message, session, stopping); the fetcher and the session
 * have their own locks, so a snapshot never waits for a download or a training step. */
#include "launcher.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fetch.h"
#include "session.h"

/* Ended downloads stay on screen this long after the last one ends, then the panel folds. */
#define DOWNLOADS_LINGER_S 10.0

struct launcher {
    train_config cfg;            /* URLs replaced by local paths once downloaded */
    char *model_dir;             /* the downloaded model (cfg.model points here) */
    char *tokenizer_path;        /* the downloaded --tokenizer (cfg.tokenizer points here) */
    fetcher *fetcher;            /* NULL without URLs */
    pthread_t thread;
    int thread_running;
    monitor face;

    pthread_mutex_t lock;
    monitor_state state;         /* before the session: STARTING, then STOPPED or FAILED */
    char message[512];           /* what is happening, or why it failed */
    session *session;            /* set once made; then the session speaks for itself */
    int started;                 /* the session's trainer runs */
    int stopping;                /* stop asked: make no session */
    double downloads_ended_at;   /* when every transfer had ended; < 0 while one runs */

    int finished;
    int status;                  /* after finish */
    char error[512];
};

static int has_urls(const train_config *c)
{
    if (fetch_is_url(c->model) || fetch_is_url(c->tokenizer))
        return 1;
    for (int i = 0; i < c->n_sources; i++)
        if (fetch_is_url(c->sources[i].path))
            return 1;
    return 0;
}

static void set_phase(launcher *l, monitor_state state, const char *message)
{
    pthread_mutex_lock(&l->lock);
    l->state = state;
    snprintf(l->message, sizeof l->message, "%.*s", (int)sizeof l->message - 1, message);
    pthread_mutex_unlock(&l->lock);
}

/* ---- the downloads, then the session -------------------------------------------------------- */

/* Queues every data URL and the tokenizer's (they run side by side, up to the fetcher's
 * jobs), fetches the model, then collects the files into cfg. */
static int download_all(launcher *l, pesc_error *err)
{
    train_config *c = &l->cfg;
    int ids[STATS_MAX_SOURCES];
    for (int i = 0; i < c->n_sources; i++) {
        ids[i] = -1;
        if (fetch_is_url(c->sources[i].path) &&
            (ids[i] = fetcher_add(l->fetcher, c->sources[i].path, NULL, NULL, 0, err)) < 0)
            return -1;
    }
    int tokenizer_id = -1;
    if (fetch_is_url(c->tokenizer) &&
        (tokenizer_id = fetcher_add(l->fetcher, c->tokenizer, NULL, NULL, 0, err)) < 0)
        return -1;
    if (fetch_is_url(c->model)) {
        if (fetcher_get_model(l->fetcher, c->model, &l->model_dir, err) != 0)
            return -1;
        c->model = l->model_dir;
    }
    if (tokenizer_id >= 0) {
        fetcher_wait(l->fetcher, tokenizer_id, -1);
        if (fetcher_result(l->fetcher, tokenizer_id, &l->tokenizer_path, err) != 0)
            return -1;
        c->tokenizer = l->tokenizer_path;
    }
    for (int i = 0; i < c->n_sources; i++) {
        if (ids[i] < 0)
            continue;
        char *path = NULL;
        fetcher_wait(l->fetcher, ids[i], -1);
        if (fetcher_result(l->fetcher, ids[i], &path, err) != 0)
            return -1;
        snprintf(c->sources[i].path, sizeof c->sources[i].path, "%s", path);
        free(path);
    }
    return 0;
}

/* Makes the session (nothing written yet); 0, or -1 with err. */
static int make_session(launcher *l, pesc_error *err)
{
    session *s = session_new(&l->cfg, err);
    if (!s)
        return -1;
    pthread_mutex_lock(&l->lock);
    l->session = s;
    pthread_mutex_unlock(&l->lock);
    return 0;
}

/* Starts the session made; 0, or -1 with err. A stop that came meanwhile wins. */
static int start_session(launcher *l, pesc_error *err)
{
    pthread_mutex_lock(&l->lock);
    int go = !l->stopping;
    int rc = go ? session_start(l->session, err) : 0;
    l->started = go && rc == 0;
    pthread_mutex_unlock(&l->lock);
    return rc;
}

static int is_stopping(launcher *l)
{
    pthread_mutex_lock(&l->lock);
    int stopping = l->stopping;
    pthread_mutex_unlock(&l->lock);
    return stopping;
}

static void *launcher_main(void *arg)
{
    launcher *l = arg;
    pesc_error err = {{0}};
    int rc = download_all(l, &err);
    if (rc == 0 && !is_stopping(l)) {
        set_phase(l, MONITOR_STARTING, "loading the model and the data");
        rc = make_session(l, &err) != 0 ? -1 : start_session(l, &err);
    }
    if (is_stopping(l) && !l->started)
        set_phase(l, MONITOR_STOPPED, "stopped before training began (downloads resume next time)");
    else if (rc != 0)
        set_phase(l, MONITOR_FAILED, err.msg);
    return NULL;
}

/* ---- the monitor face ----------------------------------------------------------------------- */

/* Running transfers first, then queued, then ended ones (newest first), up to the view's room;
 * none once everything has ended a while ago. */
static void fill_downloads(launcher *l, monitor_view *v)
{
    v->n_downloads = 0;
    if (!l->fetcher)
        return;
    int n = fetcher_snapshot(l->fetcher, NULL, 0);
    fetch_progress *all = xmalloc((size_t)(n ? n : 1) * sizeof *all);
    n = fetcher_snapshot(l->fetcher, all, n);   /* only ever grows: never more than asked */
    int ended = 0;
    for (int i = 0; i < n; i++)
        ended += fetch_state_final(all[i].state);
    double now = pesc_now();
    pthread_mutex_lock(&l->lock);
    if (ended < n)
        l->downloads_ended_at = -1;
    else if (l->downloads_ended_at < 0)
        l->downloads_ended_at = now;
    int linger = l->downloads_ended_at < 0 || now - l->downloads_ended_at < DOWNLOADS_LINGER_S;
    pthread_mutex_unlock(&l->lock);
    for (int pass = 0; pass < 3 && linger; pass++)
        for (int k = 0; k < n && v->n_downloads < MONITOR_DOWNLOADS; k++) {
            int i = pass == 2 ? n - 1 - k : k;
            int final = fetch_state_final(all[i].state), queued = all[i].state == FETCH_QUEUED;
            if ((pass == 0 && !final && !queued) || (pass == 1 && queued) || (pass == 2 && final))
                v->downloads[v->n_downloads++] = all[i];
        }
    free(all);
}

static int launcher_snapshot(void *ctx, monitor_view *v)
{
    launcher *l = ctx;
    pthread_mutex_lock(&l->lock);
    session *s = l->session;
    int live = s && l->started;
    if (!live) {
        v->state = l->state;
        v->since_save_s = -1;
        v->can_save = l->cfg.save_dir != NULL;
        snprintf(v->message, sizeof v->message, "%s", l->message);
    }
    pthread_mutex_unlock(&l->lock);
    int rc = live ? monitor_snapshot(session_monitor(s), v) : 0;
    fill_downloads(l, v);
    return rc;
}

static void launcher_command(void *ctx, const char *line, char *reply, size_t reply_len)
{
    launcher *l = ctx;
    pthread_mutex_lock(&l->lock);
    session *s = l->started ? l->session : NULL;
    int stop = !s && strncmp(line, "stop", 4) == 0 && (line[4] == '\0' || line[4] == ' ');
    if (stop)
        l->stopping = 1;
    pthread_mutex_unlock(&l->lock);
    if (s) {
        session_command(s, line, reply, reply_len);
    } else if (stop) {
        if (l->fetcher)
            fetcher_cancel(l->fetcher, FETCH_ALL);
        snprintf(reply, reply_len, "ok: stopping");
    } else {
        snprintf(reply, reply_len, "error: the run is still starting (%s)", l->message);
    }
}

static void launcher_close(void *ctx) { (void)ctx; }

static const monitor_ops launcher_monitor_ops = {
    .snapshot = launcher_snapshot, .command = launcher_command, .close = launcher_close};

/* ---- lifetime ----------------------------------------------------------------------------- */

launcher *launcher_new(const train_config *c, pesc_error *err)
{
    launcher *l = xcalloc(1, sizeof *l);
    l->cfg = *c;
    l->face = (monitor){&launcher_monitor_ops, l};
    l->state = MONITOR_STARTING;
    l->downloads_ended_at = -1;
    pthread_mutex_init(&l->lock, NULL);
    int rc = 0;
    if (!has_urls(c)) {
        rc = make_session(l, err);
    } else {
        l->cfg.command = NULL;   /* made behind the screen, which stderr must not draw on */
        snprintf(l->message, sizeof l->message, "downloading");
        if (!(l->fetcher = fetcher_new(NULL, err)))
            rc = -1;
    }
    if (rc != 0) {
        launcher_delete(l);
        return NULL;
    }
    return l;
}

int launcher_start(launcher *l, pesc_error *err)
{
    if (!l->fetcher)
        return start_session(l, err);
    int rc = pthread_create(&l->thread, NULL, launcher_main, l);
    if (rc != 0)
        return pesc_fail(err, "cannot start the download thread: %s", strerror(rc));
    l->thread_running = 1;
    return 0;
}

monitor *launcher_monitor(launcher *l) { return &l->face; }

int launcher_finish(launcher *l)
{
    if (l->finished)
        return l->status;
    l->finished = 1;
    char reply[128];
    launcher_command(l, "stop", reply, sizeof reply);
    if (l->thread_running) {
        pthread_join(l->thread, NULL);
        l->thread_running = 0;
    }
    if (l->started) {
        l->status = session_wait(l->session);
        if (l->status != 0)
            snprintf(l->error, sizeof l->error, "%s", session_error(l->session));
    } else if (l->state == MONITOR_FAILED) {
        l->status = 1;
        snprintf(l->error, sizeof l->error, "%s", l->message);
    }
    return l->status;
}

const char *launcher_error(const launcher *l) { return l->error; }

void launcher_delete(launcher *l)
{
    if (!l)
        return;
    launcher_finish(l);
    session_delete(l->session);
    fetcher_delete(l->fetcher);
    free(l->model_dir);
    free(l->tokenizer_path);
    pthread_mutex_destroy(&l->lock);
    free(l);
}
