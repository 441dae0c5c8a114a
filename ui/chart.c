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

void chart_plot(chart_canvas *c, const double *values, int n, double lo, double hi, int series)
{
    int width = c->cols * c->dots_x, height = c->rows * c->dots_y;
    if (width <= 0 || height <= 0 || n <= 0)
        return;
    double span = hi > lo ? hi - lo : 1.0;
    int have_prev = 0, px = 0, py = 0;
    for (int i = 0; i < n; i++) {
        if (!isfinite(values[i])) {
            have_prev = 0;
            continue;
        }
        int x = n == 1 ? width - 1 : (int)((double)i * (width - 1) / (n - 1) + 0.5);
        double t = (values[i] - lo) / span;
        t = t < 0 ? 0 : t > 1 ? 1 : t;
        int y = (height - 1) - (int)(t * (height - 1) + 0.5);
        if (have_prev)
            line(c, px, py, x, y, series);
        else
            set_dot(c, x, y, series);
        px = x;
        py = y;
        have_prev = 1;
    }
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
