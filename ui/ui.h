/* ui — the ncurses workbench: routing, losses, adapter norms, a status line and a prompt
 * console over any run that implements `monitor` (a live session or a followed log).
 *
 * Owns: the terminal while ui_run runs. Must not: touch the model, the device or the run's
 * memory; everything it knows comes from monitor_snapshot, everything it does goes through
 * monitor_command. It never waits for a training step. */
#ifndef PESC_UI_H
#define PESC_UI_H

#include "monitor.h"

typedef struct ui_options {
    const char *command;         /* begins its lines on stderr ("pesc tui"); NULL: "pesc" */
    const char *title;           /* what is shown: "demo", a model name, a log path */
    int live;                    /* the run lives in this process: quitting saves and stops it */
    int read_only;               /* commands are refused (a log without --attach): the key bar
                                    leaves out the steering keys */
    double refresh_hz;           /* snapshots per second, at most 10; 0: 10 */
    int no_color;                /* character shades instead of colours (NO_COLOR also does it) */
} ui_options;

/* 0 when standard input and output are a terminal the workbench can use, else 1 after
 * "COMMAND: the workbench needs a terminal ..." on stderr. ui_run checks it too; a command
 * that starts work first (a run that opens its log) checks it before that. */
int ui_terminal_check(const char *command);

/* Runs the workbench until the person quits (or, for a live run, until the run has stopped
 * after q). Restores the terminal on every way out. Returns the exit status: 0, or 1 when the
 * terminal could not be used or the run failed (one line on stderr after the screen is
 * restored). */
int ui_run(monitor *m, const ui_options *o);

#endif
