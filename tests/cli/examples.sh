#!/bin/sh
# Runs every example as the README shows it, so the docs cannot go stale.
# Last line: "examples: N passed, N failed".
set -u
pass=0
fail=0
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
for ex in examples/*.sh; do
    if QTC_BIN=${QTC_BIN:-bin} sh "$ex" "$T/$(basename "$ex" .sh)" >"$T/log" 2>&1; then
        pass=$((pass + 1))
    else
        echo "FAIL examples: $ex" >&2
        tail -n 20 "$T/log" >&2
        fail=$((fail + 1))
    fi
done
echo "examples: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
