#!/bin/sh
# Runs the memory-sensitive tests under valgrind: a corrupt file that makes a reader touch
# memory it should not, an op that writes past a buffer, or a leak must fail the suite, not
# go unnoticed because nothing crashed. The tests that only check values run plainly too.
# Without valgrind on PATH the programs still run, directly, and the script says so.
builddir="${top_builddir:-.}"
programs="test_safetensors test_stream test_pesc test_pesc_reference test_grad_ops"

if command -v valgrind >/dev/null 2>&1; then
    run() { OMP_NUM_THREADS=1 valgrind --error-exitcode=1 --leak-check=full \
                --suppressions="${top_srcdir:-.}/tests/valgrind.supp" \
                --errors-for-leak-kinds=definite -q "$@"; }
else
    echo "valgrind.sh: valgrind not found on PATH; running the programs without it"
    run() { "$@"; }
fi

status=0
for p in $programs; do
    prog="$builddir/tests/$p"
    if [ ! -x "$prog" ]; then
        echo "valgrind.sh: $prog is not built (set top_builddir)" >&2
        exit 99
    fi
    if run "$prog" >"$builddir/tests/$p.valgrind.out" 2>&1; then
        echo "ok   $p under valgrind"
    else
        echo "FAIL $p under valgrind:"
        tail -n 30 "$builddir/tests/$p.valgrind.out"
        status=1
    fi
done
exit $status
