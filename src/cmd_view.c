/* cmd_view — `pesc view RUN.jsonl [OTHER.jsonl ...] [--attach SOCKET]`: the workbench on a
 * headless run, from its log, following it as it grows; with --attach, steering it through its
 * control socket. Further logs are runs whose losses the loss panel draws over the first's. */
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"
#include "commands.h"
#include "logview.h"
#include "ui.h"

static const char view_usage[] =
    "usage: pesc view RUN.jsonl [OTHER.jsonl ...] [--attach SOCKET] [--no-color] [--refresh HZ]\n"
    "\n"
    "The workbench on a headless run (pesc train --headless --log RUN.jsonl): routing, losses,\n"
    "adapter norms and events, read from the run's log and followed as it grows. Without\n"
    "--attach the view only watches; q leaves it and the run goes on.\n"
    "\n"
    "Up to 4 further logs are runs to compare: the loss panel draws each one's smoothed loss\n"
    "(and held-out loss) over RUN's, by step, in its own colour, with its name and latest\n"
    "value; they are followed as they grow too. Everything else is RUN's.\n"
    "\n"
    "  --attach SOCKET  also steer the run through its control socket (pesc train --control):\n"
    "                   Space pause/resume, + - l LR, a aux, s save, / prompt, : any command\n"
    "  --no-color       character shades instead of colours (as NO_COLOR=1 does)\n"
    "  --refresh HZ     snapshots per second, 1 to 10 (default 10)\n"
    "\n"
    "Keys: ? help, Tab or 1-4 panels, f full screen, q quit. See pesc-view(1).\n";

int cmd_view(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"attach", required_argument, NULL, 'a'}, {"no-color", no_argument, NULL, 'n'},
        {"no-colour", no_argument, NULL, 'n'}, {"refresh", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    const char *attach = NULL;
    ui_options o = {.command = "pesc view", .read_only = 1};
    long hz = 10;
    int c;
    while ((c = cli_getopt("view", argc, argv, "h", longopts)) != -1) {
        switch (c) {
        case 'a':
            if (cli_path("view", "--attach", optarg, "the run's --control socket", &attach))
                return EXIT_USAGE;
            break;
        case 'n': o.no_color = 1; break;
        case 'r':
            if (cli_parse_long(optarg, 1, 10, &hz) != 0)
                return cli_usage_error("view", "--refresh %s: a whole number from 1 to 10", optarg);
            break;
        case 'h': fputs(view_usage, stdout); return 0;
        default: return EXIT_USAGE;
        }
    }
    if (optind >= argc)
        return cli_usage_error("view", "which run log? pesc view RUN.jsonl");
    int n_compared = argc - optind - 1;
    if (n_compared > MONITOR_COMPARED)
        return cli_usage_error("view", "%d runs to compare with %s: at most %d", n_compared,
                               argv[optind], MONITOR_COMPARED);
    const char *path, *compared[MONITOR_COMPARED];
    if (cli_path("view", "RUN.jsonl", argv[optind], "the run's --log file", &path))
        return EXIT_USAGE;
    for (int i = 0; i < n_compared; i++)
        if (cli_path("view", "OTHER.jsonl", argv[optind + 1 + i], "a run's --log file to compare",
                     &compared[i]))
            return EXIT_USAGE;
    long stall_s = 30;
    const char *stall = getenv("PESC_VIEW_STALL_S");
    if (stall && cli_parse_long(stall, 1, 86400, &stall_s) != 0) {
        fprintf(stderr, "pesc view: PESC_VIEW_STALL_S=%s: expected a whole number of seconds "
                        "from 1 to 86400; fix or unset it\n", stall);
        return 1;
    }
    monitor m;
    pesc_error err;
    if (logview_open(&m, path, attach, (double)stall_s, &err) != 0)
        return cli_fail("view", &err);
    for (int i = 0; i < n_compared; i++)
        if (logview_compare(&m, compared[i], &err) != 0) {
            m.ops->close(m.ctx);
            return cli_fail("view", &err);
        }
    o.title = path;
    o.read_only = attach == NULL;
    o.refresh_hz = (double)hz;
    int status = ui_run(&m, &o);
    m.ops->close(m.ctx);
    return status;
}
