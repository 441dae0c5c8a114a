/* panel_console — talk to the model while it trains: a prompt line with editing and history,
 * the answer streaming in (each token coloured by the expert it was routed to at a chosen
 * layer, when asked), the sampling settings; the run's recent events while nothing has been
 * generated, and under an answer those that came after it (a save, an eval, an error). */
#include <stdio.h>
#include <string.h>
#include <wchar.h>

#include "ui_internal.h"

/* The character at text (len bytes left) in *wc, '?' for one the locale cannot show; returns
 * its bytes. */
static size_t next_char(const char *text, size_t len, mbstate_t *st, wchar_t *wc)
{
    size_t n = mbrtowc(wc, text, len, st);
    if (n == (size_t)-1 || n == (size_t)-2 || n == 0) {
        memset(st, 0, sizeof *st);
        *wc = L'?';
        return unshown_bytes(text, len);
    }
    return n;
}

/* The columns of the word at text (up to a space, a line break or the end). */
static int word_columns(const char *text, size_t len)
{
    mbstate_t st;
    memset(&st, 0, sizeof st);
    int cols = 0;
    for (size_t i = 0; i < len && text[i] != ' ' && text[i] != '\n';) {
        wchar_t wc;
        size_t n = next_char(text + i, len - i, &st, &wc);
        int cw = wcwidth(wc);
        cols += cw > 0 ? cw : 0;
        i += n;
    }
    return cols;
}

/* Lays text out in `width` columns from (line, col), a word that would not fit moved to the
 * next line whole (one longer than a line is cut where the line ends), a space at a break
 * left out; draw: only lines in [first, first + rows) are drawn, at y0 + line - first.
 * colours: per byte the expert, 255 none; NULL for attr. Returns the line of the end. */
static int flow(ui_context *ui, WINDOW *w, const char *text, const unsigned char *colours, int attr,
                int width, int line, int *col, int first, int rows, int y0, int x0)
{
    mbstate_t st;
    memset(&st, 0, sizeof st);
    size_t len = strlen(text);
    for (size_t i = 0; i < len;) {
        wchar_t wc;
        size_t n = next_char(text + i, len - i, &st, &wc);
        if (wc == L'\n') {
            line++;
            *col = 0;
            i += n;
            continue;
        }
        int cw = wcwidth(wc);
        if (cw <= 0) {
            i += n;
            continue;
        }
        if (wc == L' ' && *col + cw > width) {   /* the break itself */
            line++;
            *col = 0;
            i += n;
            continue;
        }
        if (wc != L' ' && i > 0 && text[i - 1] == ' ' && *col > 0) {   /* a word starts */
            int word = word_columns(text + i, len - i);
            if (*col + word > width && word <= width) {
                line++;
                *col = 0;
            }
        }
        if (*col + cw > width) {
            line++;
            *col = 0;
        }
        if (w && line >= first && line < first + rows) {
            int a = attr;
            if (colours && ui->colour_tokens && ui->theme.colour && colours[i] != 255)
                a = (int)COLOR_PAIR(PAIR_EXPERT0 + colours[i] % 8);
            wattron(w, a);
            if (wc == L'?' && text[i] != '?')   /* one the locale cannot show, whole */
                mvwaddch(w, y0 + line - first, x0 + *col, '?');
            else
                mvwaddnstr(w, y0 + line - first, x0 + *col, text + i, (int)n);
            wattroff(w, a);
        }
        *col += cw;
        i += n;
    }
    return line;
}

/* The prompt and the answer, scrolled so the newest line is at the bottom. */
static void draw_answer(ui_context *ui, WINDOW *w, const monitor_view *v, int y0, int rows, int width)
{
    int dim = theme_attr(&ui->theme, PAIR_DIM, A_NORMAL);
    char prompt[600];
    snprintf(prompt, sizeof prompt, "%s %s\n", ui->theme.utf8 ? "\u203a" : ">", v->prompt);
    for (int pass = 0, total = 0; pass < 2; pass++) {
        int first = total > rows ? total - rows : 0;
        WINDOW *target = pass ? w : NULL;
        int col = 0;
        int line = v->prompt[0] ? flow(ui, target, prompt, NULL, dim, width, 0, &col, first, rows, y0, 2) : 0;
        if (v->generated[0] || v->generating) {
            line = flow(ui, target, v->generated, v->token_expert, (int)A_BOLD, width, line, &col, first,
                        rows, y0, 2);
        } else {
            /* nothing came: the run's word on it (an error, usually) is its last generate event */
            for (int i = v->n_events - 1; i >= 0; i--)
                if (strcmp(v->events[i].kind, "generate") == 0) {
                    line = flow(ui, target, v->events[i].text, NULL,
                                theme_attr(&ui->theme, PAIR_WARN, A_NORMAL), width, line, &col, first,
                                rows, y0, 2);
                    break;
                }
        }
        total = line + 1;
    }
}

/* An event's "step N     kind     " and the column its text starts at. */
static int event_prefix(const stats_event *e, char *step, size_t n_step, char *kind, size_t n_kind)
{
    snprintf(step, n_step, "step %-6ld ", e->step);
    snprintf(kind, n_kind, "%-9s", e->kind);
    return 2 + text_columns(step) + text_columns(kind);
}

/* The rows an event takes: its text wraps under itself, so that a long one (the memory
 * estimate, an error) is read whole. */
static int event_rows(ui_context *ui, const stats_event *e, int width)
{
    char step[32], kind[32];
    int x = event_prefix(e, step, sizeof step, kind, sizeof kind), col = 0;
    if (width + 2 - x < 8)
        return 1;
    return flow(ui, NULL, e->text, NULL, 0, width + 2 - x, 0, &col, 0, 0, 0, 0) + 1;
}

/* The newest events that fit, oldest first, the newest `back` left out (the events view
 * scrolled back); the newest shown is drawn even when it does not fit. */
static void draw_events_from(ui_context *ui, WINDOW *w, const monitor_view *v, int back, int y0,
                             int rows, int width)
{
    int dim = theme_attr(&ui->theme, PAIR_DIM, A_NORMAL);
    if (v->n_events == 0) {
        /* a run that failed before it began (a download, say) has no model to ask */
        draw_text(w, y0, 2, width, dim, v->state == MONITOR_FAILED
                  ? "the run failed before it began (why: the status line); q leaves"
                  : "no events yet; press / to ask the model something");
        return;
    }
    int end = v->n_events - back, first = end, used = 0;
    while (first > 0) {
        int need = event_rows(ui, &v->events[first - 1], width);
        if (used > 0 && used + need > rows)
            break;
        used += need;
        first--;
    }
    for (int i = first, y = y0; i < end && y < y0 + rows; i++) {
        const stats_event *e = &v->events[i];
        char step[32], kind[32];
        int tx = event_prefix(e, step, sizeof step, kind, sizeof kind);
        int x = 2 + draw_text(w, y, 2, width, dim, step);
        int pair = strcmp(e->kind, "error") == 0 || strcmp(e->kind, "nan-skip") == 0 ? PAIR_BAD
                 : strcmp(e->kind, "pause") == 0 || strcmp(e->kind, "lr") == 0 ? PAIR_WARN : PAIR_GOOD;
        draw_text(w, y, x, width + 2 - x, theme_attr(&ui->theme, pair, A_BOLD), kind);
        if (width + 2 - tx < 8) {   /* too narrow to wrap: cut */
            draw_text(w, y, tx, width + 2 - tx, 0, e->text);
            y++;
            continue;
        }
        int col = 0;
        y += flow(ui, w, e->text, NULL, 0, width + 2 - tx, 0, &col, 0, y0 + rows - y, y, tx) + 1;
    }
}

/* Scrolled back no further than where the oldest event is at the top of a full panel: Up past
 * it would only leave blank rows under it (and take as many Downs to come back). */
static int clamp_back(ui_context *ui, const monitor_view *v, int back, int rows, int width)
{
    int fit = 0, used = 0;
    while (fit < v->n_events && used + event_rows(ui, &v->events[fit], width) <= rows)
        used += event_rows(ui, &v->events[fit++], width);
    int most = v->n_events - (fit > 0 ? fit : 1);
    most = most < 0 ? 0 : most;
    return back < 0 ? 0 : back > most ? most : back;
}

static void draw_events(ui_context *ui, WINDOW *w, const monitor_view *v, int y0, int rows, int width)
{
    draw_events_from(ui, w, v, 0, y0, rows, width);
}

static void console_draw(ui_context *ui, WINDOW *w, const monitor_view *v)
{
    int h = getmaxy(w);
    char right[128];
    int L = v->last ? v->last->shape.n_layers : v->run.shape.n_layers;
    if (ui->gen_layer >= L && L > 0)
        ui->gen_layer = L - 1;
    /* without colours (NO_COLOR, --no-color, a monochrome terminal) tokens have none to get */
    int colours = ui->colour_tokens && ui->theme.colour;
    snprintf(right, sizeof right, "temp %.2g  top-p %.2g  max %d  colours %s", ui->gen_temperature,
             ui->gen_top_p, ui->gen_max_tokens,
             !ui->theme.colour ? "none" : colours ? "on" : "off");
    if (colours)
        snprintf(right + strlen(right), sizeof right - strlen(right), " at L%d", ui->gen_layer);
    int focused = ui->focus == PANEL_CONSOLE;
    int rows = h - 3;
    if (ui->console_events)   /* draw_frame's inner width, less the events' margins */
        ui->console_back = clamp_back(ui, v, ui->console_back, rows, getmaxx(w) - 4);
    char title[64];
    if (ui->console_events)
        snprintf(title, sizeof title, "Prompt: events%s", ui->console_back ? ", scrolled back" : "");
    else
        snprintf(title, sizeof title, "%s", v->generating ? "Prompt: generating" : "Prompt");
    int width = draw_frame(ui, w, title, right, focused);
    if (rows > 0) {
        if (ui->console_events) {   /* the run's recent events, whatever was asked since */
            draw_events_from(ui, w, v, ui->console_back, 1, rows, width - 2);
        } else if (v->prompt[0] || v->generated[0]) {
            /* the events after the answer's own (its generate event ends it), up to a third of
             * the rows, under it past a blank line (none in four rows or fewer: the answer's
             * lines come first) */
            int later = 0;
            for (int i = v->n_events - 1; i >= 0 && strcmp(v->events[i].kind, "generate") != 0; i--)
                later++;
            int ev_rows = v->generating ? 0 : later < rows / 3 ? later : rows / 3;
            int gap = ev_rows && rows - ev_rows >= 4;   /* a blank line where rows allow */
            draw_answer(ui, w, v, 1, rows - ev_rows - gap, width - 2);
            if (ev_rows)
                draw_events(ui, w, v, 1 + rows - ev_rows, ev_rows, width - 2);
        } else {
            draw_events(ui, w, v, 1, rows, width - 2);
        }
    }
    /* the input line */
    int y = h - 2;
    int dim = theme_attr(&ui->theme, PAIR_DIM, A_NORMAL);
    int editing = ui->mode == MODE_PROMPT;
    int x = 1 + draw_text(w, y, 1, 2, editing ? theme_attr(&ui->theme, PAIR_FOCUS, A_BOLD) | (int)A_BOLD : dim,
                          ui->theme.utf8 ? "\u276f " : "> ");
    lineedit *e = &ui->prompt;
    int room = width - 2;
    if (!editing && e->len == 0) {
        draw_text(w, y, x, room, dim, ui->opt->read_only ? "read-only: pesc view --attach SOCKET to talk to the run"
                                                         : "press / to type a prompt, Enter sends it");
        return;
    }
    int cursor_x = draw_lineedit(ui, w, y, x, room, e);
    if (editing) {
        ui->cursor_win = w;
        ui->cursor_y = y;
        ui->cursor_x = cursor_x;
    }
}

static int console_key(ui_context *ui, int key, const monitor_view *v)
{
    int L = v && v->last ? v->last->shape.n_layers : 1;
    switch (key) {
    case '\n': case '\r': case KEY_ENTER: ui->mode = MODE_PROMPT; return UI_HANDLED;
    case 't': ui->gen_temperature = ui->gen_temperature > 0.1 ? ui->gen_temperature - 0.1 : 0; return UI_HANDLED;
    case 'T': ui->gen_temperature = ui->gen_temperature < 1.9 ? ui->gen_temperature + 0.1 : 2; return UI_HANDLED;
    case 'o': ui->gen_top_p = ui->gen_top_p > 0.1 ? ui->gen_top_p - 0.05 : 0.05; return UI_HANDLED;
    case 'O': ui->gen_top_p = ui->gen_top_p < 0.95 ? ui->gen_top_p + 0.05 : 1; return UI_HANDLED;
    case 'm': ui->gen_max_tokens = ui->gen_max_tokens > 8 ? ui->gen_max_tokens / 2 : 8; return UI_HANDLED;
    case 'M': ui->gen_max_tokens = ui->gen_max_tokens < 4096 ? ui->gen_max_tokens * 2 : 4096; return UI_HANDLED;
    case '<': case KEY_LEFT: if (ui->gen_layer > 0) ui->gen_layer--; return UI_HANDLED;
    case '>': case KEY_RIGHT: if (ui->gen_layer + 1 < L) ui->gen_layer++; return UI_HANDLED;
    case 'c': ui->colour_tokens = !ui->colour_tokens; return UI_HANDLED;
    case 'v':   /* the answer and the events after it / every recent event */
        ui->console_events = !ui->console_events;
        ui->console_back = 0;
        return UI_HANDLED;
    case KEY_UP: case KEY_PPAGE:   /* the events view: further back, one or a few */
        if (!ui->console_events)
            return UI_IGNORED;
        ui->console_back += key == KEY_UP ? 1 : 5;   /* console_draw keeps it in range */
        return UI_HANDLED;
    case KEY_DOWN: case KEY_NPAGE:
        if (!ui->console_events)
            return UI_IGNORED;
        ui->console_back -= key == KEY_DOWN ? 1 : 5;
        ui->console_back = ui->console_back < 0 ? 0 : ui->console_back;
        return UI_HANDLED;
    default: return UI_IGNORED;
    }
}

const ui_panel_class console_panel_class = {
    .title = "Prompt",
    .hint = "Enter type  tT oO mM <> c  v events",
    .draw = console_draw,
    .key = console_key,
};

/* Downloads: one row per transfer from the view (running ones first, see launcher.h):
 *   name  [#######.....]  42%  12.3M/29.0M  1.2M/s  0:14
 * and, for a transfer that has ended or waits for a retry, its state or message instead of
 * the numbers. */
static void download_row(ui_context *ui, WINDOW *w, int y, int width, const fetch_progress *p)
{
    int dim = theme_attr(&ui->theme, PAIR_DIM, A_NORMAL);
    int name_w = width / 3 < 12 ? 12 : width / 3;
    int bar_w = width - name_w - 40 >= 24 ? 24 : width - name_w - 40;
    int x = 2;
    draw_text(w, y, x, name_w, A_BOLD, p->name);
    x += name_w + 1;
    double t = p->total > 0 ? (double)p->done / (double)p->total : 0;
    if (bar_w >= 6) {
        int pair = p->state == FETCH_FAILED ? PAIR_BAD : fetch_state_final(p->state) ? PAIR_GOOD
                                                                                     : PAIR_RUN;
        draw_bar(ui, w, y, x, bar_w, fetch_state_final(p->state) && p->state != FETCH_FAILED ? 1 : t,
                 theme_attr(&ui->theme, pair, A_NORMAL));
        x += bar_w + 1;
    }
    char done[32], total[32], rate[32], eta[32], text[320];
    format_bytes_short((double)p->done, done, sizeof done);
    format_bytes_short((double)p->total, total, sizeof total);
    format_bytes_short(p->rate, rate, sizeof rate);
    pesc_format_duration(p->eta_s, eta, sizeof eta);
    int attr = dim;
    if (p->state == FETCH_RUNNING) {
        if (p->total > 0)
            snprintf(text, sizeof text, "%3.0f%%  %s/%s  %s/s  %s", 100 * t, done, total, rate, eta);
        else
            snprintf(text, sizeof text, "%s  %s/s", done, rate);
        attr = 0;
    } else if (p->state == FETCH_FAILED || p->state == FETCH_RETRY_WAIT) {
        snprintf(text, sizeof text, "%s", p->message);
        attr = theme_attr(&ui->theme, p->state == FETCH_FAILED ? PAIR_BAD : PAIR_WARN, A_BOLD);
    } else if (p->state == FETCH_DONE) {
        snprintf(text, sizeof text, "done  %s in %.1f s", done, p->elapsed_s);
    } else if (p->state == FETCH_CACHED) {
        snprintf(text, sizeof text, "in the cache  %s", done);
    } else {
        snprintf(text, sizeof text, "%s", fetch_state_name(p->state));
    }
    draw_text(w, y, x, width + 1 - x, attr, text);
}

static void downloads_draw(ui_context *ui, WINDOW *w, const monitor_view *v)
{
    int running = 0;
    for (int i = 0; i < v->n_downloads; i++)
        running += !fetch_state_final(v->downloads[i].state);
    char right[48] = "";
    if (v->n_downloads > 0)
        snprintf(right, sizeof right, "%d running", running);
    int width = draw_frame(ui, w, "Downloads", right, ui->focus == PANEL_DOWNLOADS);
    int h = getmaxy(w) - 2;
    if (v->n_downloads == 0)
        draw_text(w, 1, 2, width - 2, theme_attr(&ui->theme, PAIR_DIM, A_NORMAL), "no downloads");
    for (int i = 0; i < v->n_downloads && i < h; i++)
        download_row(ui, w, 1 + i, width - 2, &v->downloads[i]);
}

const ui_panel_class downloads_panel_class = {
    .title = "Downloads",
    .hint = "",
    .draw = downloads_draw,
    .key = NULL,
};
