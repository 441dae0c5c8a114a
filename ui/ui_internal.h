/* ui_internal — what the workbench's parts share: the one context struct that holds all of
 * the UI's state, the panel "class" table, the theme and small drawing helpers.
 *
 * Each panel kind is a const ui_panel_class (htop's habit): draw from a snapshot into its
 * window, and handle a key when it has the focus, returning a UI_* bitmask. */
#ifndef PESC_UI_INTERNAL_H
#define PESC_UI_INTERNAL_H

#include <curses.h>

#include "chart.h"
#include "layout.h"
#include "lineedit.h"
#include "monitor.h"
#include "ui.h"

/* ---- theme -------------------------------------------------------------------------------- */

enum {
    PAIR_TITLE = 1, PAIR_BORDER, PAIR_FOCUS, PAIR_DIM, PAIR_GOOD, PAIR_WARN, PAIR_BAD,
    PAIR_RAW, PAIR_SMOOTH, PAIR_AUX, PAIR_KEY, PAIR_KEYLABEL, PAIR_RUN, PAIR_PAUSE, PAIR_STOP,
    PAIR_SELECT, PAIR_EVAL,
    PAIR_COMPARE0,                                    /* MONITOR_COMPARED runs compared */
    PAIR_EXPERT0 = PAIR_COMPARE0 + MONITOR_COMPARED,  /* 8 token colours by expert */
    PAIR_HEAT0 = PAIR_EXPERT0 + 8,                    /* UI_HEAT_STEPS background steps */
    PAIR_COUNT_ = PAIR_HEAT0 + 16
};
#define UI_HEAT_STEPS_MAX 16

typedef struct ui_theme {
    int colour;                  /* colours in use (no NO_COLOR, a terminal that has them) */
    int heat_steps;              /* colour steps of the heat scale; 0: character shades */
    int utf8;                    /* braille, shades and box characters can be drawn */
} ui_theme;

/* The attribute of a colour pair, or the fallback attribute without colours. */
int theme_attr(const ui_theme *t, int pair, int fallback);

/* ---- panels ------------------------------------------------------------------------------- */

enum { UI_IGNORED = 0, UI_HANDLED = 1, UI_REDRAW = 2 };

typedef struct ui_context ui_context;

typedef struct ui_panel_class {
    const char *title;
    const char *hint;            /* the panel's own keys, for the key bar and the help */
    void (*draw)(ui_context *ui, WINDOW *w, const monitor_view *v);
    int (*key)(ui_context *ui, int key, const monitor_view *v);   /* NULL: no keys of its own */
} ui_panel_class;

extern const ui_panel_class routing_panel_class;
extern const ui_panel_class loss_panel_class;
extern const ui_panel_class norms_panel_class;
extern const ui_panel_class console_panel_class;
extern const ui_panel_class downloads_panel_class;

typedef enum routing_view_kind {
    ROUTING_ALL, ROUTING_FIRST, ROUTING_SECOND, ROUTING_SOURCE, ROUTING_HISTORY, ROUTING_VIEWS
} routing_view_kind;

typedef enum ui_mode {
    MODE_NORMAL, MODE_PROMPT, MODE_MINI, MODE_HELP, MODE_CONFIRM_QUIT, MODE_STOPPING,
    MODE_CONFIRM_LEAVE           /* an attached view leaving a paused run */
} ui_mode;

typedef enum ui_mini_kind { MINI_LR, MINI_AUX, MINI_COMMAND } ui_mini_kind;

#define NORM_TREND 48            /* per-layer norm samples kept for the trend */

struct ui_context {
    monitor *m;
    const ui_options *opt;
    monitor_view *view;
    int have_view;
    ui_theme theme;
    layout lo;
    int rows, cols;
    WINDOW *win[PANEL_COUNT];
    ui_panel_id focus;
    int maximised;
    ui_mode mode;
    int help_top, help_scrolls;  /* the help's first line shown; 1 when it does not fit */
    ui_mini_kind mini;
    lineedit prompt;             /* the console's prompt, with its history */
    lineedit mini_line;          /* LR, aux or a raw command */
    char message[512];           /* the last reply or notice, shown for a while */
    double message_at;
    double stop_asked_at;
    int quit;
    WINDOW *cursor_win;          /* where the text cursor goes while typing */
    int cursor_y, cursor_x;
    /* bracketed paste: the key codes its two markers were given, and the paste under way */
    int paste_begin_key, paste_end_key;
    int word_left_key, word_right_key;   /* Ctrl-Left / Right, Alt-b / f: a word at a time */
    int pasting;                 /* between the markers: keys are text, never commands */
    int paste_after_cr;          /* the last pasted key was CR (CR LF is one line break) */
    int paste_dropped;           /* pasted characters the line had no room for */
    double paste_last_at;        /* when the paste's last key came */
    int byte_keys;               /* an ASCII locale: keys read as bytes, UTF-8 decoded here */
    /* routing */
    routing_view_kind routing_view;
    int routing_layer;
    int routing_source;
    /* loss */
    int loss_all;                /* whole run instead of the recent window */
    /* adapter norms */
    int norms_mode;              /* 0 heatmap of |U|, 1 heatmap of |D|, 2 bars with trend */
    float *norm_trend;           /* (2, L, NORM_TREND) mean |U| and |D| per layer, a ring */
    int norm_trend_layers, norm_trend_count, norm_trend_head;
    long norm_trend_step;
    /* console */
    int gen_max_tokens;
    double gen_temperature, gen_top_p;
    int gen_layer;
    int colour_tokens;
    int console_events;          /* the console shows every recent event, not the answer */
    int console_back;            /* events left out at the newest end (scrolled back) */
    int awaiting_answer;         /* a prompt was sent: its generate event is watched for */
    double sent_after;           /* the run's clock (events' elapsed_s) when it was sent */
};

/* Sends a command line and shows its reply; -1 when the reply is an error. */
int ui_send(ui_context *ui, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void ui_notice(ui_context *ui, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- drawing helpers ---------------------------------------------------------------------- */

/* Frames the window with the title; a focused panel's frame stands out. Returns the content
 * width (w - 2). */
int draw_frame(ui_context *ui, WINDOW *w, const char *title, const char *right, int focused);
/* The first of `total` rows that `shown` lines show with row `selected` among them. When not all
 * fit, the frame's bottom edge says which do: "L3-14 of 22" (with `unit` "L"), or "3-14 of 20
 * sources" (with `unit` "sources"). */
int draw_rows_window(ui_context *ui, WINDOW *w, int total, int shown, int selected,
                     const char *unit);
/* Writes at most `width` columns of s at (y, x) with attr (UTF-8 aware). Returns columns written. */
int draw_text(WINDOW *w, int y, int x, int width, int attr, const char *s);
/* s from (y, x) to the window's right edge, going on at the next rows' second column, up to
 * `rows` rows in all; returns the rows written on. */
/* As draw_text, but a text too long for width is cut after its last whole word, with a mark
 * (a number cut in half reads as another number). */
int draw_text_words(ui_context *ui, WINDOW *w, int y, int x, int width, int attr, const char *s);
int draw_text_wrapped(WINDOW *w, int y, int x, int rows, int attr, const char *s);
/* One heat cell of `width` columns for t in [0, 1] (colour or shade), with an optional label. */
void draw_heat_cell(ui_context *ui, WINDOW *w, int y, int x, int width, double t, const char *label);
/* A horizontal bar of `width` columns filled to t in [0, 1]. */
void draw_bar(ui_context *ui, WINDOW *w, int y, int x, int width, double t, int attr);
/* A sparkline of n values in `width` columns. */
/* v's last `width` values, each as a tick from the lowest to the highest; a range narrower
 * than min_span is widened to it, around its middle, so that noise is not drawn as a climb.
 * A value that is not finite is drawn as '!'. */
void draw_sparkline(ui_context *ui, WINDOW *w, int y, int x, int width, const double *v, int n,
                    double min_span, int attr);
/* The heat scale's legend: "lo ░▒▓█ hi". */
void draw_heat_legend(ui_context *ui, WINDOW *w, int y, int x, int width, const char *lo, const char *hi);

/* 1.2k, 3.4M, 5.6G */
void format_si(double v, char *out, size_t cap);
void format_bytes_short(double v, char *out, size_t cap);
/* The bytes of the character at s (len left) that the locale cannot show, drawn as one '?':
 * a whole UTF-8 sequence (the C locale shows only ASCII), else the one byte. */
size_t unshown_bytes(const char *s, size_t len);
/* Display columns of a UTF-8 string. */
int text_columns(const char *s);
/* Draws the line being edited at (y, x) in `room` columns, scrolled to show the cursor;
 * returns the cursor's column. By columns, not characters: a wide character takes two. A
 * line break (a pasted prompt's) shows as one column: a return symbol, or a reversed '|'
 * without UTF-8. */
int draw_lineedit(ui_context *ui, WINDOW *w, int y, int x, int room, const lineedit *e);

#endif
