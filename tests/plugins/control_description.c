/* A sink whose description would print a line break and a terminal escape in pesc plugins. */
#include "pesc-plugin.h"

static const pesc_plugin bad = {
    .abi_version = PESC_PLUGIN_ABI_VERSION, .size = sizeof bad, .kind = PESC_PLUGIN_SINK,
    .name = "colourful", .version = "1", .description = "two\nlines and \033[31mred"};

PESC_PLUGIN_DEFINE(bad)
