/* sockcmd — sends one command line to a --control socket and prints the reply (tests).
 *   sockcmd SOCKET LINE             one line, its reply on stdout
 *   sockcmd SOCKET LINE LINE...     the lines in one write, so they arrive together, and a
 *                                   reply for each on stdout
 *   sockcmd --hang-up SOCKET LINE   closes the connection without waiting for the reply, as
 *                                   an impatient client does
 *   sockcmd --hold N SOCKET LINE    N connections at once, as attached views keep theirs:
 *                                   LINE on each, each reply on stdout as it comes, then all
 *                                   are held open until it is killed
 *   sockcmd --half-close SOCKET LINE...   the lines, then its end closed, as
 *                                   `echo LINE | socat - UNIX-CONNECT:SOCKET` does: what
 *                                   comes back until the server closes, on stdout
 *   sockcmd --stdin SOCKET          the bytes of stdin as they are (no newline added, NUL
 *                                   bytes kept), then its end closed, as
 *                                   `printf pause | socat - UNIX-CONNECT:SOCKET` does: what
 *                                   comes back on stdout; exit 1 when the connection ends in
 *                                   an error (a reset) rather than the server's close */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "control.h"

static int connect_to(const char *path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        perror(path);
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static int send_line(int fd, const char *line)
{
    return write(fd, line, strlen(line)) == (ssize_t)strlen(line) && write(fd, "\n", 1) == 1;
}

static int hang_up(const char *path, const char *line)
{
    int fd = connect_to(path);
    if (fd < 0)
        return 1;
    int ok = send_line(fd, line);
    close(fd);
    return ok ? 0 : 1;
}

/* Copies one reply line to stdout; 0, or -1 when the server hung up first. */
static int print_reply(int fd)
{
    char c;
    ssize_t got;
    while ((got = read(fd, &c, 1)) == 1 && c != '\n')
        putchar(c);
    putchar('\n');
    fflush(stdout);
    return got == 1 ? 0 : -1;
}

static int together(const char *path, char **lines, int n)
{
    size_t len = 0;
    for (int i = 0; i < n; i++)
        len += strlen(lines[i]) + 1;
    char *all = malloc(len + 1), *at = all;
    for (int i = 0; i < n; i++)
        at += sprintf(at, "%s\n", lines[i]);
    int fd = connect_to(path);
    int ok = fd >= 0 && write(fd, all, len) == (ssize_t)len;
    for (int i = 0; ok && i < n; i++)
        ok = print_reply(fd) == 0;
    free(all);
    if (fd >= 0)
        close(fd);
    return ok ? 0 : 1;
}

static int half_close(const char *path, char **lines, int n)
{
    int fd = connect_to(path);
    int ok = fd >= 0;
    for (int i = 0; ok && i < n; i++)
        ok = send_line(fd, lines[i]);
    ok = ok && shutdown(fd, SHUT_WR) == 0;
    char buf[512];
    ssize_t got;
    while (ok && (got = read(fd, buf, sizeof buf)) > 0)
        fwrite(buf, 1, (size_t)got, stdout);
    if (fd >= 0)
        close(fd);
    return ok ? 0 : 1;
}

static int from_stdin(const char *path)
{
    int fd = connect_to(path);
    if (fd < 0)
        return 1;
    char buf[4096];
    size_t n;
    int ok = 1;
    while (ok && (n = fread(buf, 1, sizeof buf, stdin)) > 0)
        ok = write(fd, buf, n) == (ssize_t)n;
    if (!ok)
        perror("sockcmd: write");
    ok = ok && shutdown(fd, SHUT_WR) == 0;
    ssize_t got = 0;
    while (ok && (got = read(fd, buf, sizeof buf)) > 0)
        fwrite(buf, 1, (size_t)got, stdout);
    if (ok && got < 0) {
        fprintf(stderr, "sockcmd: read: %s\n", strerror(errno));
        ok = 0;
    }
    close(fd);
    return ok ? 0 : 1;
}

static int hold(int n, const char *path, const char *line)
{
    for (int i = 0; i < n; i++) {
        int fd = connect_to(path);   /* left open until the process ends */
        if (fd < 0 || !send_line(fd, line))
            return 1;
        print_reply(fd);
    }
    for (;;)
        pause();
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "--hang-up") == 0)
        return hang_up(argv[2], argv[3]);
    if (argc == 5 && strcmp(argv[1], "--hold") == 0 && atoi(argv[2]) > 0)
        return hold(atoi(argv[2]), argv[3], argv[4]);
    if (argc >= 4 && strcmp(argv[1], "--half-close") == 0)
        return half_close(argv[2], argv + 3, argc - 3);
    if (argc == 3 && strcmp(argv[1], "--stdin") == 0)
        return from_stdin(argv[2]);
    if (argc < 3 || argv[1][0] == '-') {
        fprintf(stderr, "usage: sockcmd [--hang-up | --hold N] SOCKET LINE | "
                        "[--half-close] SOCKET LINE... | --stdin SOCKET\n");
        return 2;
    }
    if (argc > 3)
        return together(argv[1], argv + 2, argc - 2);
    char reply[512];
    pesc_error err;
    if (control_send(argv[1], argv[2], reply, sizeof reply, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    printf("%s\n", reply);
    return 0;
}
