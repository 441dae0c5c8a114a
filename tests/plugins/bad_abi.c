/* A module built for another plugin ABI: the loader must refuse it by its version alone. */
#include "pesc-plugin.h"

static const pesc_plugin future = {
    .abi_version = 999, .size = sizeof future, .kind = PESC_PLUGIN_SINK, .name = "future"};

PESC_PLUGIN_DEFINE(future)
