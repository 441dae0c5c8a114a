/* cmd_tui — `pesc tui` and `pesc` with no arguments: the training session with the ncurses
 * workbench in front of it (DESIGN section 2: the UI on the main thread, the trainer on its
 * own). URLs in --model and --data download first, inside the workbench (launcher.h). */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "control.h"
#include "launcher.h"
#include "train_options.h"
#include "ui.h"

static const char tui_usage[] =
    "usage: pesc tui [TRAIN OPTIONS]\n"
    "       pesc                     the built-in demo\n"
    "\n"
    "Crafts the model into a PESC Mixture-of-Experts and instruction-tunes it while the\n"
    "workbench shows the routing of every layer, the losses and the adapter norms. Space\n"
    "pauses, + and - change the learning rate, / asks the model a question, ? lists the keys.\n"
    "Without --model and --data: the built-in demo model and its generated tasks.\n"
    "\n";

int cmd_tui(int argc, char **argv)
{
    train_config c;
    train_config_default(&c);
    int status = train_config_parse(&c, "tui", argc, argv);
    if (status == TRAIN_HELP) {
        fputs(tui_usage, stdout);
        fputs(train_options_help, stdout);
        fputs(pesc_options_help, stdout);
        return 0;
    }
    if (status >= 0)
        return status;
    if (c.headless)
        return cli_usage_error("tui", "--headless is the run without the workbench: that is "
                               "pesc train --headless");
    /* before the run opens (and truncates) its log, and before a model loads for nothing */
    if (ui_terminal_check("pesc tui") != 0)
        return 1;
    int demo = !c.model && !c.init_config && c.n_sources == 0 && !c.resume;
    if (demo)
        train_config_demo(&c);
    pesc_error err = {{0}};
    c.answer_after_end = 1;   /* the screen stays after training: its model can be prompted */
    c.command = "pesc tui";   /* a local model loads before the screen is drawn: say so */
    launcher *l = launcher_new(&c, &err);
    if (!l) {
        if (demo)   /* the built-in demo's own files are missing */
            fprintf(stderr, "pesc tui: the demo cannot start: %s (was pesc installed, or is it run "
                            "from its build tree?)\n", err.msg);
        else
            cli_fail("tui", &err);
        return 1;
    }
    /* the socket before the run opens its log: a run refused for it has truncated nothing */
    control_server *ctl = NULL;
    if ((c.control_path && !(ctl = control_open(c.control_path, launcher_monitor(l), &err))) ||
        launcher_start(l, &err) != 0) {
        control_close(ctl);
        launcher_delete(l);
        return cli_fail("tui", &err);
    }
    ui_options o = {.command = "pesc tui", .live = 1,
                    .title = c.model ? c.model : c.resume ? c.resume : "demo"};
    int ui_status = ui_run(launcher_monitor(l), &o);
    status = launcher_finish(l);
    control_close(ctl);
    if (status != 0 && ui_status == 0)
        fprintf(stderr, "pesc tui: %s\n", launcher_error(l));
    launcher_delete(l);
    return status ? status : ui_status;
}
