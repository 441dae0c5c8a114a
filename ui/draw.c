/* draw — the workbench's shared drawing helpers and number formats (see ui_internal.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>

#include "ui_internal.h"

int theme_attr(const ui_theme *t, int pair, int fallback)
{
    return t->colour ? (int)COLOR_PAIR(pair) : fallback;
}

size_t unshown_bytes(const char *s, size_t len)
{
    unsigned char lead = (unsigned char)s[0];
    size_t n = lead >= 0xf0 && lead < 0xf5 ? 4 : lead >= 0xe0 && lead < 0xf0 ? 3
             : lead >= 0xc2 && lead < 0xe0 ? 2 : 1;
    for (size_t i = 1; i < n; i++)
        if (i >= len || ((unsigned char)s[i] & 0xc0) != 0x80)
            return 1;
    return n;
}

/* Length in bytes and width in columns of the UTF-8 character at s (one the locale cannot
 * show counts as one column and is shown as '?'). */
static int next_char(const char *s, int *bytes)
{
    mbstate_t st;
    memset(&st, 0, sizeof st);
    wchar_t wc;
    size_t len = strlen(s), n = mbrtowc(&wc, s, len, &st);
    if (n == (size_t)-1 || n == (size_t)-2 || n == 0) {
        *bytes = (int)unshown_bytes(s, len);
        return -1;
    }
    *bytes = (int)n;
    int cols = wcwidth(wc);
    return cols < 0 ? -1 : cols;
}

int text_columns(const char *s)
{
    int cols = 0, bytes;
    while (*s) {
        int c = next_char(s, &bytes);
        cols += c < 0 ? 1 : c;
        s += bytes;
    }
    return cols;
}

int draw_text(WINDOW *w, int y, int x, int width, int attr, const char *s)
{
    if (width <= 0)
        return 0;
    int used = 0, bytes;
    wattron(w, attr);
    wmove(w, y, x);
    while (*s && used < width) {
        int c = next_char(s, &bytes);
        if (*s == '\n') {   /* a line break in one line of text (a pasted prompt): a mark */
            if (MB_CUR_MAX > 1)
                waddwstr(w, L"\u23ce");
            else
                waddch(w, '|' | A_REVERSE);
            used++;
        } else if (c < 0) {
            waddch(w, '?');
            used++;
        } else if (used + c <= width) {
            waddnstr(w, s, bytes);
            used += c;
        } else {
            break;
        }
        s += bytes;
    }
    wattroff(w, attr);
    return used;
}

int draw_text_words(ui_context *ui, WINDOW *w, int y, int x, int width, int attr, const char *s)
{
    if (text_columns(s) <= width)
        return draw_text(w, y, x, width, attr, s);
    /* the longest run of whole words that leaves a column for the mark */
    int used = 0, bytes, cut = 0;
    for (const char *p = s; *p; p += bytes) {
        int c = next_char(p, &bytes);
        c = c < 0 ? 1 : c;
        if (used + c > width - 1)
            break;
        if (*p == ' ')
            cut = (int)(p - s);
        used += c;
    }
    char text[1024];
    snprintf(text, sizeof text, "%.*s", cut, s);
    int drawn = draw_text(w, y, x, width - 1, attr, text);
    return drawn + draw_text(w, y, x + drawn, 1, attr, ui->theme.utf8 ? "\u2026" : "~");
}

int draw_text_wrapped(WINDOW *w, int y, int x, int rows, int attr, const char *s)
{
    int end = getmaxx(w) - 1, used = 0, line = 0, bytes;
    wattron(w, attr);
    wmove(w, y, x);
    while (*s) {
        int c = next_char(s, &bytes), odd = c < 0 || *s == '\n';
        c = odd ? 1 : c;
        if (x + used + c > end) {   /* on at the next row's second column */
            if (++line == rows)
                break;
            x = 1;
            used = 0;
            wmove(w, y + line, x);
        }
        if (odd)
            waddch(w, '?');
        else
            waddnstr(w, s, bytes);
        used += c;
        s += bytes;
    }
    wattroff(w, attr);
    return line + (line < rows);
}

int draw_frame(ui_context *ui, WINDOW *w, const char *title, const char *right, int focused)
{
    int h, wd;
    getmaxyx(w, h, wd);
    (void)h;
    int border = focused ? theme_attr(&ui->theme, PAIR_FOCUS, A_BOLD)
                         : theme_attr(&ui->theme, PAIR_BORDER, A_NORMAL);
    wattron(w, border);
    box(w, 0, 0);
    wattroff(w, border);
    char t[96];
    snprintf(t, sizeof t, " %s ", title);
    int title_attr = theme_attr(&ui->theme, PAIR_TITLE, A_BOLD) | (int)A_BOLD | (focused ? (int)A_REVERSE : 0);
    int used = draw_text(w, 0, 2, wd - 4, title_attr, t);
    if (right && *right) {
        char r[160];
        snprintf(r, sizeof r, " %s ", right);
        int rc = text_columns(r);
        if (2 + used + 1 + rc <= wd - 2)
            draw_text(w, 0, wd - 2 - rc, rc, theme_attr(&ui->theme, PAIR_DIM, A_NORMAL), r);
    }
    return wd - 2;
}

int draw_rows_window(ui_context *ui, WINDOW *w, int total, int shown, int selected,
                     const char *unit)
{
    if (shown <= 0 || total <= shown)
        return 0;
    int first = selected >= shown ? selected - shown + 1 : 0;
    if (first > total - shown)
        first = total - shown;
    char s[64];
    if (strcmp(unit, "L") == 0)
        snprintf(s, sizeof s, " L%d-%d of %d ", first, first + shown - 1, total);
    else
        snprintf(s, sizeof s, " %d-%d of %d %s ", first, first + shown - 1, total, unit);
    int h, wd, cols = text_columns(s);
    getmaxyx(w, h, wd);
    if (cols <= wd - 4)
        draw_text(w, h - 1, wd - 2 - cols, cols, theme_attr(&ui->theme, PAIR_DIM, A_NORMAL), s);
    return first;
}

static const char *const shades_utf8[] = {" ", "\u2591", "\u2592", "\u2593", "\u2588"};
static const char shades_ascii[] = " .:+#";

void draw_heat_cell(ui_context *ui, WINDOW *w, int y, int x, int width, double t, const char *label)
{
    if (width <= 0)
        return;
    if (!isfinite(t))
        t = 0;
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    if (ui->theme.heat_steps > 0) {
        int step = (int)(t * (ui->theme.heat_steps - 1) + 0.5);
        int attr = (int)COLOR_PAIR(PAIR_HEAT0 + step);
        wattron(w, attr);
        char cell[32];
        int lw = label ? (int)strlen(label) : 0;
        if (lw > width)
            lw = 0;
        int pad = (width - lw) / 2;
        snprintf(cell, sizeof cell, "%*s%s%*s", pad, "", lw ? label : "", width - pad - lw, "");
        mvwaddnstr(w, y, x, cell, width);
        wattroff(w, attr);
        return;
    }
    /* shades: the cell is filled with the shade; a label, when it fits, sits at the right */
    int step = (int)(t * 4 + 0.5);
    int lw = label ? (int)strlen(label) : 0;
    if (lw >= width)
        lw = 0;
    int gap = lw && width >= 4;   /* so neighbouring cells' numbers do not run together */
    wmove(w, y, x);
    for (int i = 0; i < width - lw - gap; i++) {
        if (ui->theme.utf8)
            waddstr(w, shades_utf8[step]);
        else
            waddch(w, (chtype)shades_ascii[step]);
    }
    if (lw)
        waddstr(w, label);
    if (gap)
        waddch(w, ' ');
}

void draw_heat_legend(ui_context *ui, WINDOW *w, int y, int x, int width, const char *lo, const char *hi)
{
    int need = (int)strlen(lo) + (int)strlen(hi) + 2 + 10;
    if (width < need)
        return;
    int dim = theme_attr(&ui->theme, PAIR_DIM, A_NORMAL);
    int at = x + draw_text(w, y, x, width, dim, lo);
    mvwaddch(w, y, at++, ' ');
    for (int i = 0; i < 10; i++)
        draw_heat_cell(ui, w, y, at++, 1, i / 9.0, NULL);
    mvwaddch(w, y, at++, ' ');
    draw_text(w, y, at, width - (at - x), dim, hi);
}

void draw_bar(ui_context *ui, WINDOW *w, int y, int x, int width, double t, int attr)
{
    static const char *const eighths[] = {"", "\u258f", "\u258e", "\u258d", "\u258c", "\u258b",
                                          "\u258a", "\u2589"};
    if (width <= 0)
        return;
    if (!isfinite(t))
        t = 0;
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    int units = (int)(t * width * 8 + 0.5);
    wattron(w, attr);
    wmove(w, y, x);
    for (int i = 0; i < width; i++) {
        int u = units - i * 8;
        if (u >= 8)
            ui->theme.utf8 ? waddstr(w, "\u2588") : waddch(w, '#');
        else if (u > 0 && ui->theme.utf8)
            waddstr(w, eighths[u]);
        else if (u >= 4)
            waddch(w, '#');
        else
            waddch(w, ui->theme.utf8 ? ' ' : '.');
    }
    wattroff(w, attr);
}

void draw_sparkline(ui_context *ui, WINDOW *w, int y, int x, int width, const double *v, int n,
                    double min_span, int attr)
{
    static const char *const ticks[] = {"\u2581", "\u2582", "\u2583", "\u2584", "\u2585",
                                        "\u2586", "\u2587", "\u2588"};
    static const char ascii[] = "_.-=^";
    if (width <= 0 || n <= 0)
        return;
    int first = n > width ? n - width : 0;
    double lo = INFINITY, hi = -INFINITY;
    for (int i = first; i < n; i++)
        if (isfinite(v[i])) {
            lo = v[i] < lo ? v[i] : lo;
            hi = v[i] > hi ? v[i] : hi;
        }
    if (hi - lo < min_span) {   /* a change smaller than that is drawn as small as it is */
        double mid = (hi + lo) / 2;
        lo = mid - min_span / 2;
        hi = mid + min_span / 2;
    }
    wattron(w, attr);
    wmove(w, y, x);
    for (int i = first; i < n; i++) {
        if (!isfinite(v[i])) {   /* a diverged value: marked, not scaled */
            waddch(w, '!');
            continue;
        }
        double t = hi > lo ? (v[i] - lo) / (hi - lo) : 0.5;
        t = !(t >= 0) ? 0 : t > 1 ? 1 : t;   /* NaN from an infinite span: the bottom */
        if (ui->theme.utf8)
            waddstr(w, ticks[(int)(t * 7 + 0.5)]);
        else
            waddch(w, (chtype)ascii[(int)(t * 4 + 0.5)]);
    }
    wattroff(w, attr);
}

void format_si(double v, char *out, size_t cap)
{
    static const char suffix[] = " kMGTP";
    int i = 0;
    double a = fabs(v);
    while (a >= 1000 && i < 5) {
        a /= 1000;
        v /= 1000;
        i++;
    }
    if (i == 0)
        snprintf(out, cap, a >= 100 || a == floor(a) ? "%.0f" : "%.1f", v);
    else
        snprintf(out, cap, a >= 100 ? "%.0f%c" : "%.1f%c", v, suffix[i]);
}

void format_bytes_short(double v, char *out, size_t cap)
{
    static const char suffix[] = "BKMGT";
    int i = 0;
    while (v >= 1024 && i < 4) {
        v /= 1024;
        i++;
    }
    snprintf(out, cap, i == 0 || v >= 100 ? "%.0f%c" : "%.1f%c", v, suffix[i]);
}

/* The terminal columns of text[a..b); a character wcwidth does not know takes one. */
static int wide_columns(const wchar_t *text, int a, int b)
{
    int cols = 0;
    for (int i = a; i < b; i++) {
        int c = wcwidth(text[i]);
        cols += c < 0 ? 1 : c;
    }
    return cols;
}

int draw_lineedit(ui_context *ui, WINDOW *w, int y, int x, int room, const lineedit *e)
{
    int first = 0, before = wide_columns(e->text, 0, e->cursor), n = 0, used = 0;
    for (; first < e->cursor && before > room - 1; first++)
        before -= wide_columns(e->text, first, first + 1);
    while (first + n < e->len) {
        int c = wide_columns(e->text, first + n, first + n + 1);
        if (used + c > room)
            break;
        used += c;
        n++;
    }
    wmove(w, y, x);
    for (int i = first; i < first + n; i++) {
        if (e->text[i] != L'\n' && wcwidth(e->text[i]) < 0)
            waddch(w, '?');   /* one the locale cannot show (the C locale: all but ASCII) */
        else if (e->text[i] != L'\n')
            waddnwstr(w, &e->text[i], 1);
        else if (ui->theme.utf8)
            waddwstr(w, L"\u23ce");
        else
            waddch(w, '|' | A_REVERSE);
    }
    return x + before;
}
