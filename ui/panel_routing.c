/* panel_routing — which experts the routers choose: a heatmap of layers x experts (each
 * expert's share of the layer's assignments, scaled so an even share sits mid-scale), with each
 * layer's imbalance (max / mean) and its dead and hot experts; or the same for first or second
 * choices, per data source at one layer, or one layer's history over steps. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ui_internal.h"


static const char *const view_names[ROUTING_VIEWS] = {"all slots", "first choice", "second choice",
                                                      "per source", "layer history"};

#define LOAD_WINDOW 20             /* the all-slots view: the mean load over this many steps */

/* The first of the kept loads (v->loads) in the last LOAD_WINDOW steps, when they end at the
 * latest step; -1 when they do not (no history kept), and the view shows that step alone. */
static int window_start(const monitor_view *v)
{
    if (!v->loads || v->n_loads == 0 || v->load_steps[v->n_loads - 1] != v->last->step)
        return -1;
    int first = v->n_loads - 1;
    while (first > 0 && v->load_steps[first - 1] > v->last->step - LOAD_WINDOW)
        first--;
    return first;
}

/* The (rows, E) matrix the view shows, into out; returns the number of rows. One step's
 * loads are noisy (at 800 tokens a step max/mean is about 1.2 from sampling alone): the
 * all-slots view shows their mean over the last LOAD_WINDOW steps, the others that step's. */
static int view_matrix(const ui_context *ui, const monitor_view *v, float *out, int max_rows)
{
    const stats_record *r = v->last;
    int L = r->shape.n_layers, E = r->shape.n_experts;
    int k = v->run.shape.top_k > 0 ? v->run.shape.top_k : 2;
    int first = window_start(v);
    if (ui->routing_view == ROUTING_ALL && first >= 0) {
        int rows = L < max_rows ? L : max_rows, n = v->n_loads - first;
        memset(out, 0, (size_t)rows * E * sizeof *out);
        for (int j = first; j < v->n_loads; j++)
            for (size_t i = 0; i < (size_t)rows * E; i++)
                out[i] += v->loads[(size_t)j * L * E + i] / (float)n;
        return rows;
    }
    switch (ui->routing_view) {
    case ROUTING_ALL:
    case ROUTING_FIRST:
    case ROUTING_SECOND:
        for (int l = 0; l < L && l < max_rows; l++)
            for (int e = 0; e < E; e++) {
                size_t i = (size_t)l * E + e;
                float x = ui->routing_view == ROUTING_ALL ? r->load[i]
                        : ui->routing_view == ROUTING_FIRST ? r->first[i]
                        : k > 1 ? (k * r->load[i] - r->first[i]) / (float)(k - 1) : 0.0f;
                out[i] = x > 0 ? x : 0;
            }
        return L < max_rows ? L : max_rows;
    case ROUTING_SOURCE: {
        int S = r->shape.n_sources, l = ui->routing_layer;
        if (!r->source_load)
            return 0;
        for (int s = 0; s < S && s < max_rows; s++)
            memcpy(out + (size_t)s * E, r->source_load + ((size_t)s * L + l) * E, (size_t)E * sizeof(float));
        return S < max_rows ? S : max_rows;
    }
    default:
        return 0;
    }
}

static void row_label(const ui_context *ui, const monitor_view *v, int row, char *out, size_t cap)
{
    if (ui->routing_view == ROUTING_SOURCE) {
        const char *name = v->run.sources[row][0] ? v->run.sources[row] : "source";
        const char *slash = strrchr(name, '/');
        snprintf(out, cap, "%s", slash && slash[1] ? slash + 1 : name);
        char *dot = strchr(out, '.');   /* source-a.jsonl.gz: source-a */
        if (dot && dot != out)
            *dot = '\0';
    } else {
        snprintf(out, cap, "L%d", row);
    }
}

/* The label column: "L12" for layers; for sources, the longest name (up to 23 columns) where
 * the cells keep 3 columns each (a share in percent), else at least 11 of it. */
static int label_width(const ui_context *ui, const monitor_view *v, int rows, int E, int room)
{
    if (ui->routing_view != ROUTING_SOURCE)
        return 4;
    int longest = 0;
    for (int row = 0; row < rows; row++) {
        char label[32];
        row_label(ui, v, row, label, sizeof label);
        int cols = text_columns(label);
        longest = cols > longest ? cols : longest;
    }
    int lw = (longest < 23 ? longest : 23) + 1;
    lw = lw > room - 3 * E ? room - 3 * E : lw;
    return lw < 12 ? 12 : lw;
}

/* Per row: cells, imbalance, and dead / hot markers. */
static void draw_matrix(ui_context *ui, WINDOW *w, const monitor_view *v, const float *m, int rows,
                        int E, int top, int height, int width)
{
    int tail = 14;
    int label_w = label_width(ui, v, rows, E, width - tail);
    int cw = (width - label_w - tail) / (E > 0 ? E : 1);
    cw = cw > 5 ? 5 : cw;
    if (cw < 1) {
        tail = 6;
        cw = (width - label_w - tail) / E;
        cw = cw < 1 ? 1 : cw;
    }
    int dim = theme_attr(&ui->theme, PAIR_DIM, A_NORMAL);
    /* expert numbers over the columns */
    if (cw >= 2)
        for (int e = 0; e < E; e++) {
            char s[16];
            snprintf(s, sizeof s, "%d", e);
            int sw = (int)strlen(s);
            if (sw <= cw)
                draw_text(w, top, 1 + label_w + e * cw + (cw - sw) / 2, sw, dim, s);
        }
    draw_text(w, top, 1 + label_w + E * cw + 1, tail - 1, dim, "max/mean");
    int body = height - 1;
    int selected = ui->routing_view == ROUTING_SOURCE ? ui->routing_source : ui->routing_layer;
    int first = draw_rows_window(ui, w, rows, body, selected,
                                 ui->routing_view == ROUTING_SOURCE ? "sources" : "L");
    for (int row = first; row < rows && row - first < body; row++) {
        int y = top + 1 + row - first;
        const float *x = m + (size_t)row * E;
        char label[32];
        row_label(ui, v, row, label, sizeof label);
        int sel = row == selected;
        draw_text(w, y, 1, label_w - 1, sel ? theme_attr(&ui->theme, PAIR_SELECT, A_REVERSE) : dim, label);
        double sum = 0, most = 0;
        int dead = 0, hot = 0;
        for (int e = 0; e < E; e++) {
            sum += x[e];
            most = x[e] > most ? x[e] : most;
        }
        if (sum <= 0) {   /* a source none of the step's tokens came from: not idle experts */
            draw_text(w, y, 1 + label_w, width - label_w, dim, "no tokens at this step");
            continue;
        }
        double even = sum / E;
        for (int e = 0; e < E; e++) {
            double ratio = x[e] / even;
            dead += ratio < STATS_IDLE_SHARE;
            hot += ratio > STATS_HOT_SHARE;
            char cell[8] = "";
            if (cw >= 3)
                snprintf(cell, sizeof cell, "%.0f", 100.0 * x[e] / (sum > 0 ? sum : 1));
            draw_heat_cell(ui, w, y, 1 + label_w + e * cw, cw, ratio / 2.0, cw >= 3 ? cell : NULL);
        }
        int tx = 1 + label_w + E * cw + 1;
        double imbalance = sum > 0 ? most / even : 0;
        int ia = imbalance < 1.5 ? PAIR_GOOD : imbalance < 2.5 ? PAIR_WARN : PAIR_BAD;
        char s[32];
        snprintf(s, sizeof s, "%4.2f", imbalance);
        tx += draw_text(w, y, tx, width - tx + 1, theme_attr(&ui->theme, ia, A_NORMAL), s);
        if (tail >= 14 && dead) {
            snprintf(s, sizeof s, " %s%d", ui->theme.utf8 ? "\u2715" : "x", dead);
            tx += draw_text(w, y, tx, width - tx + 1, theme_attr(&ui->theme, PAIR_BAD, A_BOLD), s);
        }
        if (tail >= 14 && hot) {
            snprintf(s, sizeof s, " %s%d", ui->theme.utf8 ? "\u25b2" : "^", hot);
            draw_text(w, y, tx, width - tx + 1, theme_attr(&ui->theme, PAIR_WARN, A_BOLD), s);
        }
    }
}

/* One layer's loads over the kept steps: experts as rows, steps as columns, newest right. */
static void draw_history(ui_context *ui, WINDOW *w, const monitor_view *v, int E, int top, int height,
                         int width)
{
    int L = v->last->shape.n_layers, l = ui->routing_layer;
    int dim = theme_attr(&ui->theme, PAIR_DIM, A_NORMAL);
    if (v->n_loads == 0 || !v->loads) {
        draw_text(w, top, 2, width - 2, dim, "no history yet");
        return;
    }
    int label_w = 4, cols = width - label_w;
    int n = v->n_loads < cols ? v->n_loads : cols;
    int first = v->n_loads - n;
    int rows = E < height - 1 ? E : height - 1;
    for (int e = 0; e < rows; e++) {
        char label[16];
        snprintf(label, sizeof label, "e%d", e);
        draw_text(w, top + e, 1, label_w - 1, dim, label);
        for (int i = 0; i < n; i++) {
            const float *x = v->loads + ((size_t)(first + i) * L + l) * E;
            draw_heat_cell(ui, w, top + e, 1 + label_w + i, 1, x[e] * E / 2.0, NULL);
        }
    }
    char s[64];
    snprintf(s, sizeof s, "step %ld", v->load_steps[first]);
    draw_text(w, top + rows, 1 + label_w, width - label_w, dim, s);
    snprintf(s, sizeof s, "%ld", v->load_steps[v->n_loads - 1]);
    int sw = (int)strlen(s);
    if (n > sw + 12)
        draw_text(w, top + rows, 1 + label_w + n - sw, sw, dim, s);
}

static void routing_draw(ui_context *ui, WINDOW *w, const monitor_view *v)
{
    int h, wd;
    getmaxyx(w, h, wd);
    const stats_record *r = v->last;
    char title[128], right[64] = "";
    int L = r ? r->shape.n_layers : 0, E = r ? r->shape.n_experts : 0;
    if (ui->routing_layer >= L)
        ui->routing_layer = L > 0 ? L - 1 : 0;
    /* which steps the numbers are of: a mean of the last ones, or the latest alone */
    char steps[40] = "";
    int from = r ? window_start(v) : -1;
    if (ui->routing_view == ROUTING_ALL && from >= 0)
        snprintf(steps, sizeof steps, ", mean of %ld steps", r->step - v->load_steps[from] + 1);
    else if (r && ui->routing_view != ROUTING_HISTORY)
        snprintf(steps, sizeof steps, ", step %ld", r->step);
    /* past top-2 the view is the mean of the choices after the first */
    const char *name = ui->routing_view == ROUTING_SECOND && v->run.shape.top_k > 2
                           ? "later choices" : view_names[ui->routing_view];
    if (ui->routing_view == ROUTING_SOURCE || ui->routing_view == ROUTING_HISTORY)
        snprintf(title, sizeof title, "Routing: %s, layer %d%s", name, ui->routing_layer, steps);
    else
        snprintf(title, sizeof title, "Routing: %s%s", name, steps);
    if (E > 0)
        snprintf(right, sizeof right, "top-%d of %d", v->run.shape.top_k > 0 ? v->run.shape.top_k : 2, E);
    int width = draw_frame(ui, w, title, right, ui->focus == PANEL_ROUTING);
    int dim = theme_attr(&ui->theme, PAIR_DIM, A_NORMAL);
    if (!r) {
        draw_text(w, 2, 2, width - 2, dim, "waiting for the first step");
        return;
    }
    if (E <= 0 || !r->load) {
        draw_text(w, 2, 2, width - 2, dim, "a dense run: no experts to route to");
        return;
    }
    int height = h - 3;          /* frame and the legend */
    if (ui->routing_view == ROUTING_HISTORY) {
        draw_history(ui, w, v, E, 1, height, width);
    } else {
        int max_rows = L > STATS_MAX_SOURCES ? L : STATS_MAX_SOURCES;
        float m[(size_t)64 * 256];
        if ((size_t)max_rows * E > sizeof m / sizeof *m) {
            draw_text(w, 2, 2, width - 2, dim, "too many experts to draw");
            return;
        }
        int rows = view_matrix(ui, v, m, max_rows);
        if (rows == 0) {
            draw_text(w, 2, 2, width - 2, dim, "this run logs no per-source loads");
        } else if (ui->routing_view != ROUTING_SOURCE && height >= rows + 1 + E + 3) {
            /* room to spare: the selected layer's history under the matrix */
            draw_matrix(ui, w, v, m, rows, E, 1, rows + 1, width);
            char s[64];
            snprintf(s, sizeof s, "layer %d, last %d steps", ui->routing_layer,
                     v->n_loads < width - 4 ? v->n_loads : width - 4);
            draw_text(w, rows + 3, 2, width - 2, theme_attr(&ui->theme, PAIR_TITLE, A_BOLD), s);
            draw_history(ui, w, v, E, rows + 4, height - rows - 3, width);
        } else {
            draw_matrix(ui, w, v, m, rows, E, 1, height, width);
        }
    }
    if (h >= 5) {
        char marks[64];
        snprintf(marks, sizeof marks, "  %s idle %s hot", ui->theme.utf8 ? "\u2715" : "x",
                 ui->theme.utf8 ? "\u25b2" : "^");
        draw_heat_legend(ui, w, h - 2, 2, width - (int)strlen(marks), "0", "2x even");
        if (width > 40)
            draw_text(w, h - 2, 2 + 20 + 4, width - 26, dim, marks);
    }
    (void)wd;
}

static int routing_key(ui_context *ui, int key, const monitor_view *v)
{
    int L = v && v->last ? v->last->shape.n_layers : 0;
    int S = v && v->last ? v->last->shape.n_sources : 0;
    switch (key) {
    case KEY_UP: case 'k':
        if (ui->routing_view == ROUTING_SOURCE && ui->routing_source > 0)
            ui->routing_source--;
        else if (ui->routing_view != ROUTING_SOURCE && ui->routing_layer > 0)
            ui->routing_layer--;
        return UI_HANDLED;
    case KEY_DOWN: case 'j':
        if (ui->routing_view == ROUTING_SOURCE && ui->routing_source + 1 < S)
            ui->routing_source++;
        else if (ui->routing_view != ROUTING_SOURCE && ui->routing_layer + 1 < L)
            ui->routing_layer++;
        return UI_HANDLED;
    case KEY_LEFT: case '[':
        if (ui->routing_layer > 0)
            ui->routing_layer--;
        return UI_HANDLED;
    case KEY_RIGHT: case ']':
        if (ui->routing_layer + 1 < L)
            ui->routing_layer++;
        return UI_HANDLED;
    case 'v': case 'V': {   /* top-1 has no second choice: its view is passed over */
        int step = key == 'v' ? 1 : ROUTING_VIEWS - 1;
        do
            ui->routing_view = (routing_view_kind)((ui->routing_view + step) % ROUTING_VIEWS);
        while (ui->routing_view == ROUTING_SECOND && v && v->run.shape.top_k == 1);
        return UI_HANDLED;
    }
    case '\n': case '\r': case KEY_ENTER:
        ui->routing_view = ui->routing_view == ROUTING_HISTORY ? ROUTING_ALL : ROUTING_HISTORY;
        return UI_HANDLED;
    default:
        return UI_IGNORED;
    }
}

const ui_panel_class routing_panel_class = {
    .title = "Routing",
    .hint = "v view  \u2191\u2193 layer  Enter history",
    .draw = routing_draw,
    .key = routing_key,
};
