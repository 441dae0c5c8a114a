#!/bin/sh
# Runs test_safetensors under valgrind: a corrupt file that makes the reader touch memory it
# should not (or leak) must fail the test suite, not just go unnoticed when nothing crashes.
# Without valgrind on PATH the test still runs, directly, and says so.
prog="${top_builddir:-.}/tests/test_safetensors"

if [ ! -x "$prog" ]; then
    echo "safetensors-valgrind.sh: $prog is not built (set top_builddir)" >&2
    exit 99
fi

if command -v valgrind >/dev/null 2>&1; then
    exec valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite -q \
        "$prog"
fi

echo "safetensors-valgrind.sh: valgrind not found on PATH; running $prog without it"
exec "$prog"
