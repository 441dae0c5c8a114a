/* sockcmd — sends one command line to a --control socket and prints the reply (tests); with
 * --hang-up it closes the connection without waiting for the reply, as an impatient client
 * does. */
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "control.h"

static int hang_up(const char *path, const char *line)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        perror(path);
        return 1;
    }
    int ok = write(fd, line, strlen(line)) == (ssize_t)strlen(line) && write(fd, "\n", 1) == 1;
    close(fd);
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "--hang-up") == 0)
        return hang_up(argv[2], argv[3]);
    if (argc != 3) {
        fprintf(stderr, "usage: sockcmd [--hang-up] SOCKET LINE\n");
        return 2;
    }
    char reply[512];
    pesc_error err;
    if (control_send(argv[1], argv[2], reply, sizeof reply, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    printf("%s\n", reply);
    return 0;
}
