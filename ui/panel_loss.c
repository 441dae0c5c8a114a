/* panel_loss — training loss over steps (raw and smoothed), the held-out loss of the
 * evaluations (--eval-data) joined by lines, and the aux loss under them, on braille charts
 * with axis labels and the current values; the recent window or the whole run. */
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

/* The evaluations (NaN between them) joined: the steps between two are filled in on the line
 * from one to the next, so the chart draws a curve through them. Returns the index of the
 * last evaluation, or -1. */
static int join_evaluations(double *x, int n)
{
    int last = -1;
    for (int i = 0; i < n; i++) {
        if (!isfinite(x[i]))
            continue;
        for (int j = last + 1; last >= 0 && j < i; j++)
            x[j] = x[last] + (x[i] - x[last]) * (j - last) / (i - last);
        last = i;
    }
    return last;
}

/* The label of v on an axis whose largest magnitude is top, so both ends read alike. */
static void axis_label(double v, double top, char *out, size_t cap)
{
    top = fabs(top);
    snprintf(out, cap, top >= 10000 || (top > 0 && top < 0.001) ? "%.1e" : top < 1 ? "%.4f" : top < 100 ? "%.2f" : "%.0f", v);
}

/* A chart with y labels at the top and bottom rows. */
static void draw_chart(ui_context *ui, WINDOW *w, int y, int x, int rows, int cols, const double *const *series,
                       int n_series, int n, const int *attrs, const char *name)
{
    if (rows < 1 || cols < 4)
        return;
    double lo = 0, hi = 0;
    int any = 0;
    for (int s = 0; s < n_series; s++) {
        double l, h;
        if (chart_range(series[s], n, &l, &h)) {
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
    chart_canvas_init(&c, rows, cols - axis_w, ui->theme.utf8);
    for (int s = 0; s < n_series; s++)
        chart_plot(&c, series[s], n, lo, hi, s);
    chart_draw(w, y, x + axis_w, &c, attrs);
    chart_canvas_free(&c);
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
    double *raw = xmalloc((size_t)total * 4 * sizeof(double));
    double *smoothed = raw + total, *aux = raw + 2 * total, *eval = raw + 3 * total;
    for (int i = 0; i < total; i++) {
        raw[i] = v->points[i].loss;
        aux[i] = v->points[i].aux_loss;
        eval[i] = v->points[i].eval_loss;
    }
    smooth(raw, total, smoothed);
    int last_eval = join_evaluations(eval, total);

    int a_raw = theme_attr(&ui->theme, PAIR_RAW, A_DIM), a_smooth = theme_attr(&ui->theme, PAIR_SMOOTH, A_BOLD) | (int)A_BOLD;
    int a_aux = theme_attr(&ui->theme, PAIR_AUX, A_NORMAL);
    int a_eval = theme_attr(&ui->theme, PAIR_EVAL, A_UNDERLINE) | (int)A_BOLD;
    /* the legend, with the current values: each name in its series' colour */
    char s[96];
    int x = 2;
    snprintf(s, sizeof s, "%.3f ", raw[total - 1]);
    x += draw_text(w, 1, x, width - x + 1, a_raw, "loss ");
    x += draw_text(w, 1, x, width - x + 1, (int)A_BOLD, s);
    snprintf(s, sizeof s, "%.3f ", smoothed[total - 1]);
    x += draw_text(w, 1, x, width - x + 1, a_smooth, "smoothed ");
    x += draw_text(w, 1, x, width - x + 1, (int)A_BOLD, s);
    if (last_eval >= 0) {
        snprintf(s, sizeof s, "%.3f ", eval[last_eval]);
        x += draw_text(w, 1, x, width - x + 1, a_eval, "eval ");
        x += draw_text(w, 1, x, width - x + 1, (int)A_BOLD, s);
    }
    snprintf(s, sizeof s, "%.4g", aux[total - 1]);
    x += draw_text(w, 1, x, width - x + 1, a_aux, "aux ");
    draw_text(w, 1, x, width - x + 1, (int)A_BOLD, s);

    int chart_rows = h - 4;      /* frame, legend, step axis */
    int aux_rows = chart_rows >= 8 ? chart_rows / 4 : 0;
    int main_rows = chart_rows - aux_rows;
    const double *main_series[3] = {raw + first, smoothed + first, eval + first};
    int main_attrs[3] = {a_raw, a_smooth, a_eval};
    draw_chart(ui, w, 2, 1, main_rows, width, main_series, last_eval >= 0 ? 3 : 2, n,
               main_attrs, "loss");
    if (aux_rows > 0) {
        const double *aux_series[1] = {aux + first};
        draw_chart(ui, w, 2 + main_rows, 1, aux_rows, width, aux_series, 1, n, &a_aux, "aux");
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
    free(raw);
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
