/* logview — see logview.h. */
#include "logview.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

/* Seconds of log read per snapshot: a long log loads over several frames, keys taken between
 * them. The followed log's is most of a frame at 10 Hz (a 40 MB log is read in about a second
 * and a half, where it was replayed over four); a compared log's is less, as there may be four,
 * and so is the first look at a log, which the screen waits for. */
#define READ_BUDGET_S 0.08
#define SHORT_READ_BUDGET_S 0.03
#define REPLY_TIMEOUT_MS 2000
#define PROBE_INTERVAL_S 1.0     /* how often a connection to the socket is tried while the
                                    view has none */

typedef struct logview logview;

struct logview {
    char *path, *socket_path;
    int fd, sock;
    off_t offset;
    ino_t inode;
    char *pending;               /* a line read in part */
    size_t pending_len, pending_cap;
    int overlong;   /* the pending line passed LINE_MAX_BYTES: skipped to its newline */
    double last_growth;          /* when a record last arrived (monotonic): lines that are
                                    none (junk appended to a dead run's log) leave it quiet */
    double logged_elapsed;       /* the run's clock (elapsed_s) at its latest record */
    int took_record;             /* parse_line read a record since read_more looked */
    double stall_s;              /* a running log quiet this long says so */
    int gone;                    /* the run's control socket refuses connections: nothing
                                    listens, the run is dead (killed) though its log never
                                    said it ended */
    double next_probe;           /* when a connection is tried next, while there is none */
    long bad_lines;
    double reading;              /* the share of the log read, while a snapshot's budget ran
                                    out before its end; 0 once caught up */
    /* what has been read */
    monitor_state state;
    char message[sizeof ((stats_event *)0)->text];
    char last_error[sizeof ((stats_event *)0)->text];   /* the latest error event's text
                                                           before the closing one */
    int failed_for_now;          /* FAILED by an error event that is not the closing one */
    int have_run;
    stats_run run;
    stats_record *last;          /* the latest step */
    double save_elapsed;         /* < 0: never */
    monitor_point points[MONITOR_HISTORY];
    int n_points, stride, skipped;
    float *loads;                /* ring of (MONITOR_LOAD_HISTORY, L, E) */
    long load_steps[MONITOR_LOAD_HISTORY];
    int load_head, n_loads;
    size_t load_le;
    stats_event events[MONITOR_EVENTS];   /* ring */
    int event_head, n_events;
    char prompt[512];
    char generated[MONITOR_GENERATION];
    /* the runs compared with this one: read as it is, their losses alone shown */
    logview *compared[MONITOR_COMPARED];
    int n_compared;
};

/* ---- reading ------------------------------------------------------------------------------ */

static void forget_history(logview *lv)
{
    lv->state = MONITOR_STARTING;
    lv->message[0] = '\0';
    lv->last_error[0] = '\0';
    lv->failed_for_now = 0;
    lv->have_run = 0;
    memset(&lv->run, 0, sizeof lv->run);
    stats_record_delete(lv->last);
    lv->last = NULL;
    lv->save_elapsed = -1;
    lv->logged_elapsed = 0;
    lv->n_points = lv->skipped = 0;
    lv->stride = 1;
    lv->load_head = lv->n_loads = 0;
    lv->event_head = lv->n_events = 0;
    lv->prompt[0] = lv->generated[0] = '\0';
    lv->pending_len = 0;
    lv->overlong = 0;
    lv->offset = 0;
    lv->bad_lines = 0;
}

/* Keeps MONITOR_HISTORY evenly spaced points: when full, every other one goes and from then
 * on only every stride-th step is kept. An evaluation at a step in between goes on the last
 * point kept, as monitor_points_thin moves one: kept as points of their own, evaluations at
 * every step (--eval-every 1) would fill the history at once, thin it unevenly and double the
 * stride past INT_MAX. */
static void add_point(logview *lv, const stats_record *r)
{
    if (++lv->skipped < lv->stride && lv->n_points > 0) {
        if (r->eval_tokens > 0)
            lv->points[lv->n_points - 1].eval_loss = (float)r->eval_loss;
        if (r->eval_questions > 0)
            lv->points[lv->n_points - 1].eval_accuracy = (float)r->eval_accuracy;
        if (r->eval_answers > 0)
            lv->points[lv->n_points - 1].eval_answers = (float)r->eval_answer_accuracy;
        return;
    }
    lv->skipped = 0;
    if (lv->n_points == MONITOR_HISTORY) {
        lv->n_points = monitor_points_thin(lv->points, lv->n_points);
        lv->stride *= 2;
    }
    lv->points[lv->n_points++] = monitor_point_of(r);
}

static void add_loads(logview *lv, const stats_record *r)
{
    size_t le = (size_t)r->shape.n_layers * (size_t)r->shape.n_experts;
    if (!r->load || le == 0)
        return;
    if (le != lv->load_le) {
        free(lv->loads);
        lv->loads = xmalloc((size_t)MONITOR_LOAD_HISTORY * le * sizeof(float));
        lv->load_le = le;
        lv->load_head = lv->n_loads = 0;
    }
    memcpy(lv->loads + (size_t)lv->load_head * le, r->load, le * sizeof(float));
    lv->load_steps[lv->load_head] = r->step;
    lv->load_head = (lv->load_head + 1) % MONITOR_LOAD_HISTORY;
    if (lv->n_loads < MONITOR_LOAD_HISTORY)
        lv->n_loads++;
}

static int run_over(monitor_state s)
{
    return s == MONITOR_FINISHED || s == MONITOR_STOPPED || s == MONITOR_FAILED;
}

/* Text from the log reaches the screen and, when the run failed, stderr: its control
 * characters are shown (pesc_show_controls), so that a log cannot move the cursor, recolour
 * or clear the terminal. A newline is kept when keep_newlines (the screen draws it: a line
 * break in an answer, a mark in a one-line event) and shown as \x0a otherwise. In place,
 * within cap bytes. */
static void show_controls(char *text, size_t cap, int keep_newlines)
{
    char shown[1024];   /* the largest field it is given: an event's text, the run's message */
    size_t n = 0;
    assert(cap <= sizeof shown);
    for (char *line = text;;) {
        char *nl = keep_newlines ? strchr(line, '\n') : NULL;
        if (nl)
            *nl = '\0';
        n += pesc_show_controls(shown + n, cap - n, line);
        if (!nl || n + 2 > cap)
            break;
        shown[n++] = '\n';
        shown[n] = '\0';
        line = nl + 1;
    }
    memcpy(text, shown, n + 1);
}

static void add_event(logview *lv, const stats_event *logged)
{
    stats_event shown = *logged, *e = &shown;
    shown.prompt = shown.answer = NULL;   /* borrowed for this call */
    show_controls(e->kind, sizeof e->kind, 0);
    show_controls(e->text, sizeof e->text, 1);
    lv->events[lv->event_head] = *e;
    lv->event_head = (lv->event_head + 1) % MONITOR_EVENTS;
    if (lv->n_events < MONITOR_EVENTS)
        lv->n_events++;
    const char *k = e->kind;
    double lr;
    int by_hand;
    if (lv->last && stats_lr_event(e, &lr, &by_hand) == 0) {   /* shown before the next step */
        lv->last->lr = lr;
        lv->last->lr_overridden |= by_hand;
    }
    double coef;   /* shown before the next step too */
    if (lv->last && stats_aux_event(e, &coef) == 0)
        lv->last->aux_coef = coef;
    /* one made while paused: its step's point shows it, as the live workbench's does (one
     * at a step's end comes with the step's record, which fills it as well) */
    double loss, accuracy, answers;
    if (lv->n_points > 0 && stats_eval_event(e, &loss, &accuracy, &answers) == 0) {
        monitor_point *p = &lv->points[lv->n_points - 1];
        if (p->step == e->step && isnan(p->eval_loss) && !isnan(loss))
            p->eval_loss = (float)loss;
        if (p->step == e->step && isnan(p->eval_accuracy) && !isnan(accuracy))
            p->eval_accuracy = (float)accuracy;
        if (p->step == e->step && isnan(p->eval_answers) && !isnan(answers))
            p->eval_answers = (float)answers;
    }
    if (strcmp(k, "begin") == 0)   /* (again, resumed): an earlier failure's reason is old */
        lv->last_error[0] = '\0';
    if (strcmp(k, "pause") == 0)
        lv->state = MONITOR_PAUSED;
    else if (strcmp(k, "resume") == 0)
        lv->state = MONITOR_RUNNING;
    else if (strcmp(k, "save") == 0)
        lv->save_elapsed = e->elapsed_s;
    else if (strcmp(k, "stop") == 0)
        lv->state = MONITOR_STOPPED;
    else if (strcmp(k, "finish") == 0 || strcmp(k, "done") == 0 || strcmp(k, "end") == 0)
        lv->state = MONITOR_FINISHED;
    else if (strcmp(k, "error") == 0 || strcmp(k, "fail") == 0) {
        /* the closing event says only "at step N", after the reason; an error the run goes
         * on after (a save, an evaluation) is undone by the next step (parse_line) */
        int closing = stats_event_end(k, e->text) == STATS_END_CLOSING;
        lv->state = MONITOR_FAILED;
        lv->failed_for_now = !closing;
        if (!closing)
            pesc_show_controls(lv->last_error, sizeof lv->last_error, e->text);   /* one line */
        pesc_show_controls(lv->message, sizeof lv->message,
                           closing && lv->last_error[0] ? lv->last_error : e->text);
    } else if (strcmp(k, "generate") == 0) {   /* the answer, or (older logs) what it was */
        snprintf(lv->prompt, sizeof lv->prompt, "%s", logged->prompt ? logged->prompt : "");
        snprintf(lv->generated, sizeof lv->generated, "%s",
                 logged->answer ? logged->answer : e->text);
    }
}

/* A resumed run's start line: the run goes on from its checkpoint's step, running again the
 * steps a crashed run logged past it; those records are dropped from the history, so that no
 * step is drawn twice (a 40-step run shows 40, not 40 and the repeats). Its events stay: they
 * happened. */
static void rewind_to(logview *lv, long step)
{
    while (lv->n_points > 0 && lv->points[lv->n_points - 1].step > step)
        lv->n_points--;
    while (lv->n_loads > 0) {
        int newest = (lv->load_head - 1 + MONITOR_LOAD_HISTORY) % MONITOR_LOAD_HISTORY;
        if (lv->load_steps[newest] <= step)
            break;
        lv->load_head = newest;
        lv->n_loads--;
    }
}

static void parse_line(logview *lv, const char *line)
{
    line = pesc_skip_bom(line, NULL);   /* a log saved by an editor that adds one */
    if (line[0] == '\0')
        return;
    stats_event e;
    stats_run run;
    pesc_error err;
    int kind = stats_parse_line(line, &lv->last, &e, &run, &err);
    lv->took_record |= kind >= 1 && kind <= 3;
    if (kind == 1 || kind == 2)
        lv->logged_elapsed = kind == 1 ? lv->last->elapsed_s : e.elapsed_s;
    if (kind == 3) {
        if (run.resumed_step > 0)
            rewind_to(lv, run.resumed_step);
        lv->run = run;
        lv->have_run = 1;
        lv->state = MONITOR_RUNNING;
    } else if (kind == 2) {
        json_t *o = strcmp(e.kind, "generate") == 0 ? json_loads(line, 0, NULL) : NULL;
        e.prompt = json_string_value(json_object_get(o, "prompt"));
        e.answer = json_string_value(json_object_get(o, "answer"));
        add_event(lv, &e);
        json_decref(o);
    } else if (kind == 1) {
        stats_record_derive(lv->last);   /* imbalance and cv, also for logs that leave them out */
        add_point(lv, lv->last);
        add_loads(lv, lv->last);
        if (lv->state == MONITOR_FAILED && lv->failed_for_now)   /* it went on after it */
            lv->state = MONITOR_RUNNING;
        lv->failed_for_now = 0;
        if (!run_over(lv->state) && lv->state != MONITOR_PAUSED)
            lv->state = MONITOR_RUNNING;
    } else {
        lv->bad_lines++;
    }
}

#define LINE_MAX_BYTES (16u << 20)

static void take_lines(logview *lv, const char *buf, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (buf[i] != '\n' && lv->overlong)
            continue;
        if (buf[i] != '\n' && lv->pending_len >= LINE_MAX_BYTES) {
            lv->overlong = 1;   /* not a log line (a pesc line is kilobytes): no memory for it */
            continue;
        }
        if (buf[i] != '\n') {
            if (lv->pending_len + 2 > lv->pending_cap) {
                lv->pending_cap = lv->pending_cap ? 2 * lv->pending_cap : 4096;
                lv->pending = xrealloc(lv->pending, lv->pending_cap);
            }
            lv->pending[lv->pending_len++] = buf[i];
            continue;
        }
        if (lv->overlong) {
            lv->bad_lines++;
            lv->overlong = 0;
            lv->pending_len = 0;
            continue;
        }
        if (!lv->pending)
            continue;
        lv->pending[lv->pending_len] = '\0';
        parse_line(lv, lv->pending);
        lv->pending_len = 0;
    }
}

/* Opens the log again when it was replaced, and starts over when it was truncated. */
static void check_file(logview *lv)
{
    struct stat st;
    if (stat(lv->path, &st) == 0 && S_ISREG(st.st_mode) &&
        (lv->fd < 0 || st.st_ino != lv->inode)) {   /* a FIFO put there would block open */
        int fd = open(lv->path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            if (lv->fd >= 0)
                close(lv->fd);
            lv->fd = fd;
            lv->inode = st.st_ino;
            forget_history(lv);
            return;
        }
    }
    if (lv->fd >= 0 && fstat(lv->fd, &st) == 0 && st.st_size < lv->offset) {
        forget_history(lv);
        lseek(lv->fd, 0, SEEK_SET);
    }
}

/* When the file was last written, on pesc_now's clock: a log read whole at the start that a
 * killed run left long ago is quiet since then, not since the view began. To the nanosecond
 * the file system keeps: the clock since a save counts from it without jumps. */
static double written_at(int fd)
{
    struct stat st;
    struct timespec now;
    double age = 0.0;
    if (fstat(fd, &st) == 0 && clock_gettime(CLOCK_REALTIME, &now) == 0)
        age = difftime(now.tv_sec, st.st_mtim.tv_sec) +
              (double)(now.tv_nsec - st.st_mtim.tv_nsec) * 1e-9;
    return pesc_now() - (age > 0 ? age : 0);
}

/* Reads what the log has gained, for at most budget_s; sets reading while there is more. */
static void read_more(logview *lv, double budget_s)
{
    check_file(lv);
    lv->reading = 0;
    if (lv->fd < 0)
        return;
    char buf[65536];
    double start = pesc_now();
    for (;;) {
        ssize_t n = pread(lv->fd, buf, sizeof buf, lv->offset);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        lv->offset += n;
        lv->took_record = 0;
        take_lines(lv, buf, (size_t)n);
        if (lv->took_record)
            lv->last_growth = written_at(lv->fd);
        if (pesc_now() - start > budget_s) {
            struct stat st;
            if (fstat(lv->fd, &st) == 0 && st.st_size > lv->offset)
                lv->reading = (double)lv->offset / (double)st.st_size;
            break;
        }
    }
}

/* ---- the monitor -------------------------------------------------------------------------- */

/* A compared run's losses, under its log's file name. Its log is read here as the followed
 * one's is; a compared log that stops growing or has malformed lines is drawn as it stands. */
static void copy_compared(logview *lv, monitor_view *v)
{
    v->n_compared = lv->n_compared;
    for (int i = 0; i < lv->n_compared; i++) {
        logview *c = lv->compared[i];
        monitor_series *out = &v->compared[i];
        read_more(c, SHORT_READ_BUDGET_S);
        const char *slash = strrchr(c->path, '/');
        pesc_show_controls(out->name, sizeof out->name, slash && slash[1] ? slash + 1 : c->path);
        out->n_points = c->n_points;
        memcpy(out->points, c->points, (size_t)c->n_points * sizeof *out->points);
    }
}

static void copy_history(const logview *lv, monitor_view *v)
{
    v->n_points = lv->n_points;
    memcpy(v->points, lv->points, (size_t)lv->n_points * sizeof *v->points);
    size_t le = lv->load_le;
    v->n_loads = 0;
    if (lv->n_loads > 0) {
        free(v->loads);
        v->loads = xmalloc((size_t)lv->n_loads * le * sizeof(float));
        for (int i = 0; i < lv->n_loads; i++) {
            int slot = (lv->load_head - lv->n_loads + i + MONITOR_LOAD_HISTORY) % MONITOR_LOAD_HISTORY;
            memcpy(v->loads + (size_t)i * le, lv->loads + (size_t)slot * le, le * sizeof(float));
            v->load_steps[i] = lv->load_steps[slot];
        }
        v->n_loads = lv->n_loads;
    }
    v->n_events = lv->n_events;
    for (int i = 0; i < lv->n_events; i++)
        v->events[i] = lv->events[(lv->event_head - lv->n_events + i + MONITOR_EVENTS) % MONITOR_EVENTS];
}

/* Whether the run died without its log saying it ended (its socket refused a connection). */
static int run_gone(const logview *lv)
{
    return lv->gone && !run_over(lv->state);
}

/* Seconds since the last save, on the wall clock as a live run's workbench counts them: the
 * run's clock from the save to its latest record, then the time since that record was
 * written. It goes on counting while no line comes (paused, between slow steps, the run
 * gone or over): the checkpoint only gets older. -1: never saved. */
static double since_save(const logview *lv)
{
    if (lv->save_elapsed < 0)
        return -1;
    return fmax(lv->logged_elapsed - lv->save_elapsed, 0.0) + (pesc_now() - lv->last_growth);
}

/* Whether a running log has gone quiet: no record for longer than the stall time. */
static int log_quiet(const logview *lv)
{
    return lv->state == MONITOR_RUNNING && pesc_now() - lv->last_growth > lv->stall_s;
}

/* The status line's standing note: a run gone or a quiet log first (the run may be stuck),
 * then the malformed lines skipped, so that a narrow screen cuts the lesser of the two.
 * Returns whether the log is to be shown as quiet. */
static int write_note(const logview *lv, char *note, size_t cap)
{
    size_t used = 0;
    int quiet = !run_gone(lv) && log_quiet(lv);
    note[0] = '\0';
    if (run_gone(lv))
        used = (size_t)snprintf(note, cap, "the run is gone: its socket is closed");
    else if (quiet)
        used = (size_t)snprintf(note, cap, "no new lines for %.0f s",
                                pesc_now() - lv->last_growth);
    if (lv->bad_lines && used < cap)
        snprintf(note + used, cap - used, "%s%ld malformed line%s skipped", used ? "; " : "",
                 lv->bad_lines, lv->bad_lines == 1 ? "" : "s");
    return quiet;
}

static void probe_control(logview *lv);

static int logview_snapshot(void *ctx, monitor_view *v)
{
    logview *lv = ctx;
    read_more(lv, READ_BUDGET_S);
    probe_control(lv);
    /* a run gone is shown as one stopped: the leave dialog no longer offers to resume it */
    v->state = run_gone(lv) ? MONITOR_STOPPED : lv->state;
    v->gone = run_gone(lv);
    snprintf(v->message, sizeof v->message, "%s", lv->message);
    v->quiet = write_note(lv, v->note, sizeof v->note);
    v->reading = lv->reading;
    v->run = lv->run;
    if (lv->last) {
        if (!lv->have_run) {
            v->run.shape = lv->last->shape;
            snprintf(v->run.model, sizeof v->run.model, "%s", lv->path);
        }
        v->last = stats_record_fit(v->last, lv->last->shape);
        stats_record_copy(v->last, lv->last);
        v->since_save_s = since_save(lv);
    } else {
        stats_record_delete(v->last);
        v->last = NULL;
        v->since_save_s = -1;
    }
    copy_history(lv, v);
    copy_compared(lv, v);
    v->generating = 0;
    snprintf(v->prompt, sizeof v->prompt, "%s", lv->prompt);
    snprintf(v->generated, sizeof v->generated, "%s", lv->generated);
    v->n_generated_tokens = 0;
    memset(v->token_expert, 255, sizeof v->token_expert);
    v->generation_layer = 0;
    return 0;
}

static int connect_control(logview *lv, pesc_error *err)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(lv->socket_path) >= sizeof addr.sun_path)
        return pesc_fail(err, "control socket %s: path too long", lv->socket_path);
    strcpy(addr.sun_path, lv->socket_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return pesc_fail(err, "control socket %s: %s", lv->socket_path, strerror(errno));
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        int e = errno;
        close(fd);
        /* refused, or the socket removed: no run listens there any more (one that ended as
         * it should says so in its log first, and that stands) */
        lv->gone = e == ECONNREFUSED || e == ENOENT;
        struct stat st;
        int there = stat(lv->socket_path, &st) == 0, is_socket = there && S_ISSOCK(st.st_mode);
        if (e == ENOENT || (e == ECONNREFUSED && is_socket))
            return pesc_fail(err, "control socket %s: no run is listening there (%s); give the "
                             "path a running pesc train --control PATH made",
                             lv->socket_path, e == ENOENT ? "no such file" : "it ended");
        if (there && !is_socket)
            return pesc_fail(err, "control socket %s: not a socket; give the path a running "
                             "pesc train --control PATH made", lv->socket_path);
        return pesc_fail(err, "control socket %s: %s", lv->socket_path, strerror(e));
    }
    lv->sock = fd;
    lv->gone = 0;
    return 0;
}

static int send_all(int fd, const char *line)
{
    size_t n = strlen(line);
    char *out = xmalloc(n + 2);
    memcpy(out, line, n);
    out[n++] = '\n';
    size_t done = 0;
    while (done < n) {
        ssize_t w = send(fd, out + done, n - done, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        done += (size_t)w;
    }
    free(out);
    return done == n ? 0 : -1;
}

/* One reply line, waiting at most REPLY_TIMEOUT_MS. */
static int read_reply(logview *lv, char *reply, size_t len, pesc_error *err)
{
    size_t got = 0;
    double deadline = pesc_now() + REPLY_TIMEOUT_MS / 1000.0;
    while (got + 1 < len) {
        int left = (int)((deadline - pesc_now()) * 1000);
        struct pollfd p = {.fd = lv->sock, .events = POLLIN};
        if (left <= 0 || poll(&p, 1, left) <= 0)
            return pesc_fail(err, "control socket %s: no reply within %d s", lv->socket_path,
                             REPLY_TIMEOUT_MS / 1000);
        ssize_t r = recv(lv->sock, reply + got, 1, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return pesc_fail(err, "control socket %s: the run closed it", lv->socket_path);
        if (reply[got] == '\n')
            break;
        got++;
    }
    reply[got] = '\0';
    return 0;
}

static void disconnect_control(logview *lv)
{
    if (lv->sock >= 0)
        close(lv->sock);
    lv->sock = -1;
}

/* Whether the run is still there, looked at on every snapshot whatever its state (a killed
 * run's log just stops, as a slow step's does): the run's end of the connection the view holds
 * closes when the run dies, and poll reports that hang-up unasked, at no cost; a connection
 * made again is then refused (which sets gone). Without one (a command's failed, or the run
 * is gone) one is tried once a PROBE_INTERVAL_S: a run started again on the socket takes the
 * view back. A run that ended as it should wrote so before it closed its socket: the log is
 * read again before the run is called gone. */
static void probe_control(logview *lv)
{
    if (!lv->socket_path || run_over(lv->state))
        return;
    struct pollfd p = {.fd = lv->sock, .events = 0};
    if (lv->sock >= 0 && poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLERR)))
        disconnect_control(lv);
    double now = pesc_now();
    if (lv->sock >= 0 || now < lv->next_probe)
        return;
    lv->next_probe = now + PROBE_INTERVAL_S;
    pesc_error ignored;   /* a refusal is the note's, a failure of another kind no one's */
    if (connect_control(lv, &ignored) != 0 && lv->gone)
        read_more(lv, READ_BUDGET_S);
}

/* One line out, one line back. A connection the run has hung up on (it had no room for
 * another client, or it was restarted on the same socket) is given up and made afresh, once;
 * the line never reached the run, so sending it again repeats nothing. One the run has
 * already spoken on, or hung up on, before this line (probe_control's, refused while the run
 * was full: its refusal waits unread) is given up before it is used: that word is not this
 * line's reply, and the run may have room now. */
static int exchange(logview *lv, const char *line, char *reply, size_t len, pesc_error *err)
{
    struct pollfd p = {.fd = lv->sock, .events = POLLIN};
    if (lv->sock >= 0 && poll(&p, 1, 0) == 1)   /* the protocol speaks only when asked */
        disconnect_control(lv);
    for (int attempt = 0;; attempt++) {
        if (lv->sock < 0 && connect_control(lv, err) != 0)
            return -1;
        if (send_all(lv->sock, line) == 0)
            return read_reply(lv, reply, len, err);
        int send_errno = errno;
        /* the run's word on why it hung up (too many clients) may be waiting */
        int said = read_reply(lv, reply, len, err) == 0;
        disconnect_control(lv);
        if (said)
            return 0;
        if (attempt == 1)
            return pesc_fail(err, "control socket %s: %s", lv->socket_path, strerror(send_errno));
    }
}

static void logview_command(void *ctx, const char *line, char *reply, size_t len)
{
    logview *lv = ctx;
    if (!lv->socket_path) {
        char control[256];   /* the run's socket, as its log names it */
        pesc_show_controls(control, sizeof control, lv->run.control[0] ? lv->run.control
                                                                     : "SOCKET");
        snprintf(reply, len, "error: a read-only view: --attach %s steers the run",
                 control);
        return;
    }
    pesc_error err;
    if (exchange(lv, line, reply, len, &err) != 0) {
        disconnect_control(lv);
        snprintf(reply, len, "error: %s", err.msg);
    }
}

static void logview_close(void *ctx)
{
    logview *lv = ctx;
    if (!lv)
        return;
    for (int i = 0; i < lv->n_compared; i++)
        logview_close(lv->compared[i]);
    if (lv->fd >= 0)
        close(lv->fd);
    if (lv->sock >= 0)
        close(lv->sock);
    stats_record_delete(lv->last);
    free(lv->loads);
    free(lv->pending);
    free(lv->path);
    free(lv->socket_path);
    free(lv);
}

static const monitor_ops logview_ops = {
    .snapshot = logview_snapshot,
    .command = logview_command,
    .close = logview_close,
};

/* A log opened for reading: it must be a regular file (a FIFO or device can be neither
 * followed nor read again). NULL after an error naming it. */
static logview *open_log(const char *log_path, double stall_s, pesc_error *err)
{
    assert(stall_s > 0);
    logview *lv = xcalloc(1, sizeof *lv);
    lv->fd = lv->sock = -1;
    lv->path = xstrdup(log_path);
    lv->stall_s = stall_s;
    forget_history(lv);
    struct stat st;
    /* O_NONBLOCK: a FIFO's open would wait for a writer (harmless for a regular file) */
    lv->fd = open(log_path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (lv->fd < 0 || fstat(lv->fd, &st) != 0) {
        pesc_fail(err, "%s: %s", log_path, strerror(errno));
        logview_close(lv);
        return NULL;
    }
    if (S_ISDIR(st.st_mode)) {
        pesc_fail(err, "%s: a directory, not a run log", log_path);
        logview_close(lv);
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        pesc_fail(err, "%s: not a regular file; name the --log file of pesc train --headless",
                  log_path);
        logview_close(lv);
        return NULL;
    }
    lv->inode = st.st_ino;
    lv->last_growth = written_at(lv->fd);
    return lv;
}

/* What a log is shows at once: its first lines are no run's when nothing in them was a
 * record (an empty log is a run yet to write its first line). 0, or -1 (lv closed). */
static int first_lines(logview *lv, const char *log_path, pesc_error *err)
{
    read_more(lv, SHORT_READ_BUDGET_S);
    if (lv->bad_lines > 0 && !lv->have_run && lv->n_points == 0 && lv->n_events == 0) {
        pesc_fail(err, "%s: not a run log (no step record or event in its first lines); name "
                       "the --log file of pesc train --headless", log_path);
        logview_close(lv);
        return -1;
    }
    return 0;
}

int logview_open(monitor *m, const char *log_path, const char *control_socket, double stall_s,
                 pesc_error *err)
{
    logview *lv = open_log(log_path, stall_s, err);
    if (!lv || first_lines(lv, log_path, err) != 0)
        return -1;
    if (control_socket) {
        lv->socket_path = xstrdup(control_socket);
        if (connect_control(lv, err) != 0) {
            logview_close(lv);
            return -1;
        }
    }
    m->ops = &logview_ops;
    m->ctx = lv;
    return 0;
}

int logview_compare(monitor *m, const char *log_path, pesc_error *err)
{
    assert(m->ops == &logview_ops);
    logview *lv = m->ctx;
    if (lv->n_compared == MONITOR_COMPARED)
        return pesc_fail(err, "%s: at most %d runs to compare", log_path, MONITOR_COMPARED);
    logview *c = open_log(log_path, lv->stall_s, err);
    if (!c || first_lines(c, log_path, err) != 0)
        return -1;
    lv->compared[lv->n_compared++] = c;
    return 0;
}
