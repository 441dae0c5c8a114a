/* A descriptor whose name points nowhere: following it would crash; the loader must not. */
#include <stdint.h>

#include "pesc-plugin.h"

static const pesc_plugin stray = {
    .abi_version = PESC_PLUGIN_ABI_VERSION, .size = sizeof stray, .kind = PESC_PLUGIN_SINK,
    .name = (const char *)(uintptr_t)16, .version = "1"};

PESC_PLUGIN_DEFINE(stray)
