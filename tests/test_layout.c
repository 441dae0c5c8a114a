/* test_layout — the workbench layout at many terminal sizes, without a terminal: every cell
 * belongs to exactly one area, nothing is negative or off screen, the focused panel is always
 * shown, and panels fold away (rather than shrink to nothing) on small terminals; and the
 * chart canvas places series by step (pesc view comparing runs of other lengths). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chart.h"
#include "layout.h"
#include "check.h"

static const char *const names[PANEL_COUNT] = {"routing", "loss", "norms", "console", "downloads"};

/* Marks each area's cells; returns 0 when every cell of the screen is covered exactly once. */
static int check_tiling(const layout_request *rq, const layout *lo)
{
    int cols = rq->cols, rows = rq->rows;
    unsigned char *owner = calloc((size_t)cols * rows, 1);
    layout_rect areas[PANEL_COUNT + 2];
    int n = 0;
    areas[n++] = lo->status;
    areas[n++] = lo->keys;
    for (int p = 0; p < PANEL_COUNT; p++)
        areas[n++] = lo->panel[p];
    int bad = 0;
    for (int a = 0; a < n; a++) {
        layout_rect r = areas[a];
        if (r.h < 0 || r.w < 0 || r.y < 0 || r.x < 0) {
            printf("FAIL %dx%d: area %d negative (%d,%d %dx%d)\n", cols, rows, a, r.y, r.x, r.h, r.w);
            bad = 1;
            continue;
        }
        if (!layout_visible(r))
            continue;
        if (r.y + r.h > rows || r.x + r.w > cols) {
            printf("FAIL %dx%d: area %d off screen (%d,%d %dx%d)\n", cols, rows, a, r.y, r.x, r.h, r.w);
            bad = 1;
            continue;
        }
        for (int y = r.y; y < r.y + r.h; y++)
            for (int x = r.x; x < r.x + r.w; x++)
                if (owner[(size_t)y * cols + x]++) {
                    if (!bad)
                        printf("FAIL %dx%d: area %d overlaps at %d,%d\n", cols, rows, a, y, x);
                    bad = 1;
                }
    }
    for (size_t i = 0; i < (size_t)cols * rows && !bad; i++)
        if (owner[i] != 1) {
            printf("FAIL %dx%d focus %d: cell %zu,%zu not covered\n", cols, rows, rq->focus,
                   i / (size_t)cols, i % (size_t)cols);
            bad = 1;
        }
    free(owner);
    return bad ? -1 : 0;
}

static void sweep(void)
{
    int checked = 0;
    for (int rows = LAYOUT_MIN_ROWS; rows <= 100; rows++)
        for (int cols = LAYOUT_MIN_COLS; cols <= 320; cols += (cols < 130 ? 1 : 7))
            for (int focus = 0; focus < PANEL_COUNT; focus++)
                for (int variant = 0; variant < 4; variant++) {
                    layout_request rq = {.cols = cols, .rows = rows, .focus = (ui_panel_id)focus,
                                         .maximised = variant == 1,
                                         .routing_cols = variant == 2 ? 200 : variant == 3 ? 10 : 0,
                                         .download_rows = variant >= 2 ? variant : 0};
                    layout lo;
                    layout_compute(&rq, &lo);
                    checked++;
                    if (check_tiling(&rq, &lo) != 0) {
                        failures++;
                        return;
                    }
                    ui_panel_id shown = focus == PANEL_DOWNLOADS && rq.download_rows == 0
                                            ? PANEL_ROUTING : (ui_panel_id)focus;
                    CHECK(layout_visible(lo.panel[shown]), "%dx%d: focused %s not shown", cols,
                          rows, names[shown]);
                    /* a panel that is shown has room for a border and a line of content */
                    for (int p = 0; p < PANEL_COUNT; p++)
                        if (layout_visible(lo.panel[p]))
                            CHECK(lo.panel[p].h >= 3 && lo.panel[p].w >= 20,
                                  "%dx%d: %s shown at %dx%d", cols, rows, names[p],
                                  lo.panel[p].w, lo.panel[p].h);
                    if (rq.download_rows == 0)
                        CHECK(!layout_visible(lo.panel[PANEL_DOWNLOADS]),
                              "%dx%d: downloads shown with none running", cols, rows);
                }
    printf("ok   %d layouts tile the screen exactly\n", checked);
}

static layout at(int cols, int rows, ui_panel_id focus)
{
    layout_request rq = {.cols = cols, .rows = rows, .focus = focus};
    layout lo;
    layout_compute(&rq, &lo);
    return lo;
}

static void named_sizes(void)
{
    layout lo = at(80, 24, PANEL_ROUTING);
    CHECK(!lo.single, "80x24 is one panel at a time");
    for (int p = 0; p < PANEL_DOWNLOADS; p++)
        CHECK(layout_visible(lo.panel[p]), "80x24: %s folded", names[p]);
    CHECK(lo.status.h == 2 && lo.keys.h == 1 && lo.keys.y == 23, "80x24: status/keys rows");
    CHECK(lo.panel[PANEL_ROUTING].w >= 28 && lo.panel[PANEL_LOSS].w >= 28, "80x24: columns too narrow");
    CHECK(lo.panel[PANEL_CONSOLE].h >= 5, "80x24: console has %d rows", lo.panel[PANEL_CONSOLE].h);
    printf("ok   80x24 shows routing, loss, norms and the console\n");

    lo = at(40, 12, PANEL_ROUTING);
    CHECK(lo.single && !lo.too_small, "40x12 is one panel at a time");
    CHECK(layout_visible(lo.panel[PANEL_ROUTING]) && !layout_visible(lo.panel[PANEL_LOSS]),
          "40x12 shows only the focused panel");
    CHECK(lo.status.h == 1 && lo.keys.h == 1, "40x12: one status row, one key row");
    CHECK(lo.panel[PANEL_ROUTING].h == 10, "40x12: routing has %d rows", lo.panel[PANEL_ROUTING].h);
    lo = at(40, 12, PANEL_CONSOLE);
    CHECK(layout_visible(lo.panel[PANEL_CONSOLE]) && !layout_visible(lo.panel[PANEL_ROUTING]),
          "40x12 focus console shows the console");
    printf("ok   40x12 folds to the focused panel\n");

    lo = at(300, 90, PANEL_LOSS);
    for (int p = 0; p < PANEL_DOWNLOADS; p++)
        CHECK(layout_visible(lo.panel[p]), "300x90: %s folded", names[p]);
    CHECK(lo.panel[PANEL_CONSOLE].h <= 12, "300x90: console is %d rows", lo.panel[PANEL_CONSOLE].h);
    CHECK(lo.panel[PANEL_LOSS].h > lo.panel[PANEL_NORMS].h, "300x90: loss smaller than norms");
    printf("ok   300x90 shows every panel\n");

    /* the right column folds norms first, unless norms has the focus */
    lo = at(80, 16, PANEL_ROUTING);
    CHECK(!lo.single && layout_visible(lo.panel[PANEL_LOSS]) && !layout_visible(lo.panel[PANEL_NORMS]),
          "80x16: norms should fold, loss stay");
    lo = at(80, 16, PANEL_NORMS);
    CHECK(layout_visible(lo.panel[PANEL_NORMS]) && !layout_visible(lo.panel[PANEL_LOSS]),
          "80x16 focus norms: norms should replace loss");
    printf("ok   norms fold before loss\n");

    lo = at(10, 3, PANEL_ROUTING);
    CHECK(lo.too_small, "10x3 should be too small");
    layout_request rq = {.cols = 200, .rows = 60, .focus = PANEL_LOSS, .maximised = 1};
    layout_compute(&rq, &lo);
    CHECK(lo.single && lo.panel[PANEL_LOSS].w == 200 && lo.panel[PANEL_LOSS].h == 57,
          "maximised loss at 200x60 is %dx%d", lo.panel[PANEL_LOSS].w, lo.panel[PANEL_LOSS].h);
    rq = (layout_request){.cols = 120, .rows = 40, .focus = PANEL_ROUTING, .download_rows = 2};
    layout_compute(&rq, &lo);
    CHECK(layout_visible(lo.panel[PANEL_DOWNLOADS]) && lo.panel[PANEL_DOWNLOADS].h == 4,
          "120x40 with 2 downloads: downloads %d rows", lo.panel[PANEL_DOWNLOADS].h);
    printf("ok   too small, maximised, downloads\n");
}

static void tab_order(void)
{
    ui_panel_id p = PANEL_ROUTING;
    for (int i = 0; i < 4; i++)
        p = layout_next_panel(p, 1, 0);
    CHECK(p == PANEL_ROUTING, "Tab cycles the four panels");
    CHECK(layout_next_panel(PANEL_ROUTING, -1, 0) == PANEL_CONSOLE, "Shift-Tab wraps to console");
    CHECK(layout_next_panel(PANEL_CONSOLE, 1, 1) == PANEL_DOWNLOADS, "Tab reaches downloads");
    printf("ok   Tab order\n");
}

/* Which of the canvas's cells hold a dot, as a string of '#' and '.' (one row). */
static const char *cells(const chart_canvas *c)
{
    static char out[64];
    for (int i = 0; i < c->cols && i < 63; i++)
        out[i] = c->bits[i] ? '#' : '.';
    out[c->cols < 63 ? c->cols : 63] = '\0';
    return out;
}

static void chart_by_step(void)
{
    chart_canvas c;
    /* steps 0 to 100 over ten cells: a run from step 50 fills only the right half */
    const double x[] = {50, 75, 100}, y[] = {1, 2, 3};
    chart_canvas_init(&c, 1, 10, 1);
    chart_plot_xy(&c, x, y, 3, 0, 100, 0, 4, 0);
    CHECK(strcmp(cells(&c), ".....#####") == 0, "steps 50-100 of 0-100: %s", cells(&c));
    chart_canvas_free(&c);
    /* a line from before the range is cut at its left edge, points past it are not drawn */
    const double x2[] = {-100, 50, 150, 200}, y2[] = {2, 2, 2, 2};
    chart_canvas_init(&c, 1, 10, 1);
    chart_plot_xy(&c, x2, y2, 2, 0, 100, 0, 4, 0);
    CHECK(strcmp(cells(&c), "######....") == 0, "a line from step -100 to 50: %s", cells(&c));
    chart_canvas_free(&c);
    chart_canvas_init(&c, 1, 10, 1);
    chart_plot_xy(&c, x2 + 2, y2 + 2, 2, 0, 100, 0, 4, 0);
    CHECK(strcmp(cells(&c), "..........") == 0, "steps past the range: %s", cells(&c));
    chart_canvas_free(&c);
    /* one step only (x_lo == x_hi): at the right edge, as chart_plot draws one value */
    const double one = 7, v = 1;
    chart_canvas_init(&c, 1, 10, 1);
    chart_plot_xy(&c, &one, &v, 1, 7, 7, 0, 4, 0);
    CHECK(strcmp(cells(&c), ".........#") == 0, "a single step: %s", cells(&c));
    chart_canvas_free(&c);
    printf("ok   the chart places series by step\n");
}

int main(void)
{
    sweep();
    named_sizes();
    tab_order();
    chart_by_step();
    if (failures)
        printf("%d failures\n", failures);
    return failures ? 1 : 0;
}
