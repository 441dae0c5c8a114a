/* logview — a `monitor` over a headless run's JSONL log (`pesc view`): reads the whole log,
 * then follows it as it grows, like tail -f (a truncated or replaced file is read again from
 * the start). History (losses, loads, events) is built from every line.
 *
 * With a control socket (`--attach`), commands go to the run: one line out, one line back.
 * Without one, commands are refused with a reply that says how to steer. A run that hangs up
 * the connection the view holds, and whose socket then refuses a new one, is gone: killed,
 * its log never to say it ended. It is shown stopped, with a note, within a second or so.
 *
 * Runs to compare (`pesc view RUN OTHER...`) are logs read the same way, their losses alone
 * passed on.
 *
 * Owns: the file descriptors, the socket and everything read so far. Must not: block for long;
 * a snapshot reads at most 80 ms of log (a long one is read over several, said in the view's
 * reading), a command waits at most 2 s. */
#ifndef PESC_LOGVIEW_H
#define PESC_LOGVIEW_H

#include "monitor.h"

/* Opens the log (it must exist) and, when control_socket is not NULL, connects to the run.
 * A running log without a new line for stall_s seconds says so in the view's note, as do
 * malformed lines skipped. Fills m; m->ops->close(m->ctx) releases it. */
int logview_open(monitor *m, const char *log_path, const char *control_socket, double stall_s,
                 pesc_error *err);

/* Adds a run to compare with the one m follows (at most MONITOR_COMPARED): its log is checked
 * now as logview_open checks one, and its first lines must hold a record or be none yet; then
 * it is followed too, its losses in each snapshot's compared series. Commands never reach it. */
int logview_compare(monitor *m, const char *log_path, pesc_error *err);

#endif
