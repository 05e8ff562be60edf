#!/bin/sh
# Runs every test suite and ends with the line "N passed, N failed".
# QTC_BUILD: the build folder holding qtc-tests; QTC_BIN: the tools' folder.
# Each suite prints "<suite>: N passed, N failed" as its last line.
set -u
build=${QTC_BUILD:-build/release}
bin=${QTC_BIN:-bin}
passed=0
failed=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

tally() { # suite name, then the command that runs it
    name=$1
    shift
    "$@" >"$log" 2>&1
    rc=$?
    cat "$log"
    line=$(grep -E "^$name: [0-9]+ passed, [0-9]+ failed" "$log" | tail -n 1)
    if [ -z "$line" ]; then
        echo "$name: suite did not finish (exit $rc)"
        failed=$((failed + 1))
        return
    fi
    p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed.*/\1/')
    f=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed.*/\2/')
    passed=$((passed + p))
    failed=$((failed + f))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "$name: exited $rc"
        failed=$((failed + 1))
    fi
}

tally unit "$build/qtc-tests"
# the path choice under QTC_CPU (read once per process, so in a process of its own)
tally unit env QTC_CPU=baseline "$build/qtc-tests" cpu_env_variable
tally symbols sh tests/check_symbols.sh "$build/libqtc.so"
tally layers sh tests/check_layers.sh
for suite in tests/cli/*.sh; do
    [ -e "$suite" ] || continue
    case "$suite" in */lib.sh) continue ;; esac
    tally "$(basename "$suite" .sh)" env QTC_BIN="$bin" sh "$suite"
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
