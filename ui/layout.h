/* layout — where each panel of the workbench goes, as pure arithmetic on rows and columns.
 *
 * Owns: the screen's division into a status area, the panels and the key bar, and which panels
 * fold away when the terminal is small. Must not: call curses or know what a panel draws (the
 * tests run it at many sizes without a terminal).
 *
 * Rules, largest first:
 *   - a status area on top (2 rows from 20 rows and 60 columns up, else 1) and a key bar at the
 *     bottom (from 8 rows up);
 *   - from 60x14 of body up: the prompt console across the bottom, the downloads above it when
 *     there are any, routing on the left, loss over adapter norms on the right (norms fold away
 *     first when the right column is short);
 *   - below that, one panel at a time: the focused one fills the body;
 *   - a maximised panel fills the body at any size. */
#ifndef PESC_UI_LAYOUT_H
#define PESC_UI_LAYOUT_H

typedef enum ui_panel_id {
    PANEL_ROUTING, PANEL_LOSS, PANEL_NORMS, PANEL_CONSOLE, PANEL_DOWNLOADS, PANEL_COUNT
} ui_panel_id;

typedef struct layout_rect {
    int y, x, h, w;              /* h == 0 or w == 0: not shown */
} layout_rect;

typedef struct layout_request {
    int cols, rows;
    ui_panel_id focus;           /* always shown */
    int maximised;               /* the focused panel fills the body */
    int routing_cols;            /* columns the routing heatmap would like; 0: half */
    int download_rows;           /* rows the downloads want; 0: none running */
} layout_request;

typedef struct layout {
    layout_rect status, keys;
    layout_rect panel[PANEL_COUNT];
    int single;                  /* one panel at a time (small terminal or maximised) */
    int too_small;               /* below 20x4: only a "too small" notice */
} layout;

#define LAYOUT_MIN_COLS 20
#define LAYOUT_MIN_ROWS 4

void layout_compute(const layout_request *req, layout *out);

/* 1 when the rectangle is shown (positive height and width). */
static inline int layout_visible(layout_rect r) { return r.h > 0 && r.w > 0; }

/* The next panel for Tab (dir +1) or Shift-Tab (-1), skipping the downloads when there are
 * none. */
ui_panel_id layout_next_panel(ui_panel_id from, int dir, int have_downloads);

#endif
