/* ui — the workbench's main loop: terminal setup and restore, signals, the layout's windows,
 * the status line, the key bar, the help and quit dialogs, and key dispatch (see ui.h). */
#include "ui.h"

#include <langinfo.h>
#include <locale.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <term.h>
#include <termios.h>
#include <unistd.h>

#include "ui_internal.h"
#include "util.h"

/* ---- process-wide state -------------------------------------------------------------------
 * Signal handlers take no argument, so what they touch lives here and nowhere else: the flag
 * they set, the terminal settings a crash handler puts back (written once before curses
 * starts, read-only after) and the suspend handler curses installed. Everything else is in
 * ui_context. */
static struct {
    volatile sig_atomic_t interrupts;    /* SIGINT, SIGTERM, SIGHUP seen */
    volatile sig_atomic_t curses_on;
    int have_termios;
    struct termios termios;
    struct sigaction curses_suspend;     /* curses' SIGTSTP handler, which on_suspend wraps */
} ui_process;

/* Bracketed paste (xterm's mode 2004): the terminal wraps pasted text in ESC[200~ ... ESC[201~
 * so that the prompt can take it as text (see paste_key). Written with write() alone, so the
 * signal handlers can turn it off too; a terminal without the mode ignores both. */
static const char paste_mode_on[] = "\033[?2004h", paste_mode_off[] = "\033[?2004l";

static void set_paste_mode(int on)
{
    const char *s = on ? paste_mode_on : paste_mode_off;
    ssize_t ignored = write(STDOUT_FILENO, s, strlen(s));
    (void)ignored;
}

static void on_interrupt(int sig)
{
    (void)sig;
    ui_process.interrupts++;
}

/* A crash: put the terminal back with async-signal-safe calls only, then die as before. */
static void on_crash(int sig)
{
    if (ui_process.curses_on) {
        static const char reset[] = "\033[0m\033[?25h\033[?2004l\033[?1049l\r\n";
        if (ui_process.have_termios)
            tcsetattr(STDIN_FILENO, TCSAFLUSH, &ui_process.termios);
        ssize_t ignored = write(STDOUT_FILENO, reset, sizeof reset - 1);
        (void)ignored;
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Out of memory and exit() from anywhere: leave curses first. */
static void restore_terminal_hook(void)
{
    if (ui_process.curses_on && !isendwin()) {
        set_paste_mode(0);
        endwin();
    }
    ui_process.curses_on = 0;
}

/* Ctrl-Z: curses' handler leaves the screen, stops the process and redraws once continued;
 * the time stopped is noted for the run's clocks. Around it the paste mode goes off, so that
 * the shell is not sent marked-up pastes, and on again after fg (a shell's line editor turns
 * it off when it has read a line). */
static void on_suspend(int sig)
{
    set_paste_mode(0);
    double at = pesc_now();   /* clock_gettime: async-signal-safe */
    ui_process.curses_suspend.sa_handler(sig);
    pesc_note_stopped(pesc_now() - at);   /* the run's rates and ETA leave it out */
    set_paste_mode(1);
}

/* Wraps the SIGTSTP handler newterm installed; none (the signal was ignored) is left alone. */
static void wrap_suspend(void)
{
    struct sigaction sa;
    if (sigaction(SIGTSTP, NULL, &ui_process.curses_suspend) != 0 ||
        ui_process.curses_suspend.sa_flags & SA_SIGINFO ||
        ui_process.curses_suspend.sa_handler == SIG_DFL ||
        ui_process.curses_suspend.sa_handler == SIG_IGN)
        return;
    sa = ui_process.curses_suspend;
    sa.sa_handler = on_suspend;
    sigaction(SIGTSTP, &sa, NULL);
}

static void unwrap_suspend(void)
{
    struct sigaction now;
    if (sigaction(SIGTSTP, NULL, &now) == 0 && now.sa_handler == on_suspend)
        sigaction(SIGTSTP, &ui_process.curses_suspend, NULL);
}

static void install_signals(struct sigaction *old_int, struct sigaction *old_term,
                            struct sigaction *old_hup)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_interrupt;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, old_int);
    sigaction(SIGTERM, &sa, old_term);
    sigaction(SIGHUP, &sa, old_hup);
    sa.sa_handler = on_crash;
    sa.sa_flags = SA_RESETHAND;
    static const int crashes[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};
    for (size_t i = 0; i < sizeof crashes / sizeof *crashes; i++)
        sigaction(crashes[i], &sa, NULL);
}

/* ---- theme -------------------------------------------------------------------------------- */

static int no_color_env(void)
{
    const char *s = getenv("NO_COLOR");
    return s && *s;
}

static void theme_init(ui_theme *t, const ui_options *o)
{
    memset(t, 0, sizeof *t);
    const char *cs = setlocale(LC_CTYPE, NULL);
    t->utf8 = cs && (strstr(cs, "UTF-8") || strstr(cs, "utf8") || strstr(cs, "UTF8") ||
                     strstr(cs, "utf-8"));
    if (o->no_color || no_color_env() || !has_colors())
        return;
    start_color();
    use_default_colors();
    t->colour = 1;
    int rich = COLORS >= 256;
    init_pair(PAIR_TITLE, COLOR_CYAN, -1);
    init_pair(PAIR_BORDER, rich ? 240 : COLOR_BLUE, -1);
    init_pair(PAIR_FOCUS, COLOR_CYAN, -1);
    init_pair(PAIR_DIM, rich ? 245 : COLOR_WHITE, -1);
    init_pair(PAIR_GOOD, COLOR_GREEN, -1);
    init_pair(PAIR_WARN, COLOR_YELLOW, -1);
    init_pair(PAIR_BAD, COLOR_RED, -1);
    init_pair(PAIR_RAW, rich ? 67 : COLOR_BLUE, -1);
    init_pair(PAIR_SMOOTH, rich ? 51 : COLOR_CYAN, -1);
    init_pair(PAIR_AUX, rich ? 213 : COLOR_MAGENTA, -1);
    init_pair(PAIR_KEY, COLOR_BLACK, COLOR_CYAN);
    init_pair(PAIR_KEYLABEL, -1, -1);
    init_pair(PAIR_RUN, COLOR_BLACK, COLOR_GREEN);
    init_pair(PAIR_PAUSE, COLOR_BLACK, COLOR_YELLOW);
    init_pair(PAIR_STOP, COLOR_WHITE, COLOR_RED);
    init_pair(PAIR_SELECT, COLOR_BLACK, COLOR_CYAN);
    init_pair(PAIR_EVAL, rich ? 214 : COLOR_YELLOW, -1);
    /* compared runs: away from the first run's blue, cyan and orange */
    static const short compare8[MONITOR_COMPARED] = {COLOR_GREEN, COLOR_RED, COLOR_WHITE,
                                                     COLOR_MAGENTA};
    static const short compare256[MONITOR_COMPARED] = {78, 203, 227, 141};
    for (int i = 0; i < MONITOR_COMPARED; i++)
        init_pair((short)(PAIR_COMPARE0 + i), rich ? compare256[i] : compare8[i], -1);
    static const short experts8[8] = {COLOR_RED, COLOR_GREEN, COLOR_YELLOW, COLOR_BLUE,
                                      COLOR_MAGENTA, COLOR_CYAN, COLOR_WHITE, COLOR_RED};
    static const short experts256[8] = {203, 83, 221, 75, 213, 87, 215, 141};
    for (int i = 0; i < 8; i++)
        init_pair((short)(PAIR_EXPERT0 + i), rich ? experts256[i] : experts8[i], -1);
    /* the heat scale runs dark (idle) through green (even) to red (hot) */
    static const short heat256[] = {17, 18, 24, 30, 36, 72, 107, 143, 179, 214, 208, 202, 196};
    static const short heat8[] = {COLOR_BLUE, COLOR_CYAN, COLOR_GREEN, COLOR_YELLOW, COLOR_RED};
    const short *heat = rich ? heat256 : heat8;
    t->heat_steps = rich ? (int)(sizeof heat256 / sizeof *heat256) : 5;
    for (int i = 0; i < t->heat_steps; i++) {
        short fg = i < t->heat_steps / 2 ? COLOR_WHITE : COLOR_BLACK;
        init_pair((short)(PAIR_HEAT0 + i), fg, heat[i]);
    }
}

/* ---- messages and commands ---------------------------------------------------------------- */

void ui_notice(ui_context *ui, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ui->message, sizeof ui->message, fmt, ap);
    va_end(ap);
    ui->message_at = pesc_now();
}

int ui_send(ui_context *ui, const char *fmt, ...)
{
    char line[1024], reply[512] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    monitor_command(ui->m, line, reply, sizeof reply);
    ui_notice(ui, "%s", reply[0] ? reply : "ok");
    return strncmp(reply, "error", 5) == 0 ? -1 : 0;
}

static int message_fresh(const ui_context *ui)
{
    return ui->message[0] && pesc_now() - ui->message_at < 6.0;
}

/* A fresh reply goes in the key bar's row, whole, where the status line has no room for it:
 * one status row, or a reply longer than half the width (the second row's segments take the
 * rest; an error's advice was cut there). */
static int message_on_keys(const ui_context *ui)
{
    return message_fresh(ui) && (ui->lo.status.h < 2 || text_columns(ui->message) > ui->cols / 2);
}

static int wrap_row(const char *text, int width, const char **next);

/* A reply too long for the key bar's row begins on the status line's second row instead, in
 * place of the LR and the rest for its few seconds (it was cut with a mark, unreadable).
 * Returns where its part on the key bar's row begins: the whole message when it fits there. */
static const char *message_on_keys_from(const ui_context *ui)
{
    const char *rest = ui->message;
    if (message_on_keys(ui) && ui->lo.status.h >= 2 && text_columns(ui->message) > ui->cols - 2)
        wrap_row(ui->message, ui->cols - 2, &rest);
    return rest;
}

static int message_attr(ui_context *ui)
{
    return strncmp(ui->message, "error", 5) == 0
               ? theme_attr(&ui->theme, PAIR_BAD, A_BOLD) | (int)A_BOLD : (int)A_BOLD;
}

/* ---- windows ------------------------------------------------------------------------------ */

typedef struct ui_windows_extra {
    WINDOW *status, *keys;
} ui_windows_extra;

static const ui_panel_class *const panel_classes[PANEL_COUNT] = {
    [PANEL_ROUTING] = &routing_panel_class, [PANEL_LOSS] = &loss_panel_class,
    [PANEL_NORMS] = &norms_panel_class, [PANEL_CONSOLE] = &console_panel_class,
    [PANEL_DOWNLOADS] = &downloads_panel_class,
};

static int have_downloads(const ui_context *ui)
{
    return ui->have_view && ui->view->n_downloads > 0;
}

static int routing_cols_wanted(const ui_context *ui)
{
    int E = ui->have_view ? ui->view->run.shape.n_experts : 0;
    if (E <= 0)
        return 0;
    int cell = E <= 8 ? 5 : E <= 16 ? 4 : E <= 32 ? 3 : 1;
    return 2 + 4 + E * cell + 14 + 2;   /* frame, layer label, cells, imbalance and markers */
}

static void delete_windows(ui_context *ui, ui_windows_extra *x)
{
    for (int p = 0; p < PANEL_COUNT; p++) {
        if (ui->win[p])
            delwin(ui->win[p]);
        ui->win[p] = NULL;
    }
    if (x->status)
        delwin(x->status);
    if (x->keys)
        delwin(x->keys);
    x->status = x->keys = NULL;
}

static WINDOW *window_for(layout_rect r)
{
    return layout_visible(r) ? newwin(r.h, r.w, r.y, r.x) : NULL;
}

/* Recomputes the layout; new windows only when it changed. */
static void update_layout(ui_context *ui, ui_windows_extra *x, int force)
{
    int rows, cols;
    getmaxyx(stdscr, rows, cols);
    layout_request rq = {.cols = cols, .rows = rows, .focus = ui->focus,
                         .maximised = ui->maximised, .routing_cols = routing_cols_wanted(ui),
                         .download_rows = ui->have_view ? ui->view->n_downloads : 0};
    layout lo;
    layout_compute(&rq, &lo);
    if (!force && rows == ui->rows && cols == ui->cols && memcmp(&lo, &ui->lo, sizeof lo) == 0)
        return;
    delete_windows(ui, x);
    ui->lo = lo;
    ui->rows = rows;
    ui->cols = cols;
    for (int p = 0; p < PANEL_COUNT; p++)
        ui->win[p] = window_for(lo.panel[p]);
    x->status = window_for(lo.status);
    x->keys = window_for(lo.keys);
    clearok(curscr, TRUE);
}

/* ---- status line -------------------------------------------------------------------------- */

/* Writes segments left to right; once one does not fit, the rest of the row is left out. */
typedef struct row_writer {
    WINDOW *w;
    int y, x, end, full;
} row_writer;

static void row_put(row_writer *rw, int attr, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void row_put(row_writer *rw, int attr, const char *fmt, ...)
{
    if (rw->full)
        return;
    char s[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s, sizeof s, fmt, ap);
    va_end(ap);
    int cols = text_columns(s);
    if (rw->x + cols > rw->end) {
        rw->full = 1;
        return;
    }
    rw->x += draw_text(rw->w, rw->y, rw->x, cols, attr, s);
}

/* A label and its value, both or neither: a label without its number ("  ep" at the edge)
 * reads as if the value were missing. */
static void row_put_pair(row_writer *rw, int label_attr, const char *label, int value_attr,
                         const char *value)
{
    if (!rw->full && rw->x + text_columns(label) + text_columns(value) > rw->end)
        rw->full = 1;
    row_put(rw, label_attr, "%s", label);
    row_put(rw, value_attr, "%s", value);
}

/* Text at the row's right end, or cut short after its segments when it does not fit there. */
static void row_put_right(const row_writer *rw, int attr, const char *s)
{
    int room = rw->end - rw->x - 3;
    int cols = text_columns(s);
    if (room >= 12)
        draw_text(rw->w, rw->y, cols < room ? rw->end - 1 - cols : rw->x + 2, room, attr, s);
}

/* A command's reply: at the row's right end, or, where it does not fit after the row's
 * segments, over the last ones, from the latest of the columns `stops` (segment ends, the
 * first of them kept in any case) that leaves it room; cut short only where even that is too
 * narrow. A reply is there for a few seconds and must be read whole. */
static void row_put_reply(const row_writer *rw, const int *stops, int n_stops, int attr,
                          const char *s)
{
    int cols = text_columns(s);
    if (cols <= rw->end - rw->x - 3 || n_stops == 0 || rw->end - stops[0] - 3 < 12) {
        row_put_right(rw, attr, s);
        return;
    }
    int from = stops[0];
    for (int i = 1; i < n_stops; i++)
        if (stops[i] + 2 + cols <= rw->end - 1)
            from = stops[i];
    int x = rw->end - 1 - cols < from + 2 ? from + 2 : rw->end - 1 - cols;
    mvwhline(rw->w, rw->y, from, ' ', rw->end - from);
    draw_text(rw->w, rw->y, x, rw->end - 1 - x, attr, s);
}

static int run_is_over(const monitor_view *v)
{
    return v->state == MONITOR_FINISHED || v->state == MONITOR_STOPPED || v->state == MONITOR_FAILED;
}

static const char *state_badge(const ui_context *ui, monitor_state s, int *pair)
{
    int u = ui->theme.utf8;
    switch (s) {
    case MONITOR_STARTING: *pair = PAIR_PAUSE; return u ? " \u2026 STARTING " : " STARTING ";
    case MONITOR_RUNNING: *pair = PAIR_RUN; return u ? " \u25b6 RUNNING " : " > RUNNING ";
    case MONITOR_PAUSED: *pair = PAIR_PAUSE; return u ? " \u2016 PAUSED " : " || PAUSED ";
    case MONITOR_SAVING: *pair = PAIR_PAUSE; return " SAVING ";
    case MONITOR_EVALUATING: *pair = PAIR_PAUSE; return " EVALUATING ";
    case MONITOR_FINISHED: *pair = PAIR_RUN; return u ? " \u2713 FINISHED " : " FINISHED ";
    case MONITOR_STOPPED: *pair = PAIR_STOP; return u ? " \u25a0 STOPPED " : " STOPPED ";
    case MONITOR_FAILED: *pair = PAIR_STOP; return u ? " \u2717 FAILED " : " FAILED ";
    }
    *pair = PAIR_STOP;
    return " ? ";
}

static void draw_status(ui_context *ui, WINDOW *w)
{
    werase(w);
    int h, wd;
    getmaxyx(w, h, wd);
    const monitor_view *v = ui->view;
    const stats_record *r = ui->have_view ? v->last : NULL;
    int dim = theme_attr(&ui->theme, PAIR_DIM, A_NORMAL);
    int val = A_BOLD;
    row_writer rw = {.w = w, .y = 0, .x = 0, .end = wd};
    row_put(&rw, theme_attr(&ui->theme, PAIR_TITLE, A_BOLD) | (int)A_BOLD, " pesc ");
    int pair;
    const char *badge = state_badge(ui, ui->have_view ? v->state : MONITOR_STARTING, &pair);
    if (ui->have_view && v->reading > 0) {   /* a long log read over several frames */
        badge = ui->theme.utf8 ? " \u2026 READING " : " READING ";
        pair = PAIR_PAUSE;
    } else if (ui->have_view && v->quiet) {   /* a log gone quiet: running, or killed, or hung */
        badge = ui->theme.utf8 ? " \u25b6? QUIET " : " >? QUIET ";
        pair = PAIR_PAUSE;
    }
    row_put(&rw, theme_attr(&ui->theme, pair, A_REVERSE) | (int)A_BOLD, "%s", badge);
    row_put(&rw, 0, " ");
    if (!r && ui->have_view && v->state == MONITOR_FAILED && v->message[0]) {
        /* why it failed before a step (a download, say): on both rows if it needs them */
        draw_text_wrapped(w, 0, rw.x, h, theme_attr(&ui->theme, PAIR_BAD, A_BOLD) | (int)A_BOLD,
                          v->message);
        return;
    } else if (!r) {
        /* before a step: what is happening */
        int said = ui->have_view && v->message[0] && v->state != MONITOR_RUNNING;
        row_put(&rw, dim, "%s", !ui->have_view ? "connecting" : said ? v->message
                                                                     : "waiting for the first step");
    } else {
        long total = r->total_steps > 0 ? r->total_steps : v->run.total_steps;
        row_put(&rw, dim, "step ");
        if (total > 0) {
            row_put(&rw, val, "%ld/%ld", r->step, total);
            int bar = wd >= 100 ? 12 : 6;
            if (!rw.full && rw.x + bar + 7 < rw.end) {
                row_put(&rw, 0, " ");
                draw_bar(ui, w, 0, rw.x, bar, (double)r->step / (double)total,
                         theme_attr(&ui->theme, PAIR_GOOD, A_NORMAL));
                rw.x += bar;
                row_put(&rw, dim, " %3.0f%%", 100.0 * (double)r->step / (double)total);
            }
        } else {
            row_put(&rw, val, "%ld", r->step);
        }
        char a[48], b[32];
        snprintf(a, sizeof a, "%.2f", r->epoch);
        row_put_pair(&rw, dim, "  ep ", val, a);
        format_si((double)r->tokens, a, sizeof a);
        row_put_pair(&rw, dim, "  tok ", val, a);
        if (v->reading > 0) {
            /* a log being read: its steps come faster than they ran, and the rate and ETA
             * shown would be an old step's */
            snprintf(a, sizeof a, "%.0f%%", floor(100.0 * v->reading));
            row_put_pair(&rw, dim, "  read ", val, a);
        } else {
            /* paused or over, none flow: the last step's rate and ETA would stand there as
             * if they did */
            int flowing = v->state != MONITOR_PAUSED && !run_is_over(v);
            format_si(r->tokens_per_s, b, sizeof b);
            snprintf(a, sizeof a, "%s tok/s", flowing ? b : "-");
            row_put_pair(&rw, dim, "  ", val, a);
            if (!run_is_over(v)) {
                pesc_format_duration(v->quiet ? -1.0 : r->eta_s, a, sizeof a);
                row_put_pair(&rw, dim, "  ETA ", val, a);
            }
        }
        if (h == 1) {
            snprintf(a, sizeof a, "%.2e%s", r->lr, r->lr_overridden ? "*" : "");
            row_put_pair(&rw, dim, "  lr ", val, a);
        }
    }
    if (h < 2)
        return;
    const char *rest = message_on_keys_from(ui);
    if (rest != ui->message) {
        char first[sizeof ui->message];
        snprintf(first, sizeof first, "%.*s", (int)(rest - ui->message), ui->message);
        draw_text(w, 1, 1, wd - 2, message_attr(ui), first);
        return;
    }
    rw = (row_writer){.w = w, .y = 1, .x = 0, .end = wd};
    int stops[4], n_stops = 0;   /* where a long reply may start: the segments' ends */
    if (r) {
        row_put(&rw, dim, " lr ");
        row_put(&rw, r->lr_overridden ? theme_attr(&ui->theme, PAIR_WARN, A_BOLD) | (int)A_BOLD : val,
                "%.2e%s", r->lr, r->lr_overridden ? "*" : "");
        if (isfinite(r->aux_coef) && v->run.shape.n_experts > 0) {   /* aux_loss carries it */
            row_put(&rw, dim, "  aux ");
            row_put(&rw, val, "%.3g", r->aux_coef);
        }
        stops[n_stops++] = rw.x;
        row_put(&rw, dim, "  gn ");
        row_put(&rw, val, "%.3g", r->grad_norm);
        stops[n_stops++] = rw.x;
        char a[32];
        format_bytes_short(r->rss_bytes, a, sizeof a);
        row_put(&rw, dim, "  rss ");
        row_put(&rw, val, "%s", a);
        stops[n_stops++] = rw.x;
        if (r->device_bytes > 0) {
            format_bytes_short(r->device_bytes, a, sizeof a);
            row_put(&rw, dim, "  dev ");
            row_put(&rw, val, "%s", a);
            stops[n_stops++] = rw.x;
        }
    }
    if (ui->have_view && v->run.backend[0]) {
        row_put(&rw, dim, "  ");
        row_put(&rw, 0, "%s", v->run.backend);
    }
    if (ui->have_view) {
        char a[32];
        pesc_format_duration(v->since_save_s, a, sizeof a);
        row_put(&rw, dim, "  saved ");
        row_put(&rw, val, "%s", v->since_save_s < 0 ? "never" : a);
        if (v->since_save_s >= 0)
            row_put(&rw, dim, " ago");
    }
    /* a reply for a few seconds, then the source's note again */
    if (message_fresh(ui) && !message_on_keys(ui)) {
        int bad = strncmp(ui->message, "error", 5) == 0;
        row_put_reply(&rw, stops, n_stops, theme_attr(&ui->theme, bad ? PAIR_BAD : PAIR_GOOD, A_BOLD),
                      ui->message);
    } else if (r && v->state == MONITOR_FAILED && v->message[0]) {   /* why, until quitting */
        row_put_reply(&rw, stops, n_stops, theme_attr(&ui->theme, PAIR_BAD, A_BOLD), v->message);
    } else if (ui->have_view && v->note[0]) {   /* read whole: over the last segments */
        row_put_reply(&rw, stops, n_stops, theme_attr(&ui->theme, PAIR_WARN, A_BOLD), v->note);
    }
}

/* ---- key bar ------------------------------------------------------------------------------ */

typedef struct key_label {
    const char *key, *label;
} key_label;

static void draw_keys_list(ui_context *ui, WINDOW *w, const key_label *k, int n, const char *tail)
{
    int wd = getmaxx(w);
    int x = 0;
    int key_attr = theme_attr(&ui->theme, PAIR_KEY, A_REVERSE);
    /* the last key (how to leave) is kept on a narrow terminal: those before it go first */
    int last = text_columns(k[n - 1].key) + text_columns(k[n - 1].label) + 1;
    for (int i = 0; i < n; i++) {
        int need = text_columns(k[i].key) + text_columns(k[i].label) + 1;
        if (x + need + (i < n - 1 ? last : 0) > wd) {
            if (i == n - 1)
                break;
            i = n - 2;   /* on to the last */
            continue;
        }
        x += draw_text(w, 0, x, wd - x, key_attr, k[i].key);
        x += draw_text(w, 0, x, wd - x, 0, k[i].label);
        x += draw_text(w, 0, x, wd - x, 0, " ");
    }
    char ascii[128];
    if (tail && !ui->theme.utf8) {   /* the routing panel's arrows, which ASCII lacks */
        static const char *const arrows[][2] = {{"\u2191\u2193", "Up/Dn"},
                                                {"\u2190\u2192", "Lt/Rt"}};
        for (int i = 0; i < 2; i++) {
            const char *at = strstr(tail, arrows[i][0]);
            if (!at)
                continue;
            char was[sizeof ascii];
            snprintf(was, sizeof was, "%s", tail);
            at = was + (at - tail);
            snprintf(ascii, sizeof ascii, "%.*s%s%s", (int)(at - was), was, arrows[i][1],
                     at + strlen(arrows[i][0]));
            tail = ascii;
        }
    }
    if (tail && x + text_columns(tail) + 2 <= wd)
        draw_text(w, 0, wd - text_columns(tail) - 1, wd, theme_attr(&ui->theme, PAIR_DIM, A_NORMAL), tail);
}

static void draw_mini_prompt(ui_context *ui, WINDOW *w)
{
    char aux[64] = " aux loss coefficient: ";
    const stats_record *r = ui->have_view ? ui->view->last : NULL;
    if (r && isfinite(r->aux_coef))   /* what it replaces */
        snprintf(aux, sizeof aux, " aux loss coefficient (now %.3g): ", r->aux_coef);
    const char *label = ui->mini == MINI_LR ? " learning rate (e.g. 2e-4, *0.5): "
                      : ui->mini == MINI_AUX ? aux : " command: ";
    int wd = getmaxx(w);
    int x = draw_text(w, 0, 0, wd, theme_attr(&ui->theme, PAIR_KEY, A_REVERSE), label);
    int room = wd - x - 1;
    lineedit *e = &ui->mini_line;
    ui->cursor_win = w;
    ui->cursor_y = 0;
    ui->cursor_x = draw_lineedit(ui, w, 0, x + 1, room, e);
}

static void draw_keys(ui_context *ui, WINDOW *w)
{
    werase(w);
    if (ui->mode == MODE_MINI) {
        draw_mini_prompt(ui, w);
        return;
    }
    if (message_on_keys(ui)) {
        draw_text_words(ui, w, 0, 1, getmaxx(w) - 2, message_attr(ui), message_on_keys_from(ui));
        return;
    }
    if (ui->mode == MODE_PROMPT) {
        /* Esc last: draw_keys_list keeps the last key, the way out */
        static const key_label k[] = {{"Enter", "Send"}, {"\u2191\u2193", "History"},
                                      {"^U", "Cut left"}, {"Tab", "Panel"}, {"Esc", "Back"}};
        static const key_label ka[] = {{"Enter", "Send"}, {"Up/Dn", "History"},
                                       {"^U", "Cut left"}, {"Tab", "Panel"}, {"Esc", "Back"}};
        draw_keys_list(ui, w, ui->theme.utf8 ? k : ka, 5, NULL);
        return;
    }
    static const key_label steer[] = {{"?", "Help"}, {"Spc", "Pause"}, {"+-", "LR"}, {"l", "SetLR"},
                                      {"a", "Aux"}, {"s", "Save"}, {"/", "Prompt"}, {"Tab", "Panel"},
                                      {"f", "Full"}, {"q", "Quit"}};
    static const key_label watch[] = {{"?", "Help"}, {"Tab", "Panel"}, {"1-4", "Go"},
                                      {"f", "Full"}, {"q", "Quit"}};
    /* with a one-row status area the source's note takes the place of the panel's keys */
    const char *tail = panel_classes[ui->focus]->hint;
    if (ui->focus == PANEL_ROUTING && ui->routing_view == ROUTING_SOURCE)   /* Up/Down: sources */
        tail = "v view  \u2191\u2193 source  \u2190\u2192 layer";
    if (ui->lo.status.h < 2 && ui->have_view && ui->view->note[0])
        tail = ui->view->note;
    /* a run that has ended takes prompts and nothing else (and one that failed, or one whose
     * process is gone, not those) */
    static const key_label ended[] = {{"?", "Help"}, {"/", "Prompt"}, {"Tab", "Panel"},
                                      {"f", "Full"}, {"q", "Quit"}};
    int over = ui->have_view && run_is_over(ui->view);
    int gone = ui->have_view && ui->view->gone;
    if (ui->opt->read_only || gone || (over && ui->view->state == MONITOR_FAILED))
        draw_keys_list(ui, w, watch, 5, tail);
    else if (over)
        draw_keys_list(ui, w, ended, 5, tail);
    else
        draw_keys_list(ui, w, steer, 10, tail);
}

/* ---- dialogs ------------------------------------------------------------------------------ */

static WINDOW *centred(ui_context *ui, int h, int w)
{
    h = h < ui->rows ? h : ui->rows;
    w = w < ui->cols ? w : ui->cols;
    return newwin(h, w, (ui->rows - h) / 2, (ui->cols - w) / 2);
}

/* The next row of text wrapped at width columns (ASCII, as the help and the dialogs are):
 * its length, breaking at the last double space that fits, else at the last space (or
 * mid-word when there is none); *next is where the row after it starts, its spaces skipped. */
static int wrap_row(const char *text, int width, const char **next)
{
    int len = (int)strlen(text), cut = len;
    if (len > width) {   /* at a double space (between a dialog's keys) where there is one */
        cut = width;
        while (cut > 0 && !(text[cut] == ' ' && text[cut - 1] == ' '))
            cut--;
        if (cut == 0) {
            cut = width;
            while (cut > 0 && text[cut] != ' ')
                cut--;
        }
        cut = cut > 0 ? cut : width;
    }
    const char *rest = text + cut;
    while (*rest == ' ')
        rest++;
    *next = rest;
    while (cut > 0 && text[cut - 1] == ' ')
        cut--;
    return cut;
}

#define HELP_KEYS 11             /* the key column: "Space      " */

static void draw_help(ui_context *ui)
{
    /* a key (or a panel's name) and what it does, wrapped to the window under the text; 5
     * only while there is a Downloads panel */
    int downloads = have_downloads(ui), steers = !ui->opt->read_only, live = ui->opt->live;
    /* a view leaves the run going: q and Ctrl-C only leave it; one without --attach steers
     * nothing, and says how to */
    const struct { int shown; const char *key, *text; } all[] = {
        {steers, "Space", "pause / resume the run"},
        {steers, "+  -", "learning rate x1.25 / /1.25; constant from then on"},
        {steers, "l", "type an exact learning rate (or *factor); constant too"},
        {steers, "a", "aux loss coefficient"},
        {steers, "s", "save a checkpoint now"},
        {steers, "e", "score the held-out data after the next step, or now when paused"},
        {steers, "/  p", "prompt the model, live or (once the run ends) trained; a paste keeps "
                         "its line breaks; Enter sends it whole"},
        {steers, ":", "type any control command"},
        {!steers, "", "pause, learning rate, save, prompt: pesc view --attach SOCKET "
                      "(the run's --control)"},
        {1, downloads ? "Tab  1-5" : "Tab  1-4",
         downloads ? "next panel / routing, loss, norms, console, downloads"
                   : "next panel / routing, loss, norms, console"},
        {1, "f", "the focused panel full screen; Esc back"},
        {1, "q  F10", live ? "quit (a live run is stopped first, saved with --save)"
                      : steers ? "leave the view; the run goes on (asked first when it is paused)"
                      : "leave the view; the run goes on"},
        {1, "Ctrl-C", live ? "stop the run (saved with --save) and quit; again: now"
                      : "leave the view; the run goes on"},
        {1, "", ""},
        {1, "Routing", "Up/Down layer; v view: all / 1st / 2nd / per source / one layer's "
                       "history (Enter too), Left/Right its layer"},
        {1, "Loss", "z recent window / whole run (of the first run's steps, when pesc view "
                    "compares runs)"},
        {1, "Norms", "v |U| heatmap / |D| heatmap / bars with trend"},
        {1, "Console", steers ? "t T temperature, o O top-p, m M max tokens, < > layer for "
                                "colours, c colour tokens by expert, v every recent event "
                                "(Up/Down, PgUp/PgDn go back)"
                              : "v every recent event (Up/Down, PgUp/PgDn go back)"},
        {1, "", ""},
        {1, NULL, "any key closes this help"},
    };
    const char *entries[sizeof all / sizeof *all][2];   /* NULL key: a line of its own */
    int n_entries = 0;
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        if (all[i].shown) {
            entries[n_entries][0] = all[i].key;
            entries[n_entries++][1] = all[i].text;
        }
    int text_w = (ui->cols < 70 ? ui->cols : 70) - 5 - HELP_KEYS;
    text_w = text_w > 8 ? text_w : 8;
    /* the wrapped rows: the entry and where in its text each starts */
    struct { int entry; const char *text; int len; } rows[128];
    int n = 0;
    for (int i = 0; i < n_entries && n < (int)(sizeof rows / sizeof *rows); i++) {
        const char *t = entries[i][1];
        int width = entries[i][0] ? text_w : text_w + HELP_KEYS;
        do {
            const char *next;
            rows[n].entry = i;
            rows[n].text = t;
            rows[n].len = wrap_row(t, width, &next);
            n++;
            t = next;
        } while (*t && n < (int)(sizeof rows / sizeof *rows));
    }
    WINDOW *w = centred(ui, n + 4, 70);
    if (!w)
        return;
    werase(w);
    draw_frame(ui, w, "Help", "pesc workbench", 1);
    /* on a short terminal: a window of the rows, Up/Down moving it, and the last row says so */
    int room = getmaxy(w) - 4 > 2 ? getmaxy(w) - 4 : 2;
    ui->help_scrolls = n > room;
    int shown = ui->help_scrolls ? room - 1 : n;
    ui->help_top = ui->help_top < 0 ? 0 : ui->help_top > n - shown ? n - shown : ui->help_top;
    int dim = theme_attr(&ui->theme, PAIR_DIM, A_NORMAL);
    for (int i = 0; i < shown; i++) {
        int k = ui->help_top + i;
        const char *key = entries[rows[k].entry][0];
        char text[128];
        snprintf(text, sizeof text, "%.*s", rows[k].len, rows[k].text);
        if (!key) {
            draw_text(w, 2 + i, 3, getmaxx(w) - 5, dim, text);
            continue;
        }
        if (rows[k].text == entries[rows[k].entry][1])   /* its first row names the key */
            draw_text(w, 2 + i, 3, HELP_KEYS, 0, key);
        draw_text(w, 2 + i, 3 + HELP_KEYS, getmaxx(w) - 5 - HELP_KEYS, 0, text);
    }
    if (ui->help_scrolls) {
        char more[80];
        snprintf(more, sizeof more, "%d-%d/%d  Up/Down: more  other: close",
                 ui->help_top + 1, ui->help_top + shown, n);
        draw_text(w, 2 + shown, 3, getmaxx(w) - 5, dim, more);
    }
    wnoutrefresh(w);
    delwin(w);
}

/* A dialog of two texts, each wrapped to the terminal's width (so that on a narrow one the
 * way back, at the end of the second, is still there): the question in bold, then its keys.
 * On a terminal too short for both, the keys come first: the question is cut, and the keys
 * shrink to brief when they alone would not fit. */
static void draw_dialog(ui_context *ui, const char *title, const char *line1, const char *line2,
                        const char *brief)
{
    int width = text_columns(line1) + 6;
    if (text_columns(line2) + 6 > width)
        width = text_columns(line2) + 6;
    width = width < ui->cols ? width : ui->cols;
    int text_w = width - 6 > 8 ? width - 6 : 8;
    const char *texts[2] = {line1, line2}, *next;
    int rows[2] = {0, 0};
    for (int i = 0; i < 2; i++)
        for (const char *t = texts[i]; *t; t = next, rows[i]++)
            wrap_row(t, text_w, &next);
    int pad = rows[0] + rows[1] + 4 <= ui->rows;   /* a blank row inside each border */
    int room = ui->rows - 2 - 2 * pad;
    if (rows[1] > room - 1) {
        texts[1] = brief;
        rows[1] = 0;
        for (const char *t = brief; *t; t = next, rows[1]++)
            wrap_row(t, text_w, &next);
    }
    int first = room - rows[1];
    rows[0] = rows[0] < first ? rows[0] : first > 0 ? first : 0;
    WINDOW *w = centred(ui, rows[0] + rows[1] + 2 + 2 * pad, width);
    if (!w)
        return;
    werase(w);
    draw_frame(ui, w, title, NULL, 1);
    int y = 1 + pad, dim = theme_attr(&ui->theme, PAIR_DIM, A_NORMAL);
    for (int i = 0; i < 2; i++) {
        const char *t = texts[i];
        for (int r = 0; r < rows[i] && *t && y < getmaxy(w) - 1; t = next, y++, r++) {
            char row[256];
            snprintf(row, sizeof row, "%.*s", wrap_row(t, text_w, &next), t);
            draw_text(w, y, 3, getmaxx(w) - 4, i == 0 ? (int)A_BOLD : dim, row);
        }
    }
    wnoutrefresh(w);
    delwin(w);
}

/* q's question: what stopping keeps, and the keys; q again goes back, so that a key held
 * down cannot also pass the Stopping dialog (where q leaves without waiting for the save). */
static void draw_confirm_quit(ui_context *ui)
{
    const monitor_view *v = ui->view;
    int starting = v->state == MONITOR_STARTING;
    const char *question = starting ? "Stop the run before it begins? (a download keeps its "
                                      "partial file, to go on from)"
                         : v->can_save ? "Save a checkpoint and stop the run?"
                         : "Stop the run? (no --save: nothing is kept)";
    char keys[128];
    snprintf(keys, sizeof keys, "y / Enter: %s and quit     n / q / Esc: %s",
             v->can_save && !starting ? "save" : "stop",
             v->state == MONITOR_RUNNING ? "keep training" : "go back");
    draw_dialog(ui, "Quit", question, keys, v->can_save && !starting ? "y: save, quit  n: back"
                                                                      : "y: stop, quit  n: back");
}

/* ---- drawing a frame ---------------------------------------------------------------------- */

static void draw_all(ui_context *ui, ui_windows_extra *x)
{
    ui->cursor_win = NULL;
    if (ui->lo.too_small) {
        werase(stdscr);
        mvwaddnstr(stdscr, 0, 0, "pesc: terminal too small", ui->cols);
        wnoutrefresh(stdscr);
        doupdate();
        return;
    }
    for (int p = 0; p < PANEL_COUNT; p++) {
        if (!ui->win[p])
            continue;
        werase(ui->win[p]);
        panel_classes[p]->draw(ui, ui->win[p], ui->view);
        wnoutrefresh(ui->win[p]);
    }
    if (x->status) {
        draw_status(ui, x->status);
        wnoutrefresh(x->status);
    }
    if (x->keys) {
        draw_keys(ui, x->keys);
        wnoutrefresh(x->keys);
    }
    if (ui->mode == MODE_HELP)
        draw_help(ui);
    else if (ui->mode == MODE_CONFIRM_QUIT)
        draw_confirm_quit(ui);
    else if (ui->mode == MODE_CONFIRM_LEAVE)
        draw_dialog(ui, "Leave", "The run is paused, and stays paused once this view has left.",
                    "r: resume it and leave     y / Enter: leave it paused     n / q / Esc: stay",
                    "r: resume  y: leave  n: stay");
    else if (ui->mode == MODE_STOPPING)
        draw_dialog(ui, "Stopping", ui->view->can_save ? "Saving and stopping the run..."
                                                       : "Stopping the run...",
                    "q: leave without waiting", "q: leave now");
    if (ui->cursor_win && (ui->mode == MODE_PROMPT || ui->mode == MODE_MINI)) {
        curs_set(1);
        wmove(ui->cursor_win, ui->cursor_y, ui->cursor_x);
        wnoutrefresh(ui->cursor_win);
    } else {
        curs_set(0);
    }
    doupdate();
}

/* ---- keys --------------------------------------------------------------------------------- */

#define KEY_ESC 27
#define CTRL_KEY(c) ((c) & 0x1f)

/* Shared by the two line prompts; returns 1 when the key was an editing key. A character
 * past the line's room is refused with a notice, as a paste past it is. */
static int edit_key(ui_context *ui, lineedit *e, int is_code, wint_t ch)
{
    if (is_code) {
        switch (ch) {
        case KEY_LEFT: lineedit_key_press(e, LE_LEFT); return 1;
        case KEY_RIGHT: lineedit_key_press(e, LE_RIGHT); return 1;
        case KEY_HOME: lineedit_key_press(e, LE_HOME); return 1;
        case KEY_END: lineedit_key_press(e, LE_END); return 1;
        case KEY_BACKSPACE: lineedit_key_press(e, LE_BACKSPACE); return 1;
        case KEY_DC: lineedit_key_press(e, LE_DELETE); return 1;
        case KEY_UP: lineedit_key_press(e, LE_HISTORY_UP); return 1;
        case KEY_DOWN: lineedit_key_press(e, LE_HISTORY_DOWN); return 1;
        default:
            if ((int)ch == ui->word_left_key || (int)ch == ui->word_right_key) {
                lineedit_key_press(e, (int)ch == ui->word_left_key ? LE_WORD_LEFT : LE_WORD_RIGHT);
                return 1;
            }
            return 0;
        }
    }
    switch (ch) {
    case 127: case 8: lineedit_key_press(e, LE_BACKSPACE); return 1;
    case CTRL_KEY('a'): lineedit_key_press(e, LE_HOME); return 1;
    case CTRL_KEY('e'): lineedit_key_press(e, LE_END); return 1;
    case CTRL_KEY('b'): lineedit_key_press(e, LE_LEFT); return 1;
    case CTRL_KEY('f'): lineedit_key_press(e, LE_RIGHT); return 1;
    case CTRL_KEY('d'): lineedit_key_press(e, LE_DELETE); return 1;
    case CTRL_KEY('k'): lineedit_key_press(e, LE_KILL_TO_END); return 1;
    case CTRL_KEY('u'): lineedit_key_press(e, LE_KILL_TO_START); return 1;
    case CTRL_KEY('w'): lineedit_key_press(e, LE_KILL_WORD); return 1;
    case CTRL_KEY('p'): lineedit_key_press(e, LE_HISTORY_UP); return 1;
    case CTRL_KEY('n'): lineedit_key_press(e, LE_HISTORY_DOWN); return 1;
    default:
        if (ch >= 32 && ch != 127) {
            if (lineedit_insert(e, (wchar_t)ch) != 0)
                ui_notice(ui, "error: the line is full (%d characters)", LINEEDIT_MAX);
            return 1;
        }
        return 0;
    }
}

/* A command is one line (monitor.h): a prompt's line breaks go as "\n", backslashes as "\\".
 * out has room for twice the text. */
static void escape_prompt(const char *text, char *out)
{
    for (; *text; text++) {
        if (*text == '\n' || *text == '\\') {
            *out++ = '\\';
            *out++ = *text == '\n' ? 'n' : '\\';
        } else {
            *out++ = *text;
        }
    }
    *out = '\0';
}

static void send_prompt(ui_context *ui)
{
    char text[LINEEDIT_MAX * 4 + 1], escaped[2 * sizeof text], line[1024];
    if (lineedit_utf8(&ui->prompt, text, sizeof text) <= 0) {
        ui_notice(ui, "error: type a prompt first");
        return;
    }
    escape_prompt(text, escaped);
    /* cut short, the line would still be a prompt, only not the one typed */
    if (snprintf(line, sizeof line, "generate max=%d temp=%g top_p=%g layer=%d %s",
                 ui->gen_max_tokens, ui->gen_temperature, ui->gen_top_p, ui->gen_layer,
                 escaped) >= (int)sizeof line) {
        ui_notice(ui, "error: the prompt is too long to send (%zu bytes)", strlen(text));
        return;
    }
    lineedit_remember(&ui->prompt);
    if (ui_send(ui, "%s", line) == 0) {   /* refused (busy, say), it stays to be sent again */
        lineedit_clear(&ui->prompt);
        ui->console_events = ui->console_back = 0;   /* the answer, not the events, comes next */
        const monitor_view *v = ui->view;
        ui->awaiting_answer = ui->have_view;
        ui->sent_after = ui->have_view && v->n_events > 0 ? v->events[v->n_events - 1].elapsed_s
                                                          : -1.0;
        /* the run's reply points a socket's client to the log; here the answer is below */
        ui_notice(ui, "ok: answering in the console (up to %d tokens)", ui->gen_max_tokens);
    }
}

static void send_mini(ui_context *ui)
{
    char text[LINEEDIT_MAX * 4 + 1];
    if (lineedit_utf8(&ui->mini_line, text, sizeof text) <= 0)
        return;
    lineedit_remember(&ui->mini_line);
    if (ui->mini == MINI_LR)
        ui_send(ui, "lr %s", text);
    else if (ui->mini == MINI_AUX)
        ui_send(ui, "aux %s", text);
    else
        ui_send(ui, "%s", text);
}

static void begin_stop(ui_context *ui)
{
    ui_send(ui, "save");
    ui_send(ui, "stop");
    ui->mode = MODE_STOPPING;
    ui->stop_asked_at = pesc_now();
}

static void ask_quit(ui_context *ui)
{
    int attached = !ui->opt->live && !ui->opt->read_only;
    if (ui->opt->live && ui->have_view && !run_is_over(ui->view))
        ui->mode = MODE_CONFIRM_QUIT;
    else if (attached && ui->have_view && ui->view->state == MONITOR_PAUSED)
        ui->mode = MODE_CONFIRM_LEAVE;   /* nobody may be left to resume it */
    else
        ui->quit = 1;
}

static void focus_panel(ui_context *ui, ui_panel_id p)
{
    ui->focus = p;
    if (p != PANEL_CONSOLE && ui->mode == MODE_PROMPT)
        ui->mode = MODE_NORMAL;
}

static void start_mini(ui_context *ui, ui_mini_kind kind)
{
    ui->mode = MODE_MINI;
    ui->mini = kind;
    lineedit_clear(&ui->mini_line);
}

/* Keys every panel shares; returns 0 when the key is not one of them. */
static int global_key(ui_context *ui, int is_code, wint_t ch)
{
    if (is_code) {
        switch (ch) {
        case KEY_F(1): ui->mode = MODE_HELP; ui->help_top = 0; return 1;
        case KEY_F(10): ask_quit(ui); return 1;
        case KEY_BTAB: focus_panel(ui, layout_next_panel(ui->focus, -1, have_downloads(ui))); return 1;
        default: return 0;
        }
    }
    switch (ch) {
    case ' ':
        ui_send(ui, ui->have_view && ui->view->state == MONITOR_PAUSED ? "resume" : "pause");
        return 1;
    case '+': case '=': ui_send(ui, "lr *1.25"); return 1;
    case '-': case '_': ui_send(ui, "lr *0.8"); return 1;
    case 'l': start_mini(ui, MINI_LR); return 1;
    case 'a': start_mini(ui, MINI_AUX); return 1;
    case ':': start_mini(ui, MINI_COMMAND); return 1;
    case 's': ui_send(ui, "save"); return 1;
    case 'e': ui_send(ui, "eval"); return 1;
    case '/': case 'p':
        ui->focus = PANEL_CONSOLE;
        ui->mode = MODE_PROMPT;
        return 1;
    case '\t': focus_panel(ui, layout_next_panel(ui->focus, 1, have_downloads(ui))); return 1;
    case '1': case '2': case '3': case '4':
        focus_panel(ui, (ui_panel_id)(ch - '1'));
        return 1;
    case '5':   /* the Downloads panel, only while there is one */
        if (have_downloads(ui))
            focus_panel(ui, PANEL_DOWNLOADS);
        else
            ui_notice(ui, "error: no downloads in this run (5 is the Downloads panel)");
        return 1;
    case 'f': ui->maximised = !ui->maximised; return 1;
    case KEY_ESC: ui->maximised = 0; return 1;
    case '?': case 'h': ui->mode = MODE_HELP; ui->help_top = 0; return 1;
    case 'q': ask_quit(ui); return 1;
    case CTRL_KEY('l'): clearok(curscr, TRUE); return 1;
    default: return 0;
    }
}

/* ---- pasting ------------------------------------------------------------------------------ */

/* A key code that no terminfo key has taken (xterm's modified keys take those after KEY_MAX). */
static int unused_key_code(int from)
{
    for (int code = from;; code++) {
        char *bound = keybound(code, 0);
        if (!bound)
            return code;
        free(bound);
    }
}

/* Makes an escape sequence a key of its own where terminfo binds it to none (ncurses 6.4 binds
 * no paste marker), so that keypad mode turns it into one key instead of Esc and more keys. */
static int sequence_key(const char *seq, int from)
{
    int code = key_defined(seq);
    if (code > 0)
        return code;
    code = unused_key_code(from);
    define_key(seq, code);
    return code;
}

static void define_own_keys(ui_context *ui)
{
    ui->paste_begin_key = sequence_key("\033[200~", KEY_MAX + 1);
    ui->paste_end_key = sequence_key("\033[201~", ui->paste_begin_key + 1);
    /* and the word keys: Ctrl-Left and Ctrl-Right as xterm sends them (Alt-b, Alt-f too) */
    ui->word_left_key = sequence_key("\033[1;5D", ui->paste_end_key + 1);
    ui->word_right_key = sequence_key("\033[1;5C", ui->word_left_key + 1);
}

/* Takes the keys of a bracketed paste: the markers, and all between them, which is text for
 * the line being edited, never a command (a pasted 'q' or 'y' answers no dialog). A paste
 * outside a prompt opens the console's, as / does. Line breaks (CR, LF or CR LF) stay in the
 * console's prompt, since a prompt may have several lines, so that Enter afterwards sends it
 * whole; in the LR, aux and command lines they become spaces, as tabs do everywhere. Returns
 * 0 when the key is no part of a paste. */
static int paste_key(ui_context *ui, int is_code, wint_t ch)
{
    if (is_code && (int)ch == ui->paste_begin_key) {
        ui->pasting = 1;
        ui->paste_after_cr = ui->paste_dropped = 0;
        ui->paste_last_at = pesc_now();
        if (ui->mode == MODE_NORMAL) {
            ui->focus = PANEL_CONSOLE;
            ui->mode = MODE_PROMPT;
        }
        return 1;
    }
    if (is_code && (int)ch == ui->paste_end_key) {
        ui->pasting = 0;
        if (ui->paste_dropped)
            ui_notice(ui, "error: the line holds %d characters; %d pasted ones were left out",
                      LINEEDIT_MAX, ui->paste_dropped);
        return 1;
    }
    if (!ui->pasting)
        return 0;
    ui->paste_last_at = pesc_now();
    lineedit *e = ui->mode == MODE_PROMPT ? &ui->prompt : ui->mode == MODE_MINI ? &ui->mini_line : NULL;
    int after_cr = ui->paste_after_cr;
    ui->paste_after_cr = !is_code && ch == '\r';
    if (!e || is_code || (after_cr && ch == '\n'))
        return 1;
    wchar_t c = (wchar_t)ch;
    if (c == L'\r' || c == L'\n')
        c = e == &ui->prompt ? L'\n' : L' ';
    else if (c == L'\t')
        c = L' ';
    else if (c < 32 || c == 127)
        return 1;
    if (lineedit_insert(e, c) != 0)
        ui->paste_dropped++;
    return 1;
}

/* A paste whose end marker never came (cut off on its way) ends after a second without keys,
 * so that the keys are commands again. */
static void paste_idle(ui_context *ui)
{
    if (ui->pasting && pesc_now() - ui->paste_last_at > 1.0)
        ui->pasting = 0;
}

/* ---- reading keys ------------------------------------------------------------------------- */

/* Keys that terminals send otherwise than their terminfo entry says: PuTTY, screen and tmux
 * send ESC[1~ and ESC[4~ for Home and End under TERM=xterm, whose entry has ESC OH and ESC OF.
 * Each is made the key it means where the entry binds the sequence to nothing. */
static void define_usual_keys(void)
{
    static const struct { const char *seq; int key; } usual[] = {
        {"\033[1~", KEY_HOME}, {"\033[7~", KEY_HOME}, {"\033[H", KEY_HOME}, {"\033OH", KEY_HOME},
        {"\033[4~", KEY_END}, {"\033[8~", KEY_END}, {"\033[F", KEY_END}, {"\033OF", KEY_END},
        {"\033[3~", KEY_DC}, {"\033[2~", KEY_IC}, {"\033[5~", KEY_PPAGE}, {"\033[6~", KEY_NPAGE},
        {"\033[A", KEY_UP}, {"\033[B", KEY_DOWN}, {"\033[C", KEY_RIGHT}, {"\033[D", KEY_LEFT},
        {"\033OA", KEY_UP}, {"\033OB", KEY_DOWN}, {"\033OC", KEY_RIGHT}, {"\033OD", KEY_LEFT},
        {"\033[Z", KEY_BTAB},
    };
    for (size_t i = 0; i < sizeof usual / sizeof *usual; i++)
        if (key_defined(usual[i].seq) == 0)
            define_key(usual[i].seq, usual[i].key);
}

/* The next byte or key, ERR when none comes within wait_ms. */
static int waiting_key(ui_context *ui, wint_t *ch, int wait_ms)
{
    wtimeout(stdscr, wait_ms);
    if (ui->byte_keys) {
        int c = wgetch(stdscr);
        *ch = (wint_t)c;
        return c == ERR ? ERR : c >= KEY_MIN ? KEY_CODE_YES : OK;
    }
    return wget_wch(stdscr, ch);
}

/* Puts back a key waiting_key took. */
static void unread_key(const ui_context *ui, int r, wint_t c)
{
    if (r == KEY_CODE_YES || ui->byte_keys)
        ungetch((int)c);
    else
        unget_wch((wchar_t)c);
}

/* In the C locale ncurses takes only ASCII, and drops the rest of what was typed or pasted at
 * the first other byte; there the keys are read as bytes and UTF-8 decoded here (what a
 * terminal sends when LANG was not passed on by ssh). A byte that starts no character is a
 * '?'. lead is the first byte, >= 0x80. */
static wint_t utf8_key(ui_context *ui, int lead)
{
    int more = lead >= 0xf0 && lead < 0xf5 ? 3 : lead >= 0xe0 ? 2 : lead >= 0xc2 ? 1 : -1;
    if (more < 0 || lead >= 0xf5)
        return L'?';
    wint_t cp = (wint_t)(lead & (0x3f >> more));
    for (int i = 0; i < more; i++) {   /* a character a slow link split: its rest comes soon */
        wint_t c;
        int r = waiting_key(ui, &c, 25);
        if (r == ERR)
            return L'?';
        if (r != OK || (c & 0xc0) != 0x80) {   /* no continuation: the key is read next */
            unread_key(ui, r, c);
            return L'?';
        }
        cp = cp << 6 | (c & 0x3f);
    }
    if ((more == 2 && (cp < 0x800 || (cp >= 0xd800 && cp < 0xe000))) ||
        (more == 3 && (cp < 0x10000 || cp > 0x10ffff)))
        return L'?';
    return cp;
}

/* After an Esc with more keys right behind it (sent together, so likely one key of the
 * terminal's): the rest of an escape sequence no key matched (ESC [ ... final, ESC O x) is
 * dropped, instead of being taken as Esc and then commands (the 1 of ESC[1~ switching panels),
 * and so is Alt-Space (Esc, then Space pausing the run). In a line being edited, Alt-b and
 * Alt-f are readline's word left and right, as key codes in *ch. Any other key stays to be
 * read: Esc and then q, typed quickly, must still quit. Returns 0 when the Esc stands alone, 1
 * when it and what followed are dropped, 2 when *ch is the key they make. */
static int swallow_escape(ui_context *ui, wint_t *ch)
{
    wint_t c;
    int r = waiting_key(ui, &c, 0);
    if (r == ERR)
        return 0;
    int editing = ui->mode == MODE_PROMPT || ui->mode == MODE_MINI;
    if (r == OK && editing && (c == 'b' || c == 'f')) {
        *ch = (wint_t)(c == 'b' ? ui->word_left_key : ui->word_right_key);
        return 2;
    }
    if (r == OK && c == '[') {   /* CSI: parameters and intermediates, up to the final byte */
        for (int n = 0; n < 32 && (r = waiting_key(ui, &c, 0)) == OK; n++)
            if (c >= 0x40 && c <= 0x7e)
                break;
        if (r == KEY_CODE_YES)   /* a key of its own behind the sequence */
            unread_key(ui, r, c);
        return 1;
    }
    if (r == OK && c == 'O') {
        if ((r = waiting_key(ui, &c, 0)) == KEY_CODE_YES)
            unread_key(ui, r, c);
        return 1;
    }
    if (r == OK && c == ' ')
        return 1;
    unread_key(ui, r, c);
    return 0;
}

/* One key within the wait: OK and a character in *ch, KEY_CODE_YES and a key code, or ERR
 * when none came (or what came meant nothing). */
static int read_key(ui_context *ui, int wait_ms, wint_t *ch)
{
    int r = waiting_key(ui, ch, wait_ms);
    if (ui->byte_keys && r == OK && *ch >= 0x80)
        *ch = utf8_key(ui, (int)*ch);
    if (r == OK && *ch == KEY_ESC && !ui->pasting) {
        int how = swallow_escape(ui, ch);
        if (how)
            return how == 2 ? KEY_CODE_YES : ERR;
    }
    return r;
}

/* ---- dispatch ----------------------------------------------------------------------------- */

static void handle_key(ui_context *ui, int is_code, wint_t ch)
{
    if (paste_key(ui, is_code, ch))
        return;
    switch (ui->mode) {
    case MODE_HELP:
        if (is_code && ch == KEY_RESIZE)   /* not a key: the help is drawn anew for the size */
            return;
        if (ui->help_scrolls && is_code && (ch == KEY_UP || ch == KEY_DOWN || ch == KEY_PPAGE ||
                                            ch == KEY_NPAGE)) {
            int page = ui->rows / 2 > 1 ? ui->rows / 2 : 1;
            ui->help_top += ch == KEY_UP ? -1 : ch == KEY_DOWN ? 1 : ch == KEY_PPAGE ? -page : page;
            return;   /* draw_help keeps it in range */
        }
        ui->mode = MODE_NORMAL;
        return;
    case MODE_CONFIRM_QUIT:
        if ((!is_code && (ch == 'y' || ch == 'Y' || ch == '\n' || ch == '\r')) || (is_code && ch == KEY_F(10)))
            begin_stop(ui);
        else if ((!is_code && (ch == 'n' || ch == 'N' || ch == KEY_ESC || ch == 'q')))
            ui->mode = MODE_NORMAL;
        return;
    case MODE_CONFIRM_LEAVE:
        if (!is_code && (ch == 'r' || ch == 'R')) {
            if (ui_send(ui, "resume") == 0)   /* refused, the reply stays on screen */
                ui->quit = 1;
            else
                ui->mode = MODE_NORMAL;
        } else if ((!is_code && (ch == 'y' || ch == 'Y' || ch == '\n' || ch == '\r')) ||
                   (is_code && ch == KEY_F(10))) {
            ui->quit = 1;
        } else if (!is_code && (ch == 'n' || ch == 'N' || ch == KEY_ESC || ch == 'q')) {
            ui->mode = MODE_NORMAL;
        }
        return;
    case MODE_STOPPING:
        if (!is_code && (ch == 'q' || ch == 'Q'))
            ui->quit = 1;
        return;
    case MODE_MINI:
        if (!is_code && (ch == '\n' || ch == '\r')) {
            send_mini(ui);
            ui->mode = MODE_NORMAL;
        } else if (!is_code && ch == KEY_ESC) {
            ui->mode = MODE_NORMAL;
        } else {
            edit_key(ui, &ui->mini_line, is_code, ch);
        }
        return;
    case MODE_PROMPT:
        if (!is_code && (ch == '\n' || ch == '\r'))
            send_prompt(ui);
        else if (!is_code && ch == KEY_ESC)
            ui->mode = MODE_NORMAL;
        else if (!is_code && ch == '\t')
            focus_panel(ui, layout_next_panel(ui->focus, 1, have_downloads(ui)));
        else if (is_code && ch == KEY_BTAB)
            focus_panel(ui, layout_next_panel(ui->focus, -1, have_downloads(ui)));
        else if (is_code && (ch == KEY_F(1) || ch == KEY_F(10)))
            global_key(ui, is_code, ch);
        else
            edit_key(ui, &ui->prompt, is_code, ch);
        return;
    case MODE_NORMAL:
        break;
    }
    if (is_code && ch == KEY_RESIZE)
        return;
    const ui_panel_class *pc = panel_classes[ui->focus];
    /* a panel's own keys are arrows and letters the global set leaves free */
    int code = is_code ? (int)ch : (ch < 256 ? (int)ch : -1);
    if (pc->key && code >= 0 && !(code == ' ' || code == '\t') &&
        (pc->key(ui, code, ui->view) & UI_HANDLED))
        return;
    global_key(ui, is_code, ch);
}

/* ---- the loop ----------------------------------------------------------------------------- */

static void context_init(ui_context *ui, monitor *m, const ui_options *o)
{
    memset(ui, 0, sizeof *ui);
    ui->m = m;
    ui->opt = o;
    ui->view = monitor_view_new();
    lineedit_init(&ui->prompt);
    lineedit_init(&ui->mini_line);
    ui->gen_max_tokens = 128;
    ui->gen_temperature = 0.8;
    ui->gen_top_p = 0.95;
    ui->gen_layer = 0;
    ui->colour_tokens = 1;
}

static void context_free(ui_context *ui)
{
    monitor_view_delete(ui->view);
    lineedit_free(&ui->prompt);
    lineedit_free(&ui->mini_line);
    free(ui->norm_trend);
}

/* The answer to the prompt last sent: when the run refused it (too long for the model's
 * context, say), the prompt comes back into an empty line to be shortened, not retyped. */
static void watch_answer(ui_context *ui)
{
    const monitor_view *v = ui->view;
    for (int i = 0; ui->awaiting_answer && i < v->n_events; i++) {
        const stats_event *e = &v->events[i];
        if (strcmp(e->kind, "generate") != 0 || !(e->elapsed_s > ui->sent_after))
            continue;
        ui->awaiting_answer = 0;
        if (strncmp(e->text, "error: ", 7) == 0 && ui->prompt.len == 0) {
            lineedit_key_press(&ui->prompt, LE_HISTORY_UP);
            ui_notice(ui, "error (the prompt is back in the line): %s", e->text + 7);
        }
    }
}

static int take_snapshot(ui_context *ui)
{
    if (monitor_snapshot(ui->m, ui->view) != 0) {
        if (ui->have_view && ui->view->state != MONITOR_FAILED && !run_is_over(ui->view)) {
            ui->view->state = MONITOR_STOPPED;
            ui->view->gone = 1;
            ui_notice(ui, "the run is gone");
        }
        return -1;
    }
    ui->have_view = 1;
    watch_answer(ui);
    return 0;
}

/* Sends save and stop once on the first interrupt of a live run; a second one leaves. */
static void handle_interrupts(ui_context *ui, int *seen)
{
    int n = ui_process.interrupts;
    if (n == *seen)
        return;
    *seen = n;
    if (ui->opt->live && ui->mode != MODE_STOPPING && ui->have_view && !run_is_over(ui->view))
        begin_stop(ui);
    else
        ui->quit = 1;
}

int ui_terminal_check(const char *command)
{
    /* a view is of a run made elsewhere; a workbench's run can go without a screen */
    const char *instead = strcmp(command, "pesc view") == 0 ? "" : " (or: pesc train --headless)";
    if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO)) {
        fprintf(stderr, "%s: the workbench needs a terminal on standard input and output%s\n",
                command, instead);
        return 1;
    }
    /* before a run starts: one that cannot draw here must not begin and then fail */
    const char *term = getenv("TERM");
    int found = 0;
    if (!term || !*term) {
        fprintf(stderr, "%s: TERM is not set: set it to the terminal's type (TERM=xterm-256color)"
                "%s\n", command, instead);
        return 1;
    }
    if (setupterm(NULL, STDOUT_FILENO, &found) != OK || found != 1) {
        fprintf(stderr, "%s: cannot use the terminal '%s' (no terminfo entry): set TERM to the "
                "terminal's type (TERM=xterm-256color)%s\n", command, term, instead);
        return 1;
    }
    const char *cup = tigetstr("cup");   /* "dumb", say: a screen it cannot draw */
    int moves = cup && cup != (char *)-1;
    del_curterm(cur_term);
    if (!moves) {
        fprintf(stderr, "%s: the terminal '%s' cannot move the cursor: set TERM to the "
                "terminal's type (TERM=xterm-256color)%s\n", command, term, instead);
        return 1;
    }
    return 0;
}

int ui_run(monitor *m, const ui_options *o)
{
    const char *command = o->command ? o->command : "pesc";
    if (ui_terminal_check(command) != 0)
        return 1;
    setlocale(LC_ALL, "");
    ui_context ui;
    context_init(&ui, m, o);
    ui.byte_keys = MB_CUR_MAX == 1 && (strcmp(nl_langinfo(CODESET), "ANSI_X3.4-1968") == 0 ||
                                       strcmp(nl_langinfo(CODESET), "US-ASCII") == 0);
    ui_process.interrupts = 0;
    ui_process.have_termios = tcgetattr(STDIN_FILENO, &ui_process.termios) == 0;
    struct sigaction old_int, old_term, old_hup;
    install_signals(&old_int, &old_term, &old_hup);
    pesc_set_oom_hook(restore_terminal_hook);

    SCREEN *screen = newterm(NULL, stdout, stdin);
    if (!screen) {
        fprintf(stderr, "%s: cannot use the terminal '%s' (set TERM)\n", command,
                getenv("TERM") ? getenv("TERM") : "");
        context_free(&ui);
        return 1;
    }
    ui_process.curses_on = 1;
    cbreak();
    noecho();
    nonl();
    keypad(stdscr, TRUE);
    define_own_keys(&ui);
    define_usual_keys();
    set_paste_mode(1);
    wrap_suspend();
    set_escdelay(25);
    curs_set(0);
    theme_init(&ui.theme, o);
    refresh();

    double hz = o->refresh_hz > 0 && o->refresh_hz < 10 ? o->refresh_hz : 10;
    double interval = 1.0 / hz, next_snapshot = 0;
    int seen_interrupts = 0, dirty = 1;
    ui_windows_extra extra = {0};
    take_snapshot(&ui);
    update_layout(&ui, &extra, 1);
    while (!ui.quit) {
        handle_interrupts(&ui, &seen_interrupts);
        double now = pesc_now();
        if (now >= next_snapshot) {
            take_snapshot(&ui);
            next_snapshot = now + interval;
            dirty = 1;
            if (ui.mode == MODE_STOPPING && run_is_over(ui.view))
                ui.quit = 1;
        }
        if (ui.quit)
            break;
        if (dirty) {
            update_layout(&ui, &extra, 0);
            draw_all(&ui, &extra);
            dirty = 0;
        }
        int wait_ms = (int)((next_snapshot - pesc_now()) * 1000);
        wint_t ch;
        int r = read_key(&ui, wait_ms < 0 ? 0 : wait_ms > 100 ? 100 : wait_ms, &ch);
        if (r == ERR) {
            paste_idle(&ui);
            continue;
        }
        if (r == KEY_CODE_YES && ch == KEY_RESIZE)
            update_layout(&ui, &extra, 1);
        handle_key(&ui, r == KEY_CODE_YES, ch);
        dirty = 1;
    }

    delete_windows(&ui, &extra);
    unwrap_suspend();
    set_paste_mode(0);
    endwin();
    delscreen(screen);
    ui_process.curses_on = 0;
    pesc_set_oom_hook(NULL);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    sigaction(SIGHUP, &old_hup, NULL);
    int status = 0;
    if (ui.have_view && ui.view->state == MONITOR_FAILED) {
        fprintf(stderr, "%s: the run failed: %s\n", command,
                ui.view->message[0] ? ui.view->message : "no reason given");
        status = 1;
    }
    context_free(&ui);
    return status;
}
