/* cmd_demo — `pesc demo-data`: the built-in instruction data written out as camelidae JSONL,
 * so people can see exactly what the demo trains on. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "commands.h"
#include "demo.h"

static const char demo_usage[] =
    "usage: pesc demo-data -o FILE [--force] [--records N] [--seed S] [--family NAME]...\n"
    "\n"
    "Writes the built-in demo's instruction data as camelidae JSON lines:\n"
    "  {\"instruction\": SYSTEM, \"conversation\": [{\"input\": ..., \"output\": ...}], \"source\": FAMILY}\n"
    "Tasks come in families, each a data source of the demo: arithmetic (\"12+7\" -> \"19\"),\n"
    "reverse (\"reverse: pesc\" -> \"csep\"), sort (\"sort: dbca\" -> \"abcd\"), count\n"
    "(\"count: pesc\" -> \"4\"), case (\"upper: pesc\" -> \"PESC\") and lookup\n"
    "(\"capital: France\" -> \"Paris\"). The same seed always gives the same records.\n"
    "\n"
    "  -o, --output FILE  where to write (- for standard output); a file already there is\n"
    "                     refused unless --force\n"
    "  --force            replace FILE when it is already there\n"
    "  --records N        how many records in all, dealt among the families (default:\n"
    "                     1000 for each family written; pesc eval --demo counts per family)\n"
    "  --seed S           generator seed (default 1234, the demo's)\n"
    "  --family NAME      only this family (repeatable); records are dealt round-robin\n";

int cmd_demo_data(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"output", required_argument, NULL, 'o'}, {"records", required_argument, NULL, 'n'},
        {"seed", required_argument, NULL, 's'},   {"family", required_argument, NULL, 'f'},
        {"force", no_argument, NULL, 'F'},        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *output = NULL;
    int force = 0;
    long records = 0;
    demo_spec spec = {.seed = DEMO_SEED};
    int c;
    while ((c = cli_getopt("demo-data", argc, argv, "ho:", longopts)) != -1) {
        switch (c) {
        case 'o': output = optarg; break;
        case 'F': force = 1; break;
        case 'n':
            if (cli_parse_long(optarg, 1, 100000000L, &records) != 0)
                return cli_usage_error("demo-data",
                                       "--records %s: expected an integer from 1 to 100000000",
                                       optarg);
            break;
        case 's': {
            char *end;
            errno = 0;
            spec.seed = strtoull(optarg, &end, 10);
            if (!*optarg || *end || errno || *optarg == '-')
                return cli_usage_error("demo-data", "--seed %s: expected a non-negative integer",
                                       optarg);
            break;
        }
        case 'f': {
            int f = demo_family_find(optarg);
            if (f < 0)
                return cli_usage_error("demo-data", "--family %s: the families are %s", optarg,
                                       demo_family_list());
            spec.families |= 1u << f;
            break;
        }
        case 'h': fputs(demo_usage, stdout); return 0;
        default: return EXIT_USAGE;
        }
    }
    if (optind < argc)
        return cli_unexpected("demo-data", argv[optind], "the output file goes after -o");
    if (!output)
        return cli_usage_error("demo-data", "-o FILE is required (-o - writes to standard "
                               "output)");
    if (cli_path("demo-data", "-o", output, "a file, or - for standard output", &output))
        return EXIT_USAGE;
    spec.records = records ? records
                           : (long)DEMO_FILE_RECORDS_PER_FAMILY * demo_family_count(spec.families);
    demo_spec_complete(&spec);

    pesc_error err = {{0}};
    int rc;
    if (strcmp(output, "-") == 0) {
        /* main checks that the records reached it */
        rc = demo_write_jsonl(stdout, &spec, "standard output", &err);
        return rc == 0 ? 0 : cli_fail("demo-data", &err);
    }
    struct stat st;   /* a file of the user's is not replaced unasked (data of its own?) */
    if (!force && stat(output, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
        pesc_fail(&err, "%s is already there (%lld bytes): give --force to replace it, or name "
                  "a new file", output, (long long)st.st_size);
        return cli_fail("demo-data", &err);
    }
    char *tmp;   /* an existing FILE is replaced only by a whole one */
    FILE *f = pesc_file_begin(output, &tmp, &err);
    if (!f)
        return cli_fail("demo-data", &err);
    rc = demo_write_jsonl(f, &spec, output, &err);
    if (rc == 0)
        rc = pesc_file_commit(f, tmp, output, &err);
    else
        pesc_file_abort(f, tmp);
    free(tmp);
    return rc == 0 ? 0 : cli_fail("demo-data", &err);
}
