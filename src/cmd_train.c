/* cmd_train — `pesc train --headless`: the training session with no screen. Progress goes to
 * standard output (one line rewritten in place on a terminal, plain periodic lines
 * otherwise), every stat to the --log JSONL, and --control opens the command socket. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "control.h"
#include "session.h"
#include "train_options.h"

static const char train_usage[] =
    "usage: pesc train --headless [TRAIN OPTIONS]\n"
    "\n"
    "Crafts the model into a PESC Mixture-of-Experts (or trains every weight with --train\n"
    "full) and instruction-tunes it without a screen. Ctrl-C, SIGTERM or a hang-up (SIGHUP:\n"
    "the SSH session gone) finishes the step, saves (with --save) and exits 0; a second\n"
    "Ctrl-C exits at once, the last checkpoint intact. train is always headless: --headless\n"
    "may be left out.\n"
    "\n";

static volatile sig_atomic_t interrupts, hung_up, first_signal;

static void on_signal(int sig)
{
    if (sig == SIGINT && interrupts > 0)
        _exit(130);   /* the second Ctrl-C: leave now; checkpoints are written atomically */
    if (sig == SIGHUP)
        hung_up = 1;
    if (!interrupts)
        first_signal = sig;
    interrupts++;
}

/* After a hang-up the terminal is gone, and with it the progress lines: that is no failure of
 * the run (main.c fails a command whose output was lost), so what stdio still holds goes to
 * /dev/null and the exit status is the run's. */
static void forget_lost_terminal(void)
{
    int null = open("/dev/null", O_WRONLY);
    if (null >= 0) {
        dup2(null, STDOUT_FILENO);
        close(null);
    }
    clearerr(stdout);
}

/* Ctrl-C, SIGTERM and a hang-up (an SSH session that drops takes the run's terminal with it)
 * stop the run as the stop command does: finish the step, save. A SIGHUP ignored when pesc
 * started (nohup) stays ignored. Standard output that goes away (a `| tee` ended by the same
 * hang-up, a `| head`) ends the progress lines, not the run: SIGPIPE would kill it unsaved;
 * the exit status says that output was lost (main.c), once the run has ended. */
static void catch_signals(void)
{
    struct sigaction sa, hup;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (sigaction(SIGHUP, NULL, &hup) == 0 && hup.sa_handler != SIG_IGN)
        sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* The progress line: rewritten in place on a terminal, else a line each time (but not the
 * same step's twice, as when the last report was already the final step's). */
static void print_progress(const session_progress *p, int tty, int final, long *printed)
{
    char eta[32];
    pesc_format_duration(p->eta_s, eta, sizeof eta);
    if (p->step == 0 || ferror(stdout) || (!tty && p->step == *printed))
        return;
    *printed = p->step;
    printf("%sstep %ld/%ld  loss %.4f  aux %.4f  lr %.3g  %.0f tok/s  ETA %s%s", tty ? "\r" : "",
           p->step, p->total_steps, p->loss, p->aux_loss, p->lr, p->tokens_per_s, eta,
           tty ? "   " : "\n");
    if (tty && final)
        printf("\n");
    fflush(stdout);
}

int cmd_train(int argc, char **argv)
{
    train_config c;
    train_config_default(&c);
    int status = train_config_parse(&c, "train", argc, argv);
    if (status == TRAIN_HELP) {
        fputs(train_usage, stdout);
        fputs(train_options_help, stdout);
        fputs(pesc_options_help, stdout);
        return 0;
    }
    if (status >= 0)
        return status;
    c.headless = 1;
    if (!c.model && !c.init_config && c.n_sources == 0 && !c.resume)
        train_config_demo(&c);   /* the built-in demo, without a screen */
    pesc_error err = {{0}};
    c.command = "pesc train";
    session *s = session_new(&c, &err);
    if (!s)
        return cli_fail("train", &err);
    /* the socket before the session opens its log: a run refused for it has truncated nothing */
    control_server *ctl = NULL;
    if (c.control_path && !(ctl = control_open(c.control_path, session_monitor(s), &err))) {
        session_delete(s);
        return cli_fail("train", &err);
    }
    catch_signals();
    if (session_start(s, &err) != 0) {
        control_close(ctl);
        session_delete(s);
        return cli_fail("train", &err);
    }
    int tty = isatty(STDOUT_FILENO), stopping = 0;
    long printed = -1;
    double last_line = 0.0;
    session_progress p;
    for (;;) {
        struct timespec nap = {0, 200 * 1000 * 1000};
        nanosleep(&nap, NULL);
        if (interrupts && !stopping) {
            char reply[128];
            session_command(s, "stop", reply, sizeof reply);
            fprintf(stderr, "\npesc train: %sstopping after this step%s (Ctrl-C again to quit "
                    "now)\n", first_signal == SIGTERM ? "SIGTERM: " : first_signal == SIGHUP
                    ? "hang-up: " : "", session_saves(s) ? " and saving" : "");
            stopping = 1;
        }
        session_get_progress(s, &p);
        if (p.state >= MONITOR_FINISHED)
            break;
        double now = pesc_now();
        if (now - last_line >= (tty ? 0.5 : 10.0)) {
            print_progress(&p, tty, 0, &printed);
            last_line = now;
        }
    }
    status = session_wait(s);
    session_get_progress(s, &p);
    print_progress(&p, tty, 1, &printed);
    if (hung_up)
        forget_lost_terminal();
    control_close(ctl);
    if (status != 0)
        fprintf(stderr, "pesc train: %s\n", session_error(s));
    session_delete(s);
    return status;
}
