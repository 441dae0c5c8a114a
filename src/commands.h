/* commands — one function per `pesc` command; main.c only dispatches. Each takes the
 * command's own argv (argv[0] is the command name) and returns the exit status. */
#ifndef PESC_COMMANDS_H
#define PESC_COMMANDS_H

int cmd_eval(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_devices(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_fetch(int argc, char **argv);
int cmd_plugins(int argc, char **argv);
int cmd_view(int argc, char **argv);
int cmd_tui(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_demo_data(int argc, char **argv);
int cmd_export(int argc, char **argv);

#endif
