#!/bin/sh
# check_symbols.sh [LIBQTC_SO]: libqtc.so exports the qtc_ API only.
#
# The library is compiled with -fvisibility=hidden and its public headers
# export what they declare (qtc/export.h), so every symbol the shared library
# defines for others starts with qtc_; the functions the files of one folder
# share stay hidden (declared in <folder>/<folder>_private.h). A program that
# includes only <qtc/qtc.h> must still compile, link against the .so and run.
# Prints each violation and ends with the suite's line
# "symbols: N passed, N failed".
set -u
cd "$(dirname "$0")/.."
so=${1:-build/release/libqtc.so}
CC=${CC:-cc}

pass=0
fail=0
skip=0
bad() {
    echo "FAIL symbols: $*"
    fail=$((fail + 1))
}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

if [ ! -f "$so" ]; then
    bad "$so: no such library (make lib)"
    echo "symbols: $pass passed, $fail failed"
    exit 1
fi

# every defined dynamic symbol. The sanitizer build (build/check) adds one
# kind that is not ours: ASan's ODR-violation indicator __odr_asan.NAME, which
# it defines for each exported global NAME (qtc_nf4_code); it is accepted
# when NAME is a qtc_ symbol.
if ! nm -D --defined-only "$so" >"$T/nm" 2>"$T/nm.err"; then
    bad "nm -D $so: $(head -c 300 "$T/nm.err")"
fi
awk 'NF >= 3 { print $3 }' "$T/nm" | sed 's/@.*//' | sort -u >"$T/defined"
if grep -qx 'qtc_version' "$T/defined" && grep -qx 'qtc_tensor_new' "$T/defined"; then
    pass=$((pass + 1))
else
    bad "$so does not export the API (qtc_version, qtc_tensor_new)"
fi
grep -v -e '^qtc_' -e '^__odr_asan\.qtc_' "$T/defined" >"$T/stray"
if [ -s "$T/stray" ]; then
    while read -r s; do
        bad "$so exports $s, which lacks the qtc_ prefix (a private function is declared in its folder's private header and hidden by -fvisibility=hidden)"
    done <"$T/stray"
else
    pass=$((pass + 1))
fi

# every function a public header declares is exported: a header without
# QTC_API_BEGIN/END would leave its functions hidden in the .so
sed -n 's/^[A-Za-z_][A-Za-z0-9_ ]*[ *]\(qtc_[a-z0-9_]*\)(.*/\1/p' include/qtc/*.h | sort -u >"$T/declared"
missing=$(comm -23 "$T/declared" "$T/defined")
if [ -s "$T/declared" ] && [ -z "$missing" ]; then
    pass=$((pass + 1))
else
    for s in $missing; do
        bad "$s is declared in a public header but not exported by $so (its header lacks QTC_API_BEGIN/END?)"
    done
    [ -s "$T/declared" ] || bad "no function declarations found in include/qtc/*.h"
fi

# a program using only the public headers, linked against the .so
cat >"$T/use.c" <<'EOF'
#include <stdio.h>
#include <string.h>

#include <qtc/qtc.h>

int main(void)
{
    qtc_error err;
    qtc_tensor *t = qtc_tensor_new(QTC_F32, 2, QTC_SHAPE(3, 4), &err);
    if (!t) {
        fprintf(stderr, "qtc_tensor_new: %s\n", err.msg);
        return 1;
    }
    int64_t n = qtc_tensor_numel(t);
    qtc_tensor_free(t);
    printf("qtc %s, %lld elements\n", qtc_version(), (long long)n);
    return strcmp(qtc_version(), QTC_VERSION) != 0 || n != 12;
}
EOF
# a sanitized library needs its runtime loaded first: build the program the same way
san=
if readelf -d "$so" 2>/dev/null | grep -q 'NEEDED.*libasan'; then
    san=-fsanitize=address,undefined
fi
libdir=$(cd "$(dirname "$so")" && pwd)
if $CC -std=c11 -Wall -Wextra -Werror $san -Iinclude -o "$T/use" "$T/use.c" -L"$libdir" -lqtc >"$T/cc.out" 2>&1; then
    pass=$((pass + 1))
    if readelf -d "$T/use" | grep -q 'NEEDED.*\[libqtc\.so\]'; then
        pass=$((pass + 1))
    else
        bad "a program built with -lqtc did not link libqtc.so"
    fi
    if LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$T/use" >"$T/run.out" 2>&1; then
        pass=$((pass + 1))
    else
        bad "a program using <qtc/qtc.h> failed against $so: $(head -c 400 "$T/run.out")"
    fi
else
    bad "a program using only <qtc/qtc.h> does not build against $so: $(head -c 600 "$T/cc.out")"
fi

# the same from C++: the headers give the API C linkage
CXX=${CXX:-c++}
if command -v "$CXX" >/dev/null 2>&1; then
    printf '#include <qtc/qtc.h>\nint main() { return qtc_version()[0] == 0; }\n' >"$T/use.cpp"
    if $CXX -Wall -Werror $san -Iinclude -o "$T/usecpp" "$T/use.cpp" -L"$libdir" -lqtc >"$T/cxx.out" 2>&1 &&
        LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$T/usecpp" >"$T/run.out" 2>&1; then
        pass=$((pass + 1))
    else
        bad "a C++ program using <qtc/qtc.h> does not build or run against $so: $(head -c 600 "$T/cxx.out")"
    fi
else
    skip=$((skip + 1))
fi

if [ "$skip" -gt 0 ]; then
    echo "symbols: $pass passed, $fail failed, $skip skipped (no C++ compiler)"
else
    echo "symbols: $pass passed, $fail failed"
fi
[ "$fail" -eq 0 ]
