/* cmd_export — `pesc export CHECKPOINT -o DIR`: a checkpoint as a Camelidae-layout model
 * directory (export.h says what is in it). */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "export.h"

static const char export_usage[] =
    "usage: pesc export CHECKPOINT -o DIR [--model DIR|URL] [--force]\n"
    "\n"
    "Writes a training checkpoint as a model directory in Camelidae's layout: config.json\n"
    "(the base's, plus num_experts, topk, adapter_dim, moe_scaling), model.safetensors (the\n"
    "base weights with LoRA merged in, and every router and adapter under the Camelidae names)\n"
    "and the base's tokenizer files. pesc eval, generate and train take DIR as --model.\n"
    "A --train full checkpoint becomes a dense model with its trained weights.\n"
    "\n"
    "  CHECKPOINT       a step-N directory written by --save, or the --save directory itself\n"
    "                   (its newest checkpoint)\n"
    "  -o, --output DIR the directory to write; it appears whole or not at all\n"
    "  --model DIR|URL  the base model the run trained (default: the one the checkpoint's\n"
    "                   state.json names; checkpoints older than export need it)\n"
    "  --force          replace DIR when it exists and is not empty\n";

static int parse_export(export_options *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"output", required_argument, NULL, 'o'}, {"model", required_argument, NULL, 'm'},
        {"force", no_argument, NULL, 'f'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    *o = (export_options){.command = "pesc export"};
    int c;
    while ((c = cli_getopt("export", argc, argv, "ho:", longopts)) != -1) {
        switch (c) {
        case 'o':
            if (cli_path("export", "-o", optarg, "the directory to write", &o->out))
                return EXIT_USAGE;
            break;
        case 'm':
            if (cli_path("export", "--model", optarg, "the base model directory or URL",
                         &o->base))
                return EXIT_USAGE;
            break;
        case 'f': o->force = 1; break;
        case 'h': fputs(export_usage, stdout); return 0;
        default: return EXIT_USAGE;
        }
    }
    if (optind < argc)
        o->checkpoint = argv[optind++];
    if (optind < argc)
        return cli_unexpected("export", argv[optind], "one CHECKPOINT at a time");
    if (!o->checkpoint)
        return cli_usage_error("export", "CHECKPOINT is required");
    if (cli_path("export", "CHECKPOINT", o->checkpoint, "a step-N or --save directory",
                 &o->checkpoint))
        return EXIT_USAGE;
    if (!o->out)
        return cli_usage_error("export", "-o DIR is required");
    return -1;   /* go on */
}

int cmd_export(int argc, char **argv)
{
    export_options o;
    int status = parse_export(&o, argc, argv);
    if (status >= 0)
        return status;
    export_report r;
    pesc_error err = {{0}};
    if (export_checkpoint(&o, &r, &err) != 0)
        return cli_fail("export", &err);
    printf("exported %s (step %ld) to %s\n", r.checkpoint, r.step, o.out);
    printf("  base      %s\n", r.base);
    if (r.full)
        printf("  model     dense, every weight as trained (--train full)\n");
    else
        printf("  crafting  %d experts, top-%d, adapter_dim %d, moe_scaling %g\n", r.experts,
               r.top_k, r.adapter_dim, r.adapter_scale);
    if (r.lora_rank)
        printf("  LoRA      rank %d, merged into the weights\n", r.lora_rank);
    printf("  weights   %d tensors (%d base weights copied as they were), %.2f MiB\n", r.tensors,
           r.kept, r.bytes / (1 << 20));
    return 0;
}
