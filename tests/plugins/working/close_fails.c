/* A sink that takes every row and then cannot close, as one whose last flush meets a full disk
 * or a lost connection: the failure must reach the run log as a "sink" event. */
#include <stdio.h>

#include "pesc-plugin.h"

static int token;

static void *closefail_open(const pesc_sink_config *config, const pesc_run_info *run,
                            char *err, size_t errlen)
{
    (void)config, (void)run, (void)err, (void)errlen;
    return &token;
}

static int closefail_record(void *sink, const pesc_step *step, char *err, size_t errlen)
{
    (void)sink, (void)step, (void)err, (void)errlen;
    return 0;
}

static int closefail_close(void *sink, char *err, size_t errlen)
{
    (void)sink;
    snprintf(err, errlen, "closefail: its last write failed");
    return -1;
}

static const pesc_sink_ops closefail_ops = {
    .size = sizeof closefail_ops, .open = closefail_open, .record = closefail_record,
    .close = closefail_close};

static const pesc_plugin closefail_plugin = {
    .abi_version = PESC_PLUGIN_ABI_VERSION, .size = sizeof closefail_plugin,
    .kind = PESC_PLUGIN_SINK, .name = "closefail", .version = "1.0",
    .description = "test: a sink whose close fails", .sink = &closefail_ops};

PESC_PLUGIN_DEFINE(closefail_plugin)
