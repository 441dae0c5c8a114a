/* A module that needs a symbol nothing provides: dlopen (RTLD_NOW) must refuse it. */
#include "pesc-plugin.h"

void pesc_function_nobody_defines(void);

static int lost_convert(const pesc_format_host *h, const pesc_json *record, pesc_record_out *out)
{
    (void)h, (void)record, (void)out;
    pesc_function_nobody_defines();
    return 0;
}

static const pesc_format_ops lost_ops = {.size = sizeof lost_ops, .convert = lost_convert};
static const pesc_plugin lost = {
    .abi_version = PESC_PLUGIN_ABI_VERSION, .size = sizeof lost, .kind = PESC_PLUGIN_FORMAT,
    .name = "lost", .version = "1", .format = &lost_ops};

PESC_PLUGIN_DEFINE(lost)
