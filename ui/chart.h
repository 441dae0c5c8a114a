/* chart — line charts on a grid of braille dots (2x4 per cell), or of ASCII marks (1x2 per
 * cell) where the terminal has no UTF-8; several series share one canvas, each cell keeps the
 * colour of the last series that touched it.
 *
 * Owns: the canvas arithmetic (pure, tested without a terminal) and its drawing into a
 * WINDOW. Must not: know what the values mean; axes and legends are the panels'. */
#ifndef PESC_UI_CHART_H
#define PESC_UI_CHART_H

#include <curses.h>

typedef struct chart_canvas {
    int rows, cols;              /* cells */
    int dots_x, dots_y;          /* dots per cell: 2x4 braille, 1x2 ASCII */
    unsigned char *bits;         /* (rows, cols) dot bits */
    unsigned char *series;       /* (rows, cols) last series drawn, 255: none */
} chart_canvas;

void chart_canvas_init(chart_canvas *c, int rows, int cols, int braille);
void chart_canvas_free(chart_canvas *c);

/* Plots values[0..n) left to right across the canvas, joined by lines, scaled so lo is the
 * bottom dot row and hi the top; non-finite values leave a gap. */
void chart_plot(chart_canvas *c, const double *values, int n, double lo, double hi, int series);
/* Plots values[i] at x[i] (ascending: steps), x_lo at the left edge and x_hi at the right, so
 * that series of different lengths and spacings line up; a line to a point outside the range
 * is cut at the edge, and one from x_lo == x_hi is drawn at the right edge. */
void chart_plot_xy(chart_canvas *c, const double *x, const double *values, int n, double x_lo,
                   double x_hi, double lo, double hi, int series);

/* Draws the canvas at (y, x) of w; attrs[series] is the attribute of each series. */
void chart_draw(WINDOW *w, int y, int x, const chart_canvas *c, const int *attrs);

/* Lower and upper bounds over the finite values, widened a little so a line is not drawn on
 * the frame; 0 when none is finite. */
int chart_range(const double *values, int n, double *lo, double *hi);

#endif
