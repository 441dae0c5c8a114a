/* panel_loss — training loss over steps (raw and smoothed), the held-out loss of the
 * evaluations (--eval-data) joined by lines (and the latest accuracies of --eval-generate and
 * --eval-choices in the legend), and the aux loss under them, on braille charts
 * with axis labels and the current values; the recent window or the whole run. Runs compared
 * with it (pesc view RUN OTHER...) add their smoothed and held-out losses, lined up by step,
 * each in its own colour and named on a legend row of their own. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ui_internal.h"
#include "util.h"

#define SMOOTHING 0.9            /* exponential moving average weight of the past */

/* Debiased exponential moving average, as TensorBoard draws it. */
static void smooth(const double *x, int n, double *out)
{
    double avg = 0, weight = 0;
    for (int i = 0; i < n; i++) {
        if (!isfinite(x[i])) {
            out[i] = NAN;
            continue;
        }
        avg = SMOOTHING * avg + (1 - SMOOTHING) * x[i];
        weight = SMOOTHING * weight + (1 - SMOOTHING);
        out[i] = avg / weight;
    }
}

/* "name value " on the legend row at *x, in the name's colour and the value bold, when it fits
 * whole before the frame (column width + 1) */
static int legend_item(WINDOW *w, int *x, int *row, int width, int attr, const char *name,
                       const char *value)
{
    int need = (int)(strlen(name) + 1 + strlen(value));
    if (*x + need > width + 1 && *row == 1) {   /* the rest on a second row */
        *row = 2;
        *x = 2;
    }
    if (*x + need > width + 1)
        return 0;
    int at = *x + draw_text(w, *row, *x, need, attr, name) + 1;
    *x = at + draw_text(w, *row, at, need, (int)A_BOLD, value) + 1;
    return 1;
}

#define ACCURACY_TREND 8         /* evaluations an accuracy's sparkline shows */

/* An accuracy's latest value and, after it, a sparkline of its last evaluations (their own
 * range, as the norms panel draws trends), when it fits: --eval-generate's answers or
 * --eval-choices' accuracy. */
static void legend_accuracy(ui_context *ui, WINDOW *w, int *x, int *row, int width, int attr,
                            const monitor_point *p, int total, int answers)
{
    double t[ACCURACY_TREND];
    int n = 0;
    for (int i = total - 1; i >= 0 && n < ACCURACY_TREND; i--) {
        float value = answers ? p[i].eval_answers : p[i].eval_accuracy;
        if (isfinite(value))
            t[n++] = value;
    }
    if (n == 0)
        return;
    for (int i = 0; i < n / 2; i++) {   /* oldest first */
        double swap = t[i];
        t[i] = t[n - 1 - i];
        t[n - 1 - i] = swap;
    }
    char s[32];
    snprintf(s, sizeof s, "%.3f", t[n - 1]);
    if (legend_item(w, x, row, width, attr, answers ? "answers" : "accuracy", s) && n >= 2 &&
        *x + n <= width + 1) {
        draw_sparkline(ui, w, *row, *x, n, t, n, 0.05, attr);   /* 5 points of 100 */
        *x += n + 1;
    }
}

/* One run's curves by step: the loss raw and smoothed, the aux loss, and the evaluations
 * alone, so that the chart joins them by lines from one to the next. */
typedef struct run_curves {
    int n, n_eval;
    double *step, *raw, *smoothed, *aux;   /* (n) */
    double *eval_step, *eval;              /* (n_eval) */
} run_curves;

static void run_curves_init(run_curves *c, const monitor_point *p, int n)
{
    double *all = xmalloc((size_t)(n > 0 ? n : 1) * 6 * sizeof(double));   /* one block */
    *c = (run_curves){.n = n, .step = all, .raw = all + n, .smoothed = all + 2 * n,
                      .aux = all + 3 * n, .eval_step = all + 4 * n, .eval = all + 5 * n};
    for (int i = 0; i < n; i++) {
        c->step[i] = (double)p[i].step;
        c->raw[i] = p[i].loss;
        c->aux[i] = p[i].aux_loss;
        if (isfinite(p[i].eval_loss)) {
            c->eval_step[c->n_eval] = c->step[i];
            c->eval[c->n_eval++] = p[i].eval_loss;
        }
    }
    smooth(c->raw, n, c->smoothed);
}

static void run_curves_free(run_curves *c)
{
    free(c->step);
}

/* One line on a chart: values by step. */
typedef struct loss_series {
    const double *step, *value;
    int n, attr;
} loss_series;

#define LOSS_SERIES_MAX (3 + 2 * MONITOR_COMPARED)

/* The label of v on an axis whose largest magnitude is top, so both ends read alike. */
static void axis_label(double v, double top, char *out, size_t cap)
{
    top = fabs(top);
    snprintf(out, cap, top >= 10000 || (top > 0 && top < 0.001) ? "%.1e" : top < 1 ? "%.4f" : top < 100 ? "%.2f" : "%.0f", v);
}

/* A chart of the steps from x_lo to x_hi, y labels at the top and bottom rows; the y range
 * covers the points of every series in those steps. */
static void draw_chart(ui_context *ui, WINDOW *w, int y, int x, int rows, int cols,
                       const loss_series *series, int n_series, double x_lo, double x_hi,
                       const char *name)
{
    if (rows < 1 || cols < 4)
        return;
    double lo = 0, hi = 0;
    int any = 0;
    for (int s = 0; s < n_series; s++) {
        const loss_series *ls = &series[s];
        int a = 0, b = ls->n;   /* the points in the steps shown (steps ascend) */
        while (a < b && ls->step[a] < x_lo)
            a++;
        while (b > a && ls->step[b - 1] > x_hi)
            b--;
        double l, h;
        if (chart_range(ls->value + a, b - a, &l, &h)) {
            lo = any && lo < l ? lo : l;
            hi = any && hi > h ? hi : h;
            any = 1;
        }
    }
    int dim = theme_attr(&ui->theme, PAIR_DIM, A_NORMAL);
    int axis_w = 8;
    char label[32];
    if (any) {
        double top = fabs(hi) > fabs(lo) ? hi : lo;
        axis_label(hi, top, label, sizeof label);
        draw_text(w, y, x, axis_w - 1, dim, label);
        if (rows >= 2) {
            axis_label(lo, top, label, sizeof label);
            draw_text(w, y + rows - 1, x, axis_w - 1, dim, label);
        }
    }
    if (rows >= 3 && name)
        draw_text(w, y + rows / 2, x, axis_w - 1, dim, name);
    for (int r = 0; r < rows; r++)
        draw_text(w, y + r, x + axis_w - 1, 1, dim, ui->theme.utf8 ? "\u2502" : "|");
    if (!any)
        return;
    chart_canvas c;
    int attrs[LOSS_SERIES_MAX];
    chart_canvas_init(&c, rows, cols - axis_w, ui->theme.utf8);
    for (int s = 0; s < n_series; s++) {
        chart_plot_xy(&c, series[s].step, series[s].value, series[s].n, x_lo, x_hi, lo, hi, s);
        attrs[s] = series[s].attr;
    }
    chart_draw(w, y, x + axis_w, &c, attrs);
    chart_canvas_free(&c);
}

/* A compared run's colour; without colours, an attribute none of the first run's lines has. */
static int compared_attr(ui_context *ui, int i)
{
    static const int plain[MONITOR_COMPARED] = {A_REVERSE, A_REVERSE | A_DIM,
                                                A_UNDERLINE | A_DIM, A_REVERSE | A_UNDERLINE};
    return theme_attr(&ui->theme, PAIR_COMPARE0 + i, plain[i]);
}

/* name in at most room columns: without its .jsonl (also when it fits, with strip: the
 * names side by side read alike), then with its middle cut out, so that both the start and
 * the end of names that differ in either still show. */
static void shorten_name(const char *name, int room, int utf8, int strip, char *out, size_t cap)
{
    snprintf(out, cap, "%s", name);
    size_t len = strlen(out);
    if (text_columns(out) <= room && !strip)
        return;
    if (len > 6 && strcmp(out + len - 6, ".jsonl") == 0)
        out[len -= 6] = '\0';
    const char *cut = utf8 ? "\u2026" : "~";
    char whole[sizeof ((monitor_series *)0)->name];
    snprintf(whole, sizeof whole, "%s", out);
    for (size_t keep = len; keep > 0 && text_columns(out) > room; keep--) {
        size_t head = (keep + 1) / 2, tail = len - (keep - head);
        while (head > 0 && (whole[head] & 0xC0) == 0x80)   /* whole characters only */
            head--;
        while (tail < len && (whole[tail] & 0xC0) == 0x80)
            tail++;
        snprintf(out, cap, "%.*s%s%s", (int)head, whole, cut, whole + tail);
    }
    if (room < 1 || text_columns(out) > room)
        out[0] = '\0';
}

/* The compared runs' row of the legend: a mark in each run's colour, its shortened name and
 * its latest smoothed loss. */
static void draw_compared_legend(ui_context *ui, WINDOW *w, int y, int width,
                                 const monitor_view *v, const run_curves *curves)
{
    int room = (width - 1) / v->n_compared, x = 2, strip = 0;
    char value[MONITOR_COMPARED][32];
    for (int i = 0; i < v->n_compared; i++) {
        const run_curves *c = &curves[i];
        if (c->n > 0)
            snprintf(value[i], sizeof value[i], " %.3f", c->smoothed[c->n - 1]);
        else
            snprintf(value[i], sizeof value[i], " --");
        /* one name without room for its .jsonl: none keeps it */
        strip |= text_columns(v->compared[i].name) > room - 2 - (int)strlen(value[i]) - 2;
    }
    for (int i = 0; i < v->n_compared; i++) {
        char name[sizeof v->compared[i].name];
        int name_room = room - 2 - (int)strlen(value[i]) - 2;   /* mark, value, gap */
        shorten_name(v->compared[i].name, name_room, ui->theme.utf8, strip, name, sizeof name);
        int at = x;
        const char *mark = ui->theme.utf8 ? "\u2501" : "=";
        x += draw_text(w, y, x, width - x + 1, compared_attr(ui, i), mark);
        x += draw_text(w, y, x, width - x + 1, 0, " ");
        x += draw_text(w, y, x, width - x + 1, 0, name);
        x += draw_text(w, y, x, width - x + 1, (int)A_BOLD, value[i]);
        x = at + room > x + 2 ? at + room : x + 2;
    }
}

static void loss_draw(ui_context *ui, WINDOW *w, const monitor_view *v)
{
    int h = getmaxy(w);
    char right[64] = "";
    int total = v->n_points;
    int width = getmaxx(w) - 2;
    int dots = (width - 8) * (ui->theme.utf8 ? 2 : 1);
    int n = ui->loss_all || total <= dots ? total : dots;
    int first = total - n;
    if (total > 0)
        snprintf(right, sizeof right, "%s, z zoom", ui->loss_all ? "whole run" : "recent");
    draw_frame(ui, w, "Loss", right, ui->focus == PANEL_LOSS);
    int dim = theme_attr(&ui->theme, PAIR_DIM, A_NORMAL);
    if (total == 0) {
        draw_text(w, 2, 2, width - 2, dim, "waiting for the first step");
        return;
    }
    run_curves run, compared[MONITOR_COMPARED];
    run_curves_init(&run, v->points, total);
    for (int i = 0; i < v->n_compared; i++)
        run_curves_init(&compared[i], v->compared[i].points, v->compared[i].n_points);

    int a_raw = theme_attr(&ui->theme, PAIR_RAW, A_DIM), a_smooth = theme_attr(&ui->theme, PAIR_SMOOTH, A_BOLD) | (int)A_BOLD;
    int a_aux = theme_attr(&ui->theme, PAIR_AUX, A_NORMAL);
    int a_eval = theme_attr(&ui->theme, PAIR_EVAL, A_UNDERLINE) | (int)A_BOLD;
    /* the legend, with the current values: each name in its series' colour, an item shown whole
     * or not at all (a name without its value says nothing) */
    char s[96];
    int x = 2, legend_rows = 1;
    snprintf(s, sizeof s, "%.3f", run.raw[total - 1]);
    legend_item(w, &x, &legend_rows, width, a_raw, "loss", s);
    snprintf(s, sizeof s, "%.3f", run.smoothed[total - 1]);
    legend_item(w, &x, &legend_rows, width, a_smooth, "smoothed", s);
    if (run.n_eval > 0) {
        snprintf(s, sizeof s, "%.3f", run.eval[run.n_eval - 1]);
        legend_item(w, &x, &legend_rows, width, a_eval, "eval", s);
    }
    /* the --eval-generate and --eval-choices accuracies: numbers and sparklines, not lines
     * (they are not a loss's scale), before the aux loss, which has a chart of its own */
    legend_accuracy(ui, w, &x, &legend_rows, width, a_eval, v->points, total, 1);
    legend_accuracy(ui, w, &x, &legend_rows, width, a_eval, v->points, total, 0);
    snprintf(s, sizeof s, "%.4g", run.aux[total - 1]);
    legend_item(w, &x, &legend_rows, width, a_aux, "aux", s);
    if (v->n_compared > 0)
        draw_compared_legend(ui, w, 1 + legend_rows++, width, v, compared);

    /* the zoom is the followed run's steps; compared runs are drawn under its lines */
    double x_lo = run.step[first], x_hi = run.step[total - 1];
    loss_series main_series[LOSS_SERIES_MAX];
    int n_main = 0;
    for (int i = 0; i < v->n_compared; i++) {
        const run_curves *c = &compared[i];
        int a = compared_attr(ui, i);
        main_series[n_main++] = (loss_series){c->eval_step, c->eval, c->n_eval, a};
        main_series[n_main++] = (loss_series){c->step, c->smoothed, c->n, a};
    }
    main_series[n_main++] = (loss_series){run.step, run.raw, total, a_raw};
    main_series[n_main++] = (loss_series){run.step, run.smoothed, total, a_smooth};
    main_series[n_main++] = (loss_series){run.eval_step, run.eval, run.n_eval, a_eval};
    int chart_rows = h - 3 - legend_rows;   /* frame, legend, step axis */
    int aux_rows = chart_rows >= 8 ? chart_rows / 4 : 0;
    int main_rows = chart_rows - aux_rows;
    draw_chart(ui, w, 1 + legend_rows, 1, main_rows, width, main_series, n_main, x_lo, x_hi,
               "loss");
    if (aux_rows > 0) {
        loss_series aux = {run.step, run.aux, total, a_aux};
        draw_chart(ui, w, 1 + legend_rows + main_rows, 1, aux_rows, width, &aux, 1, x_lo, x_hi,
                   "aux");
    }
    /* the step axis */
    if (h >= 5) {
        snprintf(s, sizeof s, "step %ld", v->points[first].step);
        draw_text(w, h - 2, 9, width - 8, dim, s);
        snprintf(s, sizeof s, "%ld", v->points[total - 1].step);
        int sw = (int)strlen(s);
        if (width - 9 > sw + 14)
            draw_text(w, h - 2, width + 1 - sw, sw, dim, s);
    }
    run_curves_free(&run);
    for (int i = 0; i < v->n_compared; i++)
        run_curves_free(&compared[i]);
}

static int loss_key(ui_context *ui, int key, const monitor_view *v)
{
    (void)v;
    if (key == 'z' || key == '\n' || key == '\r' || key == KEY_ENTER) {
        ui->loss_all = !ui->loss_all;
        return UI_HANDLED;
    }
    return UI_IGNORED;
}

const ui_panel_class loss_panel_class = {
    .title = "Loss",
    .hint = "z recent/all",
    .draw = loss_draw,
    .key = loss_key,
};
