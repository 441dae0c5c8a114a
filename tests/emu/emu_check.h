/* emu_check.h — what the emulator's own tests (test_cuda_emu, test_cuda_runtime_emu) share: the
 * verdict lines, a fixed random sequence, and a check that a call aborts with a message. */
#ifndef PESC_EMU_CHECK_H
#define PESC_EMU_CHECK_H

#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static int failures;
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

__attribute__((format(printf, 2, 3))) static void verdict(bool ok, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs(ok ? "ok   " : "FAIL ", stdout);
    vprintf(fmt, ap);
    putchar('\n');
    va_end(ap);
    failures += !ok;
}

/* [0, 1) */
static double uniform(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

/* Runs body in a child; passes if the child dies of SIGABRT with `expect` in its first line on
 * stderr. */
static void expect_abort(const char *what, void (*body)(void), const char *expect)
{
    int fds[2];
    if (pipe(fds)) {
        perror("pipe");
        exit(99);
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        struct rlimit no_core = {0, 0};
        setrlimit(RLIMIT_CORE, &no_core);
        dup2(fds[1], 2);
        close(fds[0]);
        body();
        _exit(0);
    }
    close(fds[1]);
    char message[512] = "";
    size_t used = 0;
    ssize_t got;
    while ((got = read(fds[0], message + used, sizeof message - 1 - used)) > 0)
        used += (size_t)got;
    message[used] = '\0';
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    verdict(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT && strstr(message, expect),
            "%s aborts: %.*s", what, (int)strcspn(message, "\n"), message);
}

#endif
