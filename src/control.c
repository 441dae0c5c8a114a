/* control — see control.h. */
#include "control.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* Clients are served side by side by the one control thread (poll), so an attached view that
 * keeps its connection open does not lock out a command from another terminal. Each client
 * has its own line buffer; commands run one at a time, in the order they arrive. */
#define CONTROL_CLIENTS 16
#define CONTROL_LINE 1024        /* bytes of one command line, with its newline */
#define CONTROL_REPLY 512        /* bytes of the monitor's reply, with its NUL */
#define CONTROL_SKIP (64 * 1024) /* bytes of a refused long line read past before its
                                    client is dropped */

typedef struct control_client {
    int fd;                      /* -1: a free slot */
    size_t used;
    size_t skipped;              /* > 0: a line too long, refused, read past to its newline */
    char line[CONTROL_LINE + 1]; /* and a NUL after it */
} control_client;

struct control_server {
    char *path;
    int listen_fd;
    int wake[2];                 /* a byte here ends the thread */
    monitor *m;
    pthread_t thread;
    control_client clients[CONTROL_CLIENTS];   /* the control thread's own */
};

static int socket_address(const char *path, struct sockaddr_un *a, pesc_error *err)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof a->sun_path)
        return pesc_fail(err, "--control %s: the path is longer than a UNIX socket allows (%zu)",
                         path, sizeof a->sun_path - 1);
    memcpy(a->sun_path, path, strlen(path) + 1);
    return 0;
}

/* Sends all of text or fails. MSG_DONTWAIT: a client that does not read its replies must not
 * stall the others, so once its socket is full it is dropped. MSG_NOSIGNAL: a client gone
 * before its reply must not kill the run. */
static int send_line(int fd, const char *text, size_t len)
{
    return send(fd, text, len, MSG_NOSIGNAL | MSG_DONTWAIT) == (ssize_t)len ? 0 : -1;
}

static void client_drop(control_client *cl)
{
    close(cl->fd);
    cl->fd = -1;
    cl->used = cl->skipped = 0;
}

/* Answers one command line of len bytes (line[len] is its NUL). 0, or -1 when the reply
 * cannot go out. */
static int client_answer(control_server *c, control_client *cl, char *line, size_t len)
{
    char reply[CONTROL_REPLY], shown[4 * CONTROL_REPLY + 2];
    line[len] = '\0';
    /* the monitor takes a C string: "resume\0junk" would pass for resume */
    if (memchr(line, '\0', len))
        snprintf(reply, sizeof reply, "error: a NUL byte in the command");
    else
        monitor_command(c->m, line, reply, sizeof reply);
    /* a reply may quote what the client sent ("error: unknown command 'X'"), and a client
     * can send escape sequences that would redraw or retitle the terminal of whoever reads
     * the reply: it goes out as one line with its control bytes shown */
    size_t shown_len = pesc_show_controls(shown, sizeof shown - 1, reply);
    shown[shown_len++] = '\n';
    return send_line(cl->fd, shown, shown_len);
}

/* Past a refused long line: what was read up to its newline goes. 0, or -1 when the line
 * goes on past CONTROL_SKIP bytes (no command line is that long: the client is dropped). */
static int client_skip(control_client *cl)
{
    char *nl = memchr(cl->line, '\n', cl->used);
    if (!nl) {
        cl->skipped += cl->used;
        cl->used = 0;
        return cl->skipped > CONTROL_SKIP ? -1 : 0;
    }
    cl->used -= (size_t)(nl + 1 - cl->line);
    memmove(cl->line, nl + 1, cl->used);
    cl->skipped = 0;
    return 0;
}

/* Reads what the client sent and answers each whole line. -1: the client is done (it hung
 * up, sent an endless line, or stopped reading its replies) and is to be dropped. */
static int client_read(control_server *c, control_client *cl)
{
    ssize_t got = read(cl->fd, cl->line + cl->used, sizeof cl->line - 1 - cl->used);
    if (got < 0 && errno == EINTR)
        return 0;
    if (got < 0)
        return -1;
    if (got == 0) {
        /* the client closed its end: a last line without its newline (printf pause | socat)
         * is a command all the same, answered before the connection ends */
        if (cl->used > 0 && !cl->skipped)
            client_answer(c, cl, cl->line, cl->used);
        return -1;
    }
    cl->used += (size_t)got;
    if (cl->skipped && client_skip(cl) != 0)
        return -1;
    char *nl;
    while (!cl->skipped && (nl = memchr(cl->line, '\n', cl->used))) {
        if (client_answer(c, cl, cl->line, (size_t)(nl - cl->line)) != 0)
            return -1;
        cl->used -= (size_t)(nl + 1 - cl->line);
        memmove(cl->line, nl + 1, cl->used);
    }
    if (cl->used == sizeof cl->line - 1) {
        /* refused, and the rest of the line read and let go: closing with it unread would
         * reset the connection, and the client would see that instead of the reply */
        static const char too_long[] = "error: command line too long\n";
        if (send_line(cl->fd, too_long, sizeof too_long - 1) != 0)
            return -1;
        cl->skipped = cl->used;
        cl->used = 0;
    }
    return 0;
}

static void client_accept(control_server *c)
{
    int fd = accept(c->listen_fd, NULL, NULL);
    if (fd < 0)
        return;
    for (int i = 0; i < CONTROL_CLIENTS; i++)
        if (c->clients[i].fd < 0) {
            c->clients[i].fd = fd;
            c->clients[i].used = c->clients[i].skipped = 0;
            return;
        }
    char full[128];
    int len = snprintf(full, sizeof full, "error: too many clients on this control socket "
                       "(%d); close one and try again\n", CONTROL_CLIENTS);
    send_line(fd, full, (size_t)len);
    close(fd);
}

static void *control_main(void *arg)
{
    control_server *c = arg;
    for (;;) {
        struct pollfd p[2 + CONTROL_CLIENTS];
        control_client *polled[CONTROL_CLIENTS];
        int n = 0;
        p[0] = (struct pollfd){c->wake[0], POLLIN, 0};
        p[1] = (struct pollfd){c->listen_fd, POLLIN, 0};
        for (int i = 0; i < CONTROL_CLIENTS; i++)
            if (c->clients[i].fd >= 0) {
                p[2 + n] = (struct pollfd){c->clients[i].fd, POLLIN, 0};
                polled[n++] = &c->clients[i];
            }
        if (poll(p, (nfds_t)(2 + n), -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[0].revents)
            break;
        /* clients first: the slots of those that hung up are free for the next ones */
        for (int k = 0; k < n; k++)
            if (p[2 + k].revents && client_read(c, polled[k]) != 0)
                client_drop(polled[k]);
        if (p[1].revents & POLLIN)
            client_accept(c);
    }
    for (int i = 0; i < CONTROL_CLIENTS; i++)
        if (c->clients[i].fd >= 0)
            client_drop(&c->clients[i]);
    return NULL;
}

control_server *control_open(const char *path, monitor *m, pesc_error *err)
{
    struct sockaddr_un a;
    if (socket_address(path, &a, err) != 0)
        return NULL;
    /* a socket left by a run that died is replaced; a live one is not */
    struct stat st;
    if (lstat(path, &st) == 0) {
        char reply[8];
        if (!S_ISSOCK(st.st_mode) || control_send(path, "", reply, sizeof reply, NULL) == 0) {
            pesc_fail(err, "--control %s: %s", path, S_ISSOCK(st.st_mode) ?
                      "another run is listening there" : "the path exists and is not a socket");
            return NULL;
        }
        unlink(path);
    }
    control_server *c = xcalloc(1, sizeof *c);
    c->m = m;
    for (int i = 0; i < CONTROL_CLIENTS; i++)
        c->clients[i].fd = -1;
    c->path = xstrdup(path);
    c->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    char *dir = pesc_parent_dir(path);   /* made as an output's is; bind says what it cannot */
    pesc_make_dirs(dir);
    free(dir);
    mode_t old = umask(0177);   /* the socket is born 0600 */
    int bound = c->listen_fd >= 0 && bind(c->listen_fd, (struct sockaddr *)&a, sizeof a) == 0;
    umask(old);
    if (!bound || listen(c->listen_fd, CONTROL_CLIENTS) != 0 || pipe(c->wake) != 0) {
        int e = errno;
        const char *fix = e == ENOENT || e == ENOTDIR ? "; its directory cannot be made: name "
                                                        "a path in another"
                          : e == EACCES || e == EROFS ? "; name a path in a directory you can "
                                                        "write"
                                                      : "";
        pesc_fail(err, "--control %s: %s%s", path, strerror(e), fix);
        if (c->listen_fd >= 0)
            close(c->listen_fd);
        free(c->path);
        free(c);
        return NULL;
    }
    chmod(path, 0600);
    if (pthread_create(&c->thread, NULL, control_main, c) != 0) {
        pesc_fail(err, "--control %s: cannot start its thread", path);
        close(c->listen_fd);
        close(c->wake[0]);
        close(c->wake[1]);
        unlink(path);
        free(c->path);
        free(c);
        return NULL;
    }
    return c;
}

void control_close(control_server *c)
{
    if (!c)
        return;
    if (write(c->wake[1], "x", 1) != 1)
        perror("pesc: control socket");
    pthread_join(c->thread, NULL);
    close(c->listen_fd);
    close(c->wake[0]);
    close(c->wake[1]);
    unlink(c->path);
    free(c->path);
    free(c);
}

int control_send(const char *path, const char *line, char *reply, size_t reply_len,
                 pesc_error *err)
{
    struct sockaddr_un a;
    if (socket_address(path, &a, err) != 0)
        return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        pesc_fail(err, "%s: %s (is the run still going, with --control %s?)", path,
                  strerror(errno), path);
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (!*line) {   /* just probing whether someone listens */
        close(fd);
        return 0;
    }
    size_t len = strlen(line);
    int sent = send(fd, line, len, MSG_NOSIGNAL) == (ssize_t)len &&
               send(fd, "\n", 1, MSG_NOSIGNAL) == 1;
    int send_errno = errno;
    /* read even when the line did not go out: a server with no room for another client
     * says so and hangs up, maybe before the line arrived */
    size_t used = 0;
    ssize_t got;
    while (used + 1 < reply_len && (got = read(fd, reply + used, 1)) == 1 && reply[used] != '\n')
        used++;
    reply[used] = '\0';
    close(fd);
    if (used > 0)
        return 0;
    if (!sent)
        return pesc_fail(err, "%s: %s", path, strerror(send_errno));
    return pesc_fail(err, "%s: no reply", path);
}
