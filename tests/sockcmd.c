/* sockcmd — sends one command line to a --control socket and prints the reply (tests). */
#include <stdio.h>

#include "control.h"

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: sockcmd SOCKET LINE\n");
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
