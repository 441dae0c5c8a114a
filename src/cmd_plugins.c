/* cmd_plugins — `pesc plugins`: the dataset formats and metric sinks this pesc can use, built in
 * or found as modules, with versions, and the modules it refused with the reason. */
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"
#include "commands.h"
#include "dataset.h"
#include "plugin.h"
#include "sink.h"

static const char plugins_usage[] =
    "usage: pesc plugins [--plugin FILE]...\n"
    "\n"
    "Lists the dataset formats (--format) and metric sinks (--sink) this pesc can use: the\n"
    "built-in ones and those of plugin modules, with the module's version and file, and every\n"
    "module that was refused with the reason. Modules are searched in this order, the first\n"
    "of a name winning:\n"
    "  --plugin FILE       a module file (repeatable; a refusal is an error)\n"
    "  $PESC_PLUGIN_PATH   directories separated by ':' (a libtool build directory works:\n"
    "                      its .libs/ is searched too)\n"
    "  %s\n"
    "  the build tree      a pesc run from where it was built: the modules built beside it\n"
    "                      (plugins/.libs/)\n"
    "\n"
    "Writing a plugin: man pesc-plugin(7).\n";

static void print_plugin(const plugin_info *info)
{
    printf("  %-12s %-9s %s\n", info->name, info->version[0] ? info->version : "-",
           info->description);
    printf("  %-12s %-9s from %s (%s)\n", "", "", info->path, info->origin);
}

static void print_kind(const pesc_plugins *p, int kind)
{
    for (int i = 0; i < plugins_count(p); i++) {
        const plugin_info *info = plugins_get(p, i);
        if (info->plugin && info->kind == kind)
            print_plugin(info);
    }
}

int cmd_plugins(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"plugin", required_argument, NULL, 'P'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char **files = xcalloc((size_t)argc + 1, sizeof *files);
    int n_files = 0, c;
    while ((c = cli_getopt("plugins", argc, argv, "h", longopts)) != -1) {
        switch (c) {
        case 'P':
            if (cli_path("plugins", "--plugin", optarg, "a plugin module",
                         &files[n_files++])) {
                free(files);
                return EXIT_USAGE;
            }
            break;
        case 'h':
            printf(plugins_usage, plugins_install_dir());
            free(files);
            return 0;
        default:
            free(files);
            return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        free(files);
        return cli_unexpected("plugins", argv[optind], NULL);
    }
    pesc_error err = {{0}};
    pesc_plugins *p = plugins_open(files, n_files, &err);
    free(files);
    if (!p)
        return cli_fail("plugins", &err);

    printf("plugin ABI %u; search path: --plugin, $PESC_PLUGIN_PATH, %s, the build tree\n\n",
           PESC_PLUGIN_ABI_VERSION, plugins_install_dir());
    printf("dataset formats (--format NAME)\n");
    for (int i = 1; i < ds_formats_count(NULL); i++) {
        const ds_format_info *f = ds_formats_get(NULL, (ds_format)i);
        printf("  %-12s %-9s %s\n", f->name, "built-in", f->description);
    }
    print_kind(p, PESC_PLUGIN_FORMAT);
    printf("\nmetric sinks (--sink NAME[:TARGET])\n");
    const char *description;
    for (int i = 0; sinks_builtin_name(i, &description); i++)
        printf("  %-12s %-9s %s\n", sinks_builtin_name(i, NULL), "built-in", description);
    print_kind(p, PESC_PLUGIN_SINK);
    int refused = 0;
    for (int i = 0; i < plugins_count(p); i++) {
        const plugin_info *info = plugins_get(p, i);
        if (info->plugin)
            continue;
        if (!refused++)
            printf("\nrefused modules\n");
        printf("  %s (%s): %s\n", info->path, info->origin, info->problem);
    }
    plugins_delete(p);
    return 0;
}
