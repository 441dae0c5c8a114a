/* fetch_view — a fetcher's progress on standard error, for command-line use: a bar per
 * running transfer on a terminal (redrawn 5 times a second), plain lines otherwise (one per
 * finished file, one per retry, one per running transfer every 10 s). Its own thread reads
 * fetcher_snapshot; the TUI draws from the same snapshot instead.
 *
 * Owns: the drawing thread and what it has shown. Must not: print anything but progress
 * (failures are the caller's to report, once). */
#ifndef PESC_FETCH_VIEW_H
#define PESC_FETCH_VIEW_H

#include "fetch.h"

typedef struct fetch_view fetch_view;

/* NULL when the thread cannot start (then nothing is shown; the downloads still run). */
fetch_view *fetch_view_start(fetcher *f);
/* Draws the final state and joins the thread. Accepts NULL. */
void fetch_view_stop(fetch_view *v);

/* fetch_url_to_cache and fetch_resolve_model with progress on stderr: what a command that
 * takes --data URL or --model URL calls. A local path is copied as it is. */
int fetch_view_url_to_cache(const char *url, char **path, pesc_error *err);
int fetch_view_resolve_model(const char *url, char **dir, pesc_error *err);
/* A model URL's tokenizer files only (fetcher_get_tokenizer), for commands that need no
 * weights; a local directory is copied. */
int fetch_view_resolve_tokenizer(const char *url, char **dir, pesc_error *err);

#endif
