/* test_session — the training session as front ends use it:
 *   - prompts answered mid-training leave the run's losses exactly as without them;
 *   - a resumed run continues bit for bit (float losses) from its checkpoint;
 *   - non-finite steps are skipped, counted, halve the LR after --nan-limit, never saved;
 *     a run that stays non-finite fails naming the checkpoint to resume from, or that none
 *     was saved;
 *   - commands: replies, lr and aux changes, malformed lines change nothing, a prompt's
 *     escaped line breaks and backslashes are decoded;
 *   - resuming on another base model or crafting is refused with what differs;
 *   - the workbench's ended run still answers prompts until a stop.
 * Exit 0 pass, 1 fail. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "checkpoint.h"
#include "safetensors.h"
#include "session.h"
#include "check.h"

static char tmp[256], data_path[300], base[1024];

static void nap(void)
{
    struct timespec t = {0, 2 * 1000 * 1000};
    nanosleep(&t, NULL);
}

static void config(train_config *c, long steps)
{
    train_config_default(c);
    c->model = base;
    snprintf(c->sources[0].path, sizeof c->sources[0].path, "%s", data_path);
    c->sources[0].weight = 1.0;
    c->n_sources = 1;
    c->seq = 24;
    c->batch = 4;
    c->steps = steps;
    c->optim.lr = 1e-2f;
    c->pesc.experts = 4;
    c->pesc.adapter_dim = 8;
    c->backend = "cpu";
}

/* A started session whose first nan_steps steps get NaN gradients. */
static session *start_with_nan(const train_config *c, int nan_steps)
{
    pesc_error err = {{0}};
    session *s = session_new(c, &err);
    if (s && nan_steps)
        session_inject_nan(s, nan_steps);
    if (!s || session_start(s, &err) != 0) {
        printf("FAIL session: %s\n", err.msg);
        exit(1);
    }
    return s;
}

static session *start(const train_config *c)
{
    return start_with_nan(c, 0);
}

/* Runs to the end and returns the per-step losses (malloc'd, n). */
static float *losses_of(session *s, int *n)
{
    session_wait(s);
    monitor_view *v = monitor_view_new();
    monitor_snapshot(session_monitor(s), v);
    float *out = malloc(sizeof(float) * (size_t)(v->n_points ? v->n_points : 1));
    for (int i = 0; i < v->n_points; i++)
        out[i] = v->points[i].loss;
    *n = v->n_points;
    monitor_view_delete(v);
    return out;
}

static long wait_step(session *s, long after)
{
    session_progress p;
    do {
        nap();
        session_get_progress(s, &p);
    } while (p.step <= after && p.state < MONITOR_FINISHED);
    return p.step;
}

static void test_generation_interleaved(void)
{
    train_config c;
    config(&c, 12);
    int n_plain, n_mixed;
    float *plain = losses_of(start(&c), &n_plain);   /* leaked session: ends with the test */
    session *s = start(&c);
    char reply[256];
    int generated = 0;
    for (long step = 0; step < 12;) {
        session_command(s, "pause", reply, sizeof reply);
        session_command(s, "generate max=5 temp=0.8 ids:1,2,3", reply, sizeof reply);
        generated += strncmp(reply, "ok", 2) == 0;
        session_command(s, "resume", reply, sizeof reply);
        step = wait_step(s, step);
    }
    monitor_view *v = monitor_view_new();
    float *mixed = losses_of(s, &n_mixed);
    monitor_snapshot(session_monitor(s), v);
    int same = n_plain == 12 && n_mixed == 12 && memcmp(plain, mixed, 12 * sizeof(float)) == 0;
    REPORT(same && generated >= 3 && v->n_generated_tokens > 0,
           "%d prompts answered mid-training; the 12 losses are bit-identical to a run without",
           generated);
    monitor_view_delete(v);
    free(plain);
    free(mixed);
    session_delete(s);
}

/* The workbench's run after its end: generate is answered (and logged), other commands are
 * refused naming what still works, and a stop (here in the middle of an answer) ends it with
 * the run's own status. Without answer_after_end an ended run refuses all. */
static void test_answer_after_end(void)
{
    train_config c;
    config(&c, 2);
    c.answer_after_end = 1;
    session *s = start(&c);
    session_progress p;
    do {
        nap();
        session_get_progress(s, &p);
    } while (p.state < MONITOR_FINISHED);
    char reply[256], lr[256], stop[256];
    session_command(s, "generate max=400 temp=0.8 ids:1,2,3", reply, sizeof reply);
    int ok = strncmp(reply, "ok", 2) == 0;
    monitor_view *v = monitor_view_new();
    long tokens = 0;
    for (int i = 0; i < 20000 && tokens == 0; i++) {   /* the answer's first tokens, or 40 s */
        nap();
        monitor_snapshot(session_monitor(s), v);
        tokens = v->n_generated_tokens;
    }
    session_command(s, "lr 1e-3", lr, sizeof lr);
    session_command(s, "stop", stop, sizeof stop);
    int status = session_wait(s);
    monitor_snapshot(session_monitor(s), v);
    REPORT(ok && tokens > 0 && v->state == MONITOR_FINISHED && status == 0 &&
           strstr(lr, "error: the run has ended; its model still answers prompts") &&
           strncmp(stop, "ok", 2) == 0,
           "an ended workbench run answers a prompt (%ld tokens: %s), refuses lr (%s), "
           "stops (%s), status %d", tokens, reply, lr, stop, status);
    session_command(s, "generate max=5 ids:1", reply, sizeof reply);
    REPORT(strcmp(reply, "error: the run has ended") == 0, "after the stop: %s", reply);
    monitor_view_delete(v);
    session_delete(s);

    config(&c, 1);   /* pesc train: nothing waits once the run is over */
    s = start(&c);
    session_wait(s);
    session_command(s, "generate max=5 ids:1", reply, sizeof reply);
    REPORT(strcmp(reply, "error: the run has ended") == 0, "a headless run, ended: %s", reply);
    session_delete(s);
}

/* The first step's update ratio, ||update|| / ||D, U|| per expert, from the values alone:
 * U starts at zero, so nothing reaches D's gradient (without weight decay D stays as it was)
 * and U's update is U itself: the ratio is ||U|| / sqrt(||D||^2 + ||U||^2), in the record's
 * own norms, for every expert (0 for one that got no tokens). */
static void test_update_ratio(void)
{
    train_config c;
    config(&c, 1);
    session *s = start(&c);
    session_wait(s);
    monitor_view *v = monitor_view_new();
    monitor_snapshot(session_monitor(s), v);
    const stats_record *r = v->last;
    int n = r ? r->shape.n_layers * r->shape.n_experts : 0, good = n > 0, moved = 0;
    double worst = 0.0;
    for (int i = 0; i < n; i++) {
        double d = r->norm_down[i], u = r->norm_up[i];
        double want = u > 0 ? u / sqrt(d * d + u * u) : 0.0;
        double e = fabs(r->update_ratio[i] - want) / (want > 0 ? want : 1.0);
        worst = e > worst || !isfinite(e) ? e : worst;
        moved += r->update_ratio[i] > 0;
    }
    REPORT(good && worst < 1e-4 && moved > 0, "first step's update ratios are ||U|| / ||D, U|| "
           "(%d of %d experts moved; worst relative error %.1e)", moved, n, worst);
    monitor_view_delete(v);
    session_delete(s);
}

static void test_resume(void)
{
    train_config c;
    config(&c, 12);
    char save[300];
    snprintf(save, sizeof save, "%s/ckpt", tmp);
    c.save_dir = save;
    c.save_every = 6;
    int n_whole, n_rest;
    session *a = start(&c);
    float *whole = losses_of(a, &n_whole);
    session_delete(a);
    char from[400];
    snprintf(from, sizeof from, "%s/step-00000006", save);
    train_config r;
    config(&r, 12);
    r.resume = from;
    session *b = start(&r);
    float *rest = losses_of(b, &n_rest);
    session_delete(b);
    REPORT(n_whole == 12 && n_rest == 6 && memcmp(whole + 6, rest, 6 * sizeof(float)) == 0,
           "resume from step 6: steps 7-12 bit-identical to the uninterrupted run (%g %g)",
           n_rest ? rest[5] : 0.0, whole[11]);
    /* another crafting and another base model are refused */
    pesc_error err = {{0}};
    r.pesc.experts = 8;
    r.pesc.given |= PESC_GIVEN_EXPERTS;   /* as --experts 8 on the command line */
    session *x = session_new(&r, &err);
    REPORT(!x && strstr(err.msg, "--experts 4") && strstr(err.msg, from),
           "resume with another crafting refused: %s", err.msg);
    session_delete(x);
    config(&r, 12);
    r.resume = from;
    char other[1100];
    snprintf(other, sizeof other, "%s/../pesc-e4k1", base);
    r.model = other;
    x = session_new(&r, &err);
    REPORT(!x && strstr(err.msg, "whose weights differ: give --model /") &&
           strstr(err.msg, "/llama-gqa-f32 to continue it"),
           "resume on another base refused, naming the run's base: %s", err.msg);
    session_delete(x);
    /* stopped before its first step, a run resumed from its own --save directory has nothing
     * new to save (it once wrote the checkpoint it came from again), unless a live change
     * came first */
    for (int change = 0; change < 2; change++) {
        config(&r, 20);
        r.resume = save;
        r.save_dir = save;
        x = session_new(&r, &err);
        char reply[128];
        if (x && change)
            session_command(x, "lr 0.004", reply, sizeof reply);
        if (x)
            session_command(x, "stop", reply, sizeof reply);
        int saves = -1;
        if (x && session_start(x, &err) == 0) {
            session_wait(x);
            monitor_view *v = monitor_view_new();
            monitor_snapshot(session_monitor(x), v);
            saves = 0;
            for (int i = 0; i < v->n_events; i++)
                saves += strcmp(v->events[i].kind, "save") == 0;
            monitor_view_delete(v);
        }
        session_delete(x);
        REPORT(saves == change, "resumed from its --save and stopped at once%s: %d saves, wanted "
               "%d", change ? " after an lr" : "", saves, change);
    }
    free(whole);
    free(rest);
}

static void test_nan(void)
{
    train_config c;
    config(&c, 10);
    c.nan_limit = 2;
    char save[300];
    snprintf(save, sizeof save, "%s/nan", tmp);
    c.save_dir = save;
    pesc_error err = {{0}};
    session *s = start_with_nan(&c, 2);
    session_wait(s);
    session_progress p;
    session_get_progress(s, &p);
    monitor_view *v = monitor_view_new();
    monitor_snapshot(session_monitor(s), v);
    int halved = 0;
    for (int i = 0; i < v->n_events; i++)
        halved |= strcmp(v->events[i].kind, "lr") == 0 && strstr(v->events[i].text, "halved");
    /* the final checkpoint holds no NaN */
    char *dir = NULL;
    int finite = 1;
    st_file f = {0};
    char *path = NULL;
    if (checkpoint_find(save, &dir, &err) == 0) {
        path = pesc_path_join(dir, "trainables.safetensors");
        if (st_open(&f, path, &err) == 0)
            for (int i = 0; i < f.n_tensors; i++) {
                float *x = malloc(f.tensors[i].n_elements * sizeof *x);
                st_to_f32(&f.tensors[i], x, &err);
                for (size_t j = 0; j < f.tensors[i].n_elements; j++)
                    finite &= isfinite(x[j]);
                free(x);
            }
    }
    REPORT(p.nan_skipped == 2 && p.step == 10 && halved && finite && f.n_tensors > 0 &&
               fabs(p.lr - 5e-3) < 1e-9,
           "2 NaN steps skipped and counted, LR halved to %g, checkpoint finite", p.lr);
    st_close(&f);
    free(path);
    free(dir);
    monitor_view_delete(v);
    session_delete(s);
}

/* steps that stay non-finite (NaN weights or data) end the run as failed after the LR has
 * been halved 10 times, rather than skipping steps forever */
static void test_nan_forever(void)
{
    train_config c;
    config(&c, 100000);
    c.nan_limit = 2;
    session *s = start_with_nan(&c, 1000000);
    int status = session_wait(s);
    session_progress p;
    session_get_progress(s, &p);
    const char *why = session_error(s);
    REPORT(status == 1 && p.step == 0 && why &&
               strstr(why, "22 steps in a row were non-finite, also after halving the learning "
                           "rate 10 times") &&
               strstr(why, "no checkpoint of this run was saved (--save DIR --save-every N"),
           "a run whose steps stay NaN fails after 22 skips: status %d: %s", status,
           why ? why : "(no error)");
    session_delete(s);
}

/* a run that diverges after it has saved names that checkpoint to resume from (it once
 * said "an earlier checkpoint" whether or not there was one) */
static void test_nan_after_save(void)
{
    train_config c;
    config(&c, 100000);
    c.nan_limit = 1;
    char save[300], reply[256];
    snprintf(save, sizeof save, "%s/diverged", tmp);
    c.save_dir = save;
    c.save_every = 2;
    session *s = start(&c);
    wait_step(s, 2);
    session_command(s, "pause", reply, sizeof reply);
    session_progress p;
    do {
        nap();
        session_get_progress(s, &p);
    } while (p.state != MONITOR_PAUSED);
    session_inject_nan(s, 1000000);   /* while paused: the trainer reads it between steps */
    long saved = p.step / 2 * 2;
    session_command(s, "resume", reply, sizeof reply);
    int status = session_wait(s);
    char want[400];
    snprintf(want, sizeof want, "resume from %s/step-%08ld (the last checkpoint) with a lower --lr",
             save, saved);
    REPORT(status == 1 && strstr(session_error(s), want), "a run diverged after step %ld says: %s",
           saved, session_error(s));
    session_delete(s);
}

static void test_commands(void)
{
    train_config c;
    config(&c, 100000);
    session *s = start(&c);
    char reply[256];
    static const char *const bad[] = {"frobnicate", "lr", "lr abc", "lr *0", "aux -1",
                                      "pause now", "generate", "generate max=0 hi"};
    int all_refused = 1;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        session_command(s, bad[i], reply, sizeof reply);
        all_refused &= strncmp(reply, "error: ", 7) == 0;
    }
    REPORT(all_refused, "malformed commands get an error reply (%s)", reply);
    session_command(s, "lr 0.004", reply, sizeof reply);
    int ok = strncmp(reply, "ok", 2) == 0;
    session_command(s, "lr *0.5", reply, sizeof reply);
    ok &= strncmp(reply, "ok", 2) == 0;
    session_command(s, "aux 0.05", reply, sizeof reply);
    ok &= strncmp(reply, "ok", 2) == 0;
    long at = wait_step(s, 0);
    at = wait_step(s, at + 1);
    session_command(s, "pause", reply, sizeof reply);
    session_progress p1, p2;
    wait_step(s, at);
    session_get_progress(s, &p1);
    for (int i = 0; i < 50; i++)
        nap();
    session_get_progress(s, &p2);
    monitor_view *v = monitor_view_new();
    monitor_snapshot(session_monitor(s), v);
    REPORT(ok && fabs(p2.lr - 0.002) < 1e-12 && v->last && v->last->lr_overridden &&
               p1.state == MONITOR_PAUSED && p2.step == p1.step,
           "lr 0.004 then *0.5 gives %g (overridden), paused holds the step at %ld", p2.lr,
           p2.step);
    /* while paused, the snapshot's status line says the rate resuming will use */
    session_command(s, "lr 0.001", reply, sizeof reply);
    for (int i = 0; i < 2000 && fabs(v->last->lr - 0.001) > 1e-12; i++) {
        nap();
        monitor_snapshot(session_monitor(s), v);
    }
    session_get_progress(s, &p2);
    REPORT(fabs(v->last->lr - 0.001) < 1e-12 && v->last->lr_overridden &&
               fabs(p2.lr - 0.001) < 1e-12 && v->last->step == p1.step,
           "paused, lr 0.001 shows at once: %g (step %ld)", v->last->lr, v->last->step);
    /* a command is one line: a prompt's line break travels as \n, a backslash as \\ (no
     * prompt of ids has one: 510 of them are counted as the 514 bytes they decode to) */
    session_command(s, "generate max=1 ids:1\\n2", reply, sizeof reply);
    for (int i = 0; i < 2000 && !v->prompt[0]; i++) {
        nap();
        monitor_snapshot(session_monitor(s), v);
    }
    char backslashes[16 + 2 * 510] = "generate ids:", long_reply[256];
    for (int i = 0; i < 510; i++)
        strcat(backslashes, "\\\\");
    session_command(s, backslashes, long_reply, sizeof long_reply);
    REPORT(strncmp(reply, "ok", 2) == 0 && strcmp(v->prompt, "ids:1\n2") == 0 &&
               strstr(long_reply, "the prompt is 514 bytes"),
           "generate decodes its prompt's \\n and \\\\ (reply '%s', prompt '%s'; '%s')",
           reply, v->prompt, long_reply);
    session_command(s, "stop", reply, sizeof reply);
    session_wait(s);
    session_get_progress(s, &p2);
    REPORT(p2.state == MONITOR_STOPPED, "stop while paused ends the run");
    monitor_view_delete(v);
    session_delete(s);
}

int main(void)
{
    const char *root = getenv("top_srcdir");
    snprintf(base, sizeof base, "%s/tests/reference/data/llama-gqa-f32", root ? root : ".");
    snprintf(tmp, sizeof tmp, "%s/pesc-session.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmp))
        return 99;
    snprintf(data_path, sizeof data_path, "%s/data.jsonl", tmp);
    FILE *f = fopen(data_path, "w");
    uint64_t x = 12345;
    for (int r = 0; r < 64; r++) {
        fprintf(f, "{\"input_ids\": [");
        for (int t = 0; t < 20; t++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            fprintf(f, "%s%d", t ? ", " : "", (int)((x >> 33) % 64));
        }
        fprintf(f, "]}\n");
    }
    fclose(f);
    test_generation_interleaved();
    test_resume();
    test_nan();
    test_nan_forever();
    test_nan_after_save();
    test_commands();
    test_update_ratio();
    test_answer_after_end();
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0)
        printf("note: %s left behind\n", tmp);
    printf("%d failure%s\n", failures, failures == 1 ? "" : "s");
    return failures ? 1 : 0;
}
