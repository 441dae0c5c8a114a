/* launcher — a training session started behind a front end that is already on screen: what
 * --model and --data name as URLs is downloaded first (on the launcher's thread, with the
 * progress of every transfer in the monitor view, for the workbench's Downloads panel), then
 * the session is made and started. The front end watches one monitor from the first frame to
 * the last and never learns which phase it is in: before the session exists the view says
 * STARTING with what is happening in `message`; a failed download or a model that does not
 * load is a FAILED run with the reason.
 *
 * Without URLs the session is made synchronously by launcher_new, so a bad local path fails
 * with a one-line error before any screen is drawn, exactly as before. Nothing is written
 * (the log, the sinks) before launcher_start: the front end takes its --control socket in
 * between, so a run refused for it has truncated no file.
 *
 * Threads: launcher_new/finish/delete belong to the caller's thread; the monitor may be
 * called from any thread (the UI, the control socket). Must not: draw anything. */
#ifndef PESC_LAUNCHER_H
#define PESC_LAUNCHER_H

#include "monitor.h"
#include "train_options.h"
#include "util.h"

typedef struct launcher launcher;

/* Makes the run (local paths) or gets ready to download (URLs); nothing runs yet. NULL with
 * err when it cannot start at all. */
launcher *launcher_new(const train_config *c, pesc_error *err);
/* Starts the run: at once (local paths: the session opens its outputs, which may refuse it,
 * -1 with err) or after the downloads (on the launcher's thread). */
int launcher_start(launcher *l, pesc_error *err);
/* What front ends watch and steer. Until the session runs, commands other than `stop` answer
 * with an error that says the run is still starting; `stop` cancels the downloads (their
 * .part files stay for the next start to resume). */
monitor *launcher_monitor(launcher *l);
/* Stops what still runs (downloads or the session) and waits for it. The exit status: 0
 * finished or stopped cleanly, 1 failed (launcher_error says why). */
int launcher_finish(launcher *l);
const char *launcher_error(const launcher *l);
/* Accepts NULL; finishes first when launcher_finish was not called. */
void launcher_delete(launcher *l);

#endif
