/* control — the `--control PATH` socket: a local UNIX socket (mode 0600) on its own thread
 * that takes the monitor's command lines, one per line, and answers each with one line.
 * Up to 16 clients are served at once (an attached view keeps its connection open); one
 * more gets a one-line refusal. The monitor is called from the control thread only.
 * Must not: interpret commands itself (the monitor does). */
#ifndef PESC_CONTROL_H
#define PESC_CONTROL_H

#include "monitor.h"
#include "util.h"

typedef struct control_server control_server;

control_server *control_open(const char *path, monitor *m, pesc_error *err);
void control_close(control_server *c);   /* stops the thread and removes the socket */

/* Client side (pesc view --attach, tests): sends one line, reads the reply line. */
int control_send(const char *path, const char *line, char *reply, size_t reply_len,
                 pesc_error *err);

#endif
