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

struct control_server {
    char *path;
    int listen_fd;
    int wake[2];                 /* a byte here ends the thread */
    monitor *m;
    pthread_t thread;
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

/* Serves one connection until it closes or the server stops. */
static void serve(control_server *c, int fd)
{
    char buf[1024];
    size_t used = 0;
    for (;;) {
        struct pollfd p[2] = {{fd, POLLIN, 0}, {c->wake[0], POLLIN, 0}};
        if (poll(p, 2, -1) < 0 && errno != EINTR)
            return;
        if (p[1].revents)
            return;
        if (!(p[0].revents & (POLLIN | POLLHUP)))
            continue;
        ssize_t got = read(fd, buf + used, sizeof buf - 1 - used);
        if (got <= 0)
            return;
        used += (size_t)got;
        char *nl;
        while ((nl = memchr(buf, '\n', used))) {
            *nl = '\0';
            char reply[512];
            monitor_command(c->m, buf, reply, sizeof reply);
            size_t len = strlen(reply);
            reply[len++] = '\n';
            /* MSG_NOSIGNAL: a client gone before its reply must not kill the run */
            if (send(fd, reply, len, MSG_NOSIGNAL) != (ssize_t)len)
                return;
            used -= (size_t)(nl + 1 - buf);
            memmove(buf, nl + 1, used);
        }
        if (used == sizeof buf - 1) {   /* an endless line: refuse it and drop the client */
            static const char too_long[] = "error: command line too long\n";
            if (send(fd, too_long, sizeof too_long - 1, MSG_NOSIGNAL) < 0)
                return;
            return;
        }
    }
}

static void *control_main(void *arg)
{
    control_server *c = arg;
    for (;;) {
        struct pollfd p[2] = {{c->listen_fd, POLLIN, 0}, {c->wake[0], POLLIN, 0}};
        if (poll(p, 2, -1) < 0 && errno != EINTR)
            break;
        if (p[1].revents)
            break;
        if (p[0].revents & POLLIN) {
            int fd = accept(c->listen_fd, NULL, NULL);
            if (fd >= 0) {
                serve(c, fd);
                close(fd);
            }
        }
    }
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
    c->path = xstrdup(path);
    c->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    mode_t old = umask(0177);   /* the socket is born 0600 */
    int bound = c->listen_fd >= 0 && bind(c->listen_fd, (struct sockaddr *)&a, sizeof a) == 0;
    umask(old);
    if (!bound || listen(c->listen_fd, 4) != 0 || pipe(c->wake) != 0) {
        pesc_fail(err, "--control %s: %s", path, strerror(errno));
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
    int rc = -1;
    if (send(fd, line, len, MSG_NOSIGNAL) == (ssize_t)len && send(fd, "\n", 1, MSG_NOSIGNAL) == 1) {
        size_t used = 0;
        ssize_t got;
        while (used + 1 < reply_len && (got = read(fd, reply + used, 1)) == 1 && reply[used] != '\n')
            used++;
        reply[used] = '\0';
        rc = used > 0 ? 0 : pesc_fail(err, "%s: no reply", path);
    } else {
        pesc_fail(err, "%s: %s", path, strerror(errno));
    }
    close(fd);
    return rc;
}
