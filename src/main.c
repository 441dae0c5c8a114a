/* main — `pesc` command dispatch. Nothing else lives here (DESIGN section 3). */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "config.h"

static const char overview[] =
    "usage: pesc [COMMAND [OPTIONS]]\n"
    "\n"
    "pesc turns a dense Llama-family model into a Mixture-of-Experts with Parameter-Efficient\n"
    "Sparsity Crafting and instruction-tunes it, live, from the terminal. With no command it\n"
    "opens the workbench on the built-in demo.\n"
    "\n"
    "Commands:\n"
    "  tui       the workbench on a chosen model and data\n"
    "  eval      mean next-token loss of a model over a dataset, the share of its right\n"
    "            answers to it (--generate), or its accuracy on multiple-choice questions\n"
    "            (--choices: MMLU, ARC, HellaSwag, ...)\n"
    "  inspect   summary of a model directory, checkpoint, safetensors file or dataset\n"
    "  devices   compute devices this build can use\n"
    "  train     craft and instruction-tune a model without a screen (--headless)\n"
    "  generate  answer a prompt, or hold a conversation (--chat), with a model\n"
    "  export    a checkpoint as a Camelidae-layout model directory\n"
    "  bench     training-step throughput and MFU on a random PESC model\n"
    "  tokenize  text to token ids with a Hugging Face tokenizer.json\n"
    "  fetch     download files and models (hf://, http(s)://) into the cache\n"
    "  plugins   dataset formats and metric sinks: built-in and plugin modules\n"
    "  view      the workbench on a headless run's log (--attach SOCKET to steer it)\n"
    "  demo-data the built-in demo's instruction data, as camelidae JSONL\n"
    "\n"
    "  pesc COMMAND --help    options of one command\n"
    "  pesc --version         version and built backends\n"
    "  man pesc               the manual\n";

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
} command;

static const command commands[] = {
    {"eval", cmd_eval},
    {"inspect", cmd_inspect},
    {"devices", cmd_devices},
    {"bench", cmd_bench},
    {"train", cmd_train},
    {"tokenize", cmd_tokenize},
    {"fetch", cmd_fetch},
    {"plugins", cmd_plugins},
    {"view", cmd_view},
    {"tui", cmd_tui},
    {"generate", cmd_generate},
    {"demo-data", cmd_demo_data},
    {"export", cmd_export},
};

/* Output that never reached its file is a failure, as for any Unix filter (`pesc eval >
 * /dev/full` must not exit 0): stdout is flushed and checked once, after every command. A
 * command that has already failed has said why. */
static int finish_output(const char *cmd, int rc)
{
    int failed = ferror(stdout);
    errno = 0;
    if (fflush(stdout) != 0)
        failed = 1;
    if (!failed || rc != 0)
        return rc;
    /* a pipe whose reader has gone (| head, a tee ended by a hang-up) fails with no errno
     * left when the failed write was earlier: poll tells it */
    int error = errno;
    /* the write that failed was earlier (a progress line, flushed then): one byte more, on
     * output already broken, says why */
    struct stat st;
    if (error == 0 && fstat(STDOUT_FILENO, &st) == 0 && !S_ISFIFO(st.st_mode) &&
        !S_ISSOCK(st.st_mode) && write(STDOUT_FILENO, "\n", 1) < 0)   /* a pipe: poll says */
        error = errno;
    struct pollfd out = {.fd = STDOUT_FILENO, .events = POLLOUT};
    if (error == EPIPE || (poll(&out, 1, 0) == 1 && (out.revents & POLLERR)))
        fprintf(stderr, "pesc%s%s: cannot write to standard output: its reader closed it "
                "(a pipe); what came after was not shown\n", cmd ? " " : "", cmd ? cmd : "");
    else
        fprintf(stderr, "pesc%s%s: cannot write to standard output%s%s%s\n", cmd ? " " : "",
                cmd ? cmd : "", error ? ": " : "", error ? strerror(error) : "",
                pesc_write_fix(error));
    return 1;
}

int main(int argc, char **argv)
{
    /* a file past ulimit -f fails its write (EFBIG), which its writer reports, rather than
     * killing pesc with no word */
    signal(SIGXFSZ, SIG_IGN);
    if (argc < 2) {
        char *demo[] = {(char *)"tui", NULL};
        return finish_output(NULL, cmd_tui(1, demo));
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        fputs(overview, stdout);
        return finish_output(NULL, 0);
    }
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0) {
#ifdef HAVE_CUDA
        printf("pesc %s (backends: cpu, cuda)\n", PACKAGE_VERSION);
#else
        printf("pesc %s (backends: cpu)\n", PACKAGE_VERSION);
#endif
        return finish_output(NULL, 0);
    }
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            return finish_output(argv[1], commands[i].run(argc - 1, argv + 1));
    const char *names[sizeof commands / sizeof *commands];
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        names[i] = commands[i].name;
    const char *near = cli_nearest_word(names, sizeof names / sizeof *names, argv[1]);
    if (near)
        fprintf(stderr, "pesc: unknown command '%s': did you mean pesc %s?\n", argv[1], near);
    else
        fprintf(stderr, "pesc: unknown command '%s' (see pesc --help)\n", argv[1]);
    return EXIT_USAGE;
}
