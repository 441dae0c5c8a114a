/* A sink with a name --sink could not spell, and a table too short for this ABI. */
#include "pesc-plugin.h"

static const pesc_sink_ops short_ops = {.size = 8};
static const pesc_plugin bad = {
    .abi_version = PESC_PLUGIN_ABI_VERSION, .size = sizeof bad, .kind = PESC_PLUGIN_SINK,
    .name = "Bad Name!", .version = "1", .sink = &short_ops};

PESC_PLUGIN_DEFINE(bad)
