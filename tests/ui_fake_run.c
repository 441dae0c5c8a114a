/* ui_fake_run — a stand-in for a headless run, for the `pesc view` tests: writes a run log
 * with the stats writers (a start line, step records with recognisable routing and a held-out
 * loss every 20 steps or --eval-every N, events) and, with --control, answers the control
 * socket's commands the way a run does (pause, resume, lr, aux, eval, save, stop, generate),
 * logging each as an event.
 *
 *   ui_fake_run LOG [--steps N] [--interval-ms MS] [--control SOCKET]
 *                   [--layers L] [--experts E] [--sources S] [--eval-every N]
 *                   [--loss-offset X] [--answers N] [--tokenless-source S]
 * --tokenless-source: source S has no tokens in any step (its per-source loads are 0).
 * --loss-offset shifts the training loss, so that runs to compare (pesc view A B) differ.
 * --answers: each evaluation also scores N generated answers (--eval-generate), their share
 * right rising from 0.25 to 0.75 at the last step.
 * Without --interval-ms, writes every step at once and exits. */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "stats.h"
#include "util.h"

typedef struct fake_run {
    FILE *log;
    stats_run run;
    stats_record *r;
    long step, total, eval_every;
    double lr, aux_coef, elapsed;
    double loss_offset;
    long answers;
    int tokenless_source;        /* -1: every source has tokens */
    int lr_overridden, paused, stopped;
} fake_run;

static void write_line(fake_run *f, char *line)
{
    fprintf(f->log, "%s\n", line);
    fflush(f->log);
    free(line);
}

static void event(fake_run *f, const char *kind, const char *text)
{
    stats_event e = {.step = f->step, .elapsed_s = f->elapsed};
    snprintf(e.kind, sizeof e.kind, "%s", kind);
    snprintf(e.text, sizeof e.text, "%s", text);
    write_line(f, stats_event_json(&e));
}

/* Routing the views can be checked against: layer 0 leans on expert 0, the last layer never
 * uses its last expert, the rest drift around even. */
static void fill_step(fake_run *f)
{
    stats_record *r = f->r;
    stats_shape s = r->shape;
    int L = s.n_layers, E = s.n_experts;
    f->step++;
    f->elapsed += 0.25;
    r->step = f->step;
    r->total_steps = f->total;
    r->epoch = f->step / 50.0;
    r->tokens = f->step * 2048;
    r->loss = f->loss_offset + 2.0 + 8.0 / (1.0 + f->step * 0.05) + 0.15 * sin(f->step * 0.7);
    r->aux_loss = 0.01 + 0.002 * cos(f->step * 0.3);
    r->eval_tokens = f->step % f->eval_every == 0 ? 512 : 0;   /* held-out data scored */
    r->eval_loss = r->eval_tokens ? 2.5 + 6.0 / (1.0 + f->step * 0.04) : 0.0;
    r->eval_answers = r->eval_tokens ? f->answers : 0;
    r->eval_answer_accuracy = 0.25 + 0.5 * (double)f->step / (double)f->total;
    r->lr = f->lr;
    r->lr_overridden = f->lr_overridden;
    r->grad_norm = 1.0 + 0.2 * sin(f->step);
    r->tokens_per_s = 8192;
    r->step_s = 0.25;
    r->elapsed_s = f->elapsed;
    r->eta_s = (f->total - f->step) * 0.25;
    r->rss_bytes = 512.0 * 1024 * 1024;
    for (int l = 0; l < L; l++) {
        double sum = 0;
        float *load = r->load + (size_t)l * E;
        for (int e = 0; e < E; e++) {
            double x = 1.0 + 0.3 * sin(f->step * 0.1 + e + l);
            if (l == 0 && e == 0)
                x = 3.5;
            if (l == L - 1 && e == E - 1)
                x = 0;
            load[e] = (float)x;
            sum += x;
        }
        for (int e = 0; e < E; e++) {
            size_t i = (size_t)l * E + e;
            load[e] = (float)(load[e] / sum);
            r->first[i] = load[e];
            r->gate[i] = 0.5f;
            r->norm_down[i] = 1.0f + 0.01f * e;
            r->norm_up[i] = (float)(0.001 * f->step * (1 + l) * (1 + 0.1 * e));
            r->update_ratio[i] = 1e-3f;
        }
        r->entropy[l] = 1.5f;
    }
    for (int src = 0; src < s.n_sources; src++)
        for (int i = 0; i < L * E; i++) {
            int e = i % E;
            r->source_load[(size_t)src * L * E + i] =
                src == f->tokenless_source ? 0.0f : (float)((e % s.n_sources == src ? 3.0 : 1.0) /
                                                            (E + 2.0 * E / s.n_sources));
        }
    stats_record_derive(r);
    write_line(f, stats_record_json(r));
    if (f->step % 20 == 0)
        event(f, "save", "checkpoint written");
    if (f->step == f->total)
        event(f, "finish", "all steps done");
}

/* The PROMPT of "generate [KEY=VALUE]... PROMPT", its "\n" and "\\" decoded as a run
 * decodes them (monitor.h). */
static void prompt_of(const char *args, char *out, size_t cap)
{
    for (;;) {
        while (*args == ' ')
            args++;
        const char *eq = strchr(args, '='), *space = strchr(args, ' ');
        if (!eq || (space && space < eq))
            break;
        args = space ? space : eq + strlen(eq);
    }
    size_t n = 0;
    for (; *args && n + 1 < cap; args++) {
        char c = *args;
        if (c == '\\' && (args[1] == 'n' || args[1] == '\\'))
            c = *++args == 'n' ? '\n' : '\\';
        out[n++] = c;
    }
    out[n] = '\0';
}

static void answer(fake_run *f, const char *line, char *reply, size_t cap)
{
    char text[240];
    if (strcmp(line, "pause") == 0) {
        f->paused = 1;
        event(f, "pause", "");
        snprintf(reply, cap, "ok: paused");
    } else if (strcmp(line, "resume") == 0) {
        f->paused = 0;
        event(f, "resume", "");
        snprintf(reply, cap, "ok: resumed");
    } else if (strncmp(line, "lr ", 3) == 0) {
        double v = atof(line + 3 + (line[3] == '*'));
        double old = f->lr;
        f->lr = line[3] == '*' ? f->lr * v : v;
        f->lr_overridden = 1;
        snprintf(text, sizeof text, STATS_LR_SET, f->lr, old);
        event(f, "lr", text);
        snprintf(reply, cap, "ok: lr %.3g", f->lr);
    } else if (strncmp(line, "aux ", 4) == 0) {
        f->aux_coef = atof(line + 4);
        snprintf(text, sizeof text, "%.3g", f->aux_coef);
        event(f, "aux", text);
        snprintf(reply, cap, "ok: aux %.3g", f->aux_coef);
    } else if (strcmp(line, "eval") == 0) {   /* at once, as a paused run scores */
        snprintf(text, sizeof text, STATS_EVAL_LOSS " over 512 tokens of 8 records (0.1 s)",
                 0.7771);
        event(f, "eval", text);
        snprintf(reply, cap, "ok: eval after the next step, or at once when paused");
    } else if (strcmp(line, "save") == 0) {
        event(f, "save", "checkpoint written");
        snprintf(reply, cap, "ok: saved");
    } else if (strcmp(line, "stop") == 0) {
        event(f, "stop", "stopped by a command");
        f->stopped = 1;
        snprintf(reply, cap, "ok: stopping");
    } else if (strncmp(line, "generate ", 9) == 0) {
        char prompt[200];
        prompt_of(line + 9, prompt, sizeof prompt);
        snprintf(text, sizeof text, "echo: %s", prompt);
        event(f, "generate", text);
        snprintf(reply, cap, "ok: generating");
    } else {
        snprintf(reply, cap, "error: unknown command '%.200s'", line);
    }
}

static int open_control(const char *path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path);
    unlink(path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(fd, 4) != 0) {
        fprintf(stderr, "ui_fake_run: %s: %s\n", path, strerror(errno));
        exit(1);
    }
    return fd;
}

/* Serves the control socket for up to ms milliseconds. */
static void serve(fake_run *f, int listener, int *client, int ms)
{
    double until = pesc_now() + ms / 1000.0;
    static char buf[4096];
    static size_t have;
    while (!f->stopped) {
        int left = (int)((until - pesc_now()) * 1000);
        if (left <= 0)
            return;
        struct pollfd p[2] = {{.fd = listener, .events = POLLIN}, {.fd = *client, .events = POLLIN}};
        if (poll(p, *client >= 0 ? 2 : 1, left) <= 0)
            continue;
        if (p[0].revents & POLLIN) {
            if (*client >= 0)
                close(*client);
            *client = accept(listener, NULL, NULL);
            have = 0;
        }
        if (*client >= 0 && (p[1].revents & (POLLIN | POLLHUP))) {
            ssize_t n = read(*client, buf + have, sizeof buf - 1 - have);
            if (n <= 0) {
                close(*client);
                *client = -1;
                continue;
            }
            have += (size_t)n;
            char *nl;
            while ((nl = memchr(buf, '\n', have))) {
                *nl = '\0';
                char reply[300];
                answer(f, buf, reply, sizeof reply);
                strcat(reply, "\n");
                if (write(*client, reply, strlen(reply)) < 0)
                    break;
                have -= (size_t)(nl + 1 - buf);
                memmove(buf, nl + 1, have);
            }
        }
    }
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    if (argc < 2) {
        fprintf(stderr, "usage: ui_fake_run LOG [--steps N] [--interval-ms MS] [--control SOCKET]\n");
        return 2;
    }
    fake_run f = {.total = 60, .eval_every = 20, .lr = 2e-4, .tokenless_source = -1};
    long interval = 0;
    const char *control = NULL;
    stats_shape shape = {.n_layers = 4, .n_experts = 8, .top_k = 2, .n_sources = 2};
    for (int i = 2; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--steps") == 0) f.total = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--interval-ms") == 0) interval = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--control") == 0) control = argv[i + 1];
        else if (strcmp(argv[i], "--layers") == 0) shape.n_layers = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--experts") == 0) shape.n_experts = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--sources") == 0) shape.n_sources = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--eval-every") == 0) f.eval_every = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--loss-offset") == 0) f.loss_offset = atof(argv[i + 1]);
        else if (strcmp(argv[i], "--answers") == 0) f.answers = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--tokenless-source") == 0) f.tokenless_source = atoi(argv[i + 1]);
    }
    f.log = fopen(argv[1], "w");
    if (!f.log) {
        fprintf(stderr, "ui_fake_run: %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    f.run.shape = shape;
    snprintf(f.run.model, sizeof f.run.model, "fake-llama-tiny");
    snprintf(f.run.backend, sizeof f.run.backend, "cpu (fake)");
    for (int s = 0; s < shape.n_sources; s++)
        snprintf(f.run.sources[s], sizeof f.run.sources[s], "data/source-%c%s.jsonl", 'a' + s,
                 s == 1 ? "-dialogue" : "");   /* a name longer than the view once showed */
    f.run.total_steps = f.total;
    f.run.adapter_dim = 16;
    f.run.adapter_scale = 1.0;
    if (control)   /* as a run names its socket (the tests give absolute paths) */
        snprintf(f.run.control, sizeof f.run.control, "%s", control);
    write_line(&f, stats_run_json(&f.run));
    f.r = stats_record_new(shape);
    int listener = control ? open_control(control) : -1, client = -1;
    while (f.step < f.total && !f.stopped) {
        if (!f.paused)
            fill_step(&f);
        if (listener >= 0)
            serve(&f, listener, &client, (int)(interval > 0 ? interval : 1));
        else if (interval > 0)
            usleep((useconds_t)interval * 1000);
    }
    /* a finished run keeps answering a little while, so a viewer can still talk to it */
    if (listener >= 0 && !f.stopped)
        serve(&f, listener, &client, 3000);
    if (client >= 0)
        close(client);
    if (listener >= 0) {
        close(listener);
        unlink(control);
    }
    stats_record_delete(f.r);
    fclose(f.log);
    return 0;
}
