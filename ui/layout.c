/* layout — see layout.h. */
#include "layout.h"

#include <string.h>

static int clamp(int v, int lo, int hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

static layout_rect rect(int y, int x, int h, int w)
{
    return (layout_rect){.y = y, .x = x, .h = h > 0 ? h : 0, .w = w > 0 ? w : 0};
}

/* The top area of the full layout: routing left, loss over norms right. */
static void split_top(const layout_request *req, layout_rect top, layout *out)
{
    int want = req->routing_cols > 0 ? req->routing_cols : top.w / 2;
    int left = clamp(want, top.w * 35 / 100, top.w * 60 / 100);
    int right = top.w - left;
    out->panel[PANEL_ROUTING] = rect(top.y, top.x, top.h, left);
    layout_rect col = rect(top.y, top.x + left, top.h, right);
    if (col.h >= 10) {
        /* the chart gets the larger half: it has axes to label */
        int loss_h = col.h - col.h * 2 / 5;
        out->panel[PANEL_LOSS] = rect(col.y, col.x, loss_h, col.w);
        out->panel[PANEL_NORMS] = rect(col.y + loss_h, col.x, col.h - loss_h, col.w);
    } else if (req->focus == PANEL_NORMS) {
        out->panel[PANEL_NORMS] = col;
    } else {
        out->panel[PANEL_LOSS] = col;
    }
}

void layout_compute(const layout_request *req, layout *out)
{
    memset(out, 0, sizeof *out);
    int cols = req->cols, rows = req->rows;
    if (cols < LAYOUT_MIN_COLS || rows < LAYOUT_MIN_ROWS) {
        out->too_small = 1;
        out->single = 1;
        return;
    }
    int status_h = rows >= 20 && cols >= 60 ? 2 : 1;
    int keys_h = rows >= 8 ? 1 : 0;
    out->status = rect(0, 0, status_h, cols);
    out->keys = rect(rows - keys_h, 0, keys_h, cols);
    layout_rect body = rect(status_h, 0, rows - status_h - keys_h, cols);

    ui_panel_id focus = req->focus;
    if (focus == PANEL_DOWNLOADS && req->download_rows <= 0)
        focus = PANEL_ROUTING;
    if (req->maximised || body.w < 60 || body.h < 14) {
        out->single = 1;
        out->panel[focus] = body;
        return;
    }

    int console_h = clamp(body.h / 4, 5, 12);
    out->panel[PANEL_CONSOLE] = rect(body.y + body.h - console_h, 0, console_h, cols);
    int downloads_h = 0;
    if (req->download_rows > 0) {
        downloads_h = clamp(req->download_rows + 2, 3, (body.h - console_h) / 3);
        out->panel[PANEL_DOWNLOADS] = rect(body.y + body.h - console_h - downloads_h, 0,
                                           downloads_h, cols);
    }
    split_top(req, rect(body.y, 0, body.h - console_h - downloads_h, cols), out);
}

ui_panel_id layout_next_panel(ui_panel_id from, int dir, int have_downloads)
{
    int n = have_downloads ? PANEL_COUNT : PANEL_DOWNLOADS;
    int next = ((int)from + (dir < 0 ? n - 1 : 1)) % n;
    return (ui_panel_id)next;
}
