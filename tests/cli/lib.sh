# lib.sh: what the CLI suites share (sourced, not a suite itself). The caller
# sets NAME (the suite's name) and T (its temporary folder); counts go in
# pass and fail, and `finish` prints the suite's closing line.
pass=0
fail=0
skip=0
ok() { pass=$((pass + 1)); }
bad() { echo "FAIL $NAME: $*" >&2; fail=$((fail + 1)); }
# expect EXIT NAME CMD...: runs CMD (stdout to $T/out, stderr to $T/err)
expect() {
    want=$1 what=$2
    shift 2
    "$@" >"$T/out" 2>"$T/err"
    rc=$?
    if [ "$rc" -eq "$want" ]; then ok; else bad "$what: exit $rc, want $want: $(head -c 400 "$T/err")"; fi
}
# check NAME CMD...: CMD must succeed
check() {
    what=$1
    shift
    if "$@" >"$T/check.out" 2>&1; then ok; else bad "$what: $(head -c 400 "$T/check.out")"; fi
}
stderr_has() { if grep -q -- "$2" "$T/err"; then ok; else bad "$1: stderr lacks '$2': $(head -c 300 "$T/err")"; fi; }
stdout_has() { if grep -q -- "$2" "$T/out"; then ok; else bad "$1: stdout lacks '$2': $(head -c 300 "$T/out")"; fi; }
absent() { if [ -e "$2" ]; then bad "$1: $2 exists"; else ok; fi; }
finish() {
    if [ "$skip" -gt 0 ]; then
        echo "$NAME: $pass passed, $fail failed, $skip skipped"
    else
        echo "$NAME: $pass passed, $fail failed"
    fi
    [ "$fail" -eq 0 ]
}
