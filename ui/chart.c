/* chart — see chart.h. */
#include "chart.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

void chart_canvas_init(chart_canvas *c, int rows, int cols, int braille)
{
    c->rows = rows > 0 ? rows : 0;
    c->cols = cols > 0 ? cols : 0;
    c->dots_x = braille ? 2 : 1;
    c->dots_y = braille ? 4 : 2;
    size_t n = (size_t)c->rows * (size_t)c->cols;
    c->bits = xcalloc(n ? n : 1, 1);
    c->series = xmalloc(n ? n : 1);
    memset(c->series, 255, n ? n : 1);
}

void chart_canvas_free(chart_canvas *c)
{
    free(c->bits);
    free(c->series);
    memset(c, 0, sizeof *c);
}

/* Braille dot bits by (row within cell, column within cell); ASCII uses bit 0 top, 1 bottom. */
static const unsigned char braille_bit[4][2] = {{0x01, 0x08}, {0x02, 0x10}, {0x04, 0x20}, {0x40, 0x80}};

static void set_dot(chart_canvas *c, int dx, int dy, int series)
{
    int width = c->cols * c->dots_x, height = c->rows * c->dots_y;
    if (dx < 0 || dy < 0 || dx >= width || dy >= height)
        return;
    int cell = (dy / c->dots_y) * c->cols + dx / c->dots_x;
    unsigned char bit = c->dots_x == 2 ? braille_bit[dy % 4][dx % 2] : (unsigned char)(1u << (dy % 2));
    c->bits[cell] |= bit;
    c->series[cell] = (unsigned char)series;
}

static void line(chart_canvas *c, int x0, int y0, int x1, int y1, int series)
{
    int dx = abs(x1 - x0), dy = -abs(y1 - y0);
    int sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
    int e = dx + dy;
    for (;;) {
        set_dot(c, x0, y0, series);
        if (x0 == x1 && y0 == y1)
            break;
        int e2 = 2 * e;
        if (e2 >= dy) {
            e += dy;
            x0 += sx;
        }
        if (e2 <= dx) {
            e += dx;
            y0 += sy;
        }
    }
}

/* The dot column of x on an axis from x_lo (left edge) to x_hi (right edge); a single step
 * (x_lo == x_hi) is drawn at the right edge, where the newest point goes. */
static int dot_x(const chart_canvas *c, double x, double x_lo, double x_hi)
{
    int width = c->cols * c->dots_x;
    if (x_hi <= x_lo)
        return width - 1;
    return (int)((x - x_lo) * (width - 1) / (x_hi - x_lo) + 0.5);
}

static int dot_y(const chart_canvas *c, double value, double lo, double hi)
{
    int height = c->rows * c->dots_y;
    double t = (value - lo) / (hi > lo ? hi - lo : 1.0);
    t = t < 0 ? 0 : t > 1 ? 1 : t == t ? t : 0;   /* NaN: the bottom */
    return (height - 1) - (int)(t * (height - 1) + 0.5);
}

/* The segment from (x0, y0) to (x1, y1), cut to the x range: a line from a point off the
 * canvas ends at the edge, at the value it has there. */
static void segment(chart_canvas *c, double x0, double y0, double x1, double y1, double x_lo,
                    double x_hi, double lo, double hi, int series)
{
    if (x0 > x1) {
        double t = x0; x0 = x1; x1 = t;
        t = y0; y0 = y1; y1 = t;
    }
    if (x1 < x_lo || x0 > x_hi)
        return;
    if (x0 < x_lo) {
        y0 += (y1 - y0) * (x_lo - x0) / (x1 - x0);
        x0 = x_lo;
    }
    if (x1 > x_hi) {
        y1 = y0 + (y1 - y0) * (x_hi - x0) / (x1 - x0);
        x1 = x_hi;
    }
    line(c, dot_x(c, x0, x_lo, x_hi), dot_y(c, y0, lo, hi), dot_x(c, x1, x_lo, x_hi),
         dot_y(c, y1, lo, hi), series);
}

/* x NULL: the index is the x position. */
static void plot(chart_canvas *c, const double *x, const double *values, int n, double x_lo,
                 double x_hi, double lo, double hi, int series)
{
    if (c->cols * c->dots_x <= 0 || c->rows * c->dots_y <= 0)
        return;
    int have_prev = 0;
    double px = 0, py = 0;
    for (int i = 0; i < n; i++) {
        if (!isfinite(values[i])) {
            have_prev = 0;
            continue;
        }
        double xi = x ? x[i] : i;
        if (have_prev)
            segment(c, px, py, xi, values[i], x_lo, x_hi, lo, hi, series);
        else if (xi >= x_lo && xi <= x_hi)
            set_dot(c, dot_x(c, xi, x_lo, x_hi), dot_y(c, values[i], lo, hi), series);
        px = xi;
        py = values[i];
        have_prev = 1;
    }
}

void chart_plot(chart_canvas *c, const double *values, int n, double lo, double hi, int series)
{
    plot(c, NULL, values, n, 0, n - 1, lo, hi, series);
}

void chart_plot_xy(chart_canvas *c, const double *x, const double *values, int n, double x_lo,
                   double x_hi, double lo, double hi, int series)
{
    plot(c, x, values, n, x_lo, x_hi, lo, hi, series);
}

void chart_draw(WINDOW *w, int y, int x, const chart_canvas *c, const int *attrs)
{
    for (int r = 0; r < c->rows; r++)
        for (int col = 0; col < c->cols; col++) {
            int cell = r * c->cols + col;
            unsigned char b = c->bits[cell];
            if (!b)
                continue;
            int attr = c->series[cell] == 255 ? 0 : attrs[c->series[cell]];
            wattron(w, attr);
            if (c->dots_x == 2) {
                char glyph[4] = {(char)0xE2, (char)(0xA0 | (b >> 6)), (char)(0x80 | (b & 0x3F)), 0};
                mvwaddstr(w, y + r, x + col, glyph);
            } else {
                mvwaddch(w, y + r, x + col, b == 3 ? ':' : b == 1 ? '\'' : '.');
            }
            wattroff(w, attr);
        }
}

int chart_range(const double *values, int n, double *lo, double *hi)
{
    int any = 0;
    for (int i = 0; i < n; i++) {
        if (!isfinite(values[i]))
            continue;
        if (!any || values[i] < *lo)
            *lo = values[i];
        if (!any || values[i] > *hi)
            *hi = values[i];
        any = 1;
    }
    if (!any)
        return 0;
    double pad = (*hi - *lo) * 0.05;
    if (pad <= 0)
        pad = fabs(*hi) * 0.05 + 1e-6;
    *lo -= pad;
    *hi += pad;
    return 1;
}
