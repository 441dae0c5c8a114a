/* panel_norms — how the adapters grow: per layer x expert Frobenius norms of U or D as a
 * heatmap, or per layer bars, each layer with the trend of its mean norm since the UI started
 * watching (the snapshot holds only the latest norms, so the trend is kept here). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ui_internal.h"
#include "util.h"

static const char *const mode_names[] = {"|U| by expert", "|D| by expert", "mean |U| per layer"};

static double mean_row(const float *x, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++)
        s += x[i];
    return n ? s / n : 0;
}

/* Adds the latest means to the trend ring once per step. */
static void record_trend(ui_context *ui, const stats_record *r)
{
    int L = r->shape.n_layers, E = r->shape.n_experts;
    if (ui->norm_trend_layers != L) {
        free(ui->norm_trend);
        ui->norm_trend = xcalloc((size_t)2 * L * NORM_TREND, sizeof(float));
        ui->norm_trend_layers = L;
        ui->norm_trend_count = ui->norm_trend_head = 0;
        ui->norm_trend_step = -1;
    }
    if (r->step == ui->norm_trend_step)
        return;
    if (r->step < ui->norm_trend_step)   /* resumed from an earlier checkpoint: those steps */
        ui->norm_trend_count = ui->norm_trend_head = 0;   /* were taken again, and differ */
    ui->norm_trend_step = r->step;
    for (int l = 0; l < L; l++) {
        ui->norm_trend[(size_t)l * NORM_TREND + ui->norm_trend_head] =
            (float)mean_row(r->norm_up + (size_t)l * E, E);
        ui->norm_trend[((size_t)L + l) * NORM_TREND + ui->norm_trend_head] =
            (float)mean_row(r->norm_down + (size_t)l * E, E);
    }
    ui->norm_trend_head = (ui->norm_trend_head + 1) % NORM_TREND;
    if (ui->norm_trend_count < NORM_TREND)
        ui->norm_trend_count++;
}

/* The trend of layer l of the metric (0 |U|, 1 |D|), oldest first. */
static int trend_of(const ui_context *ui, int metric, int l, double *out)
{
    int n = ui->norm_trend_count;
    const float *ring = ui->norm_trend + ((size_t)metric * ui->norm_trend_layers + l) * NORM_TREND;
    for (int i = 0; i < n; i++)
        out[i] = ring[(ui->norm_trend_head - n + i + NORM_TREND) % NORM_TREND];
    return n;
}

static void draw_trend(ui_context *ui, WINDOW *w, int y, int x, int width, int metric, int l)
{
    double t[NORM_TREND];
    int n = trend_of(ui, metric, l, t);
    if (n < 2 || width < 4)
        return;
    int spark = width - 2;
    /* the arrow's threshold: 0.1% */
    draw_sparkline(ui, w, y, x, spark, t, n, 1e-3 * fabs(t[n - 1]),
                   theme_attr(&ui->theme, PAIR_SMOOTH, A_NORMAL));
    double change = t[n - 1] - t[0];
    const char *arrow = fabs(change) <= 1e-3 * fabs(t[0]) + 1e-12 ? (ui->theme.utf8 ? "\u2192" : "=")
                      : change > 0 ? (ui->theme.utf8 ? "\u2197" : "+") : (ui->theme.utf8 ? "\u2198" : "-");
    draw_text(w, y, x + (n < spark ? n : spark) + 1, 1, A_BOLD, arrow);
}

static void norms_draw(ui_context *ui, WINDOW *w, const monitor_view *v)
{
    int h = getmaxy(w);
    const stats_record *r = v->last;
    int width = draw_frame(ui, w, "Adapter norms", mode_names[ui->norms_mode], ui->focus == PANEL_NORMS);
    int dim = theme_attr(&ui->theme, PAIR_DIM, A_NORMAL);
    if (!r || !r->norm_up || r->shape.n_experts <= 0) {
        draw_text(w, 1, 2, width - 2, dim, r ? "no adapters in this run" : "waiting for the first step");
        return;
    }
    record_trend(ui, r);
    int L = r->shape.n_layers, E = r->shape.n_experts;
    int metric = ui->norms_mode == 1 ? 1 : 0;
    const float *m = metric ? r->norm_down : r->norm_up;
    double most = 0;
    for (size_t i = 0; i < (size_t)L * E; i++)
        most = m[i] > most ? m[i] : most;
    int rows = h - 2;
    int first = draw_rows_window(ui, w, L, rows, ui->routing_layer, "L");
    int trend_w = width >= 50 ? 14 : width >= 36 ? 8 : 0;
    int value_w = 8;
    int label_w = 4;
    int room = width - label_w - value_w - trend_w;
    for (int l = first; l < L && l - first < rows; l++) {
        int y = 1 + l - first;
        char s[32];
        snprintf(s, sizeof s, "L%d", l);
        draw_text(w, y, 1, label_w - 1, dim, s);
        const float *row = m + (size_t)l * E;
        double mean = mean_row(row, E);
        if (ui->norms_mode == 2) {
            draw_bar(ui, w, y, 1 + label_w, room - 1, most > 0 ? mean / most : 0,
                     theme_attr(&ui->theme, PAIR_GOOD, A_NORMAL));
        } else {
            int cw = room / E;
            cw = cw > 4 ? 4 : cw;
            if (cw < 1) {
                draw_text(w, y, 1 + label_w, room, dim, "(too narrow)");
            } else {
                for (int e = 0; e < E; e++)
                    draw_heat_cell(ui, w, y, 1 + label_w + e * cw, cw, most > 0 ? row[e] / most : 0, NULL);
            }
        }
        /* 7 columns at most, so a gap is left before the trend: 3.3e+03, not 3.32e+03 */
        if (snprintf(s, sizeof s, "%7.3g", mean) > value_w - 1)
            snprintf(s, sizeof s, "%7.2g", mean);
        draw_text(w, y, 1 + label_w + room, value_w, 0, s);
        if (trend_w)
            draw_trend(ui, w, y, 1 + label_w + room + value_w, trend_w, metric, l);
    }
}

static int norms_key(ui_context *ui, int key, const monitor_view *v)
{
    (void)v;
    if (key == 'v' || key == '\n' || key == '\r' || key == KEY_ENTER) {
        ui->norms_mode = (ui->norms_mode + 1) % 3;
        return UI_HANDLED;
    }
    if (key == 'V') {
        ui->norms_mode = (ui->norms_mode + 2) % 3;
        return UI_HANDLED;
    }
    return UI_IGNORED;
}

const ui_panel_class norms_panel_class = {
    .title = "Adapter norms",
    .hint = "v |U| / |D| / bars",
    .draw = norms_draw,
    .key = norms_key,
};
