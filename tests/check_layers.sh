#!/bin/sh
# check_layers.sh: the dependency rule of docs/ARCHITECTURE.md, checked on
# every #include of the library, its public headers and the tools.
#
#   tensor -> quant -> convert -> model -> train -> qat | lora -> tools
#
# A library file may include the public headers (include/qtc/*.h) of its own
# layer and of the layers to its left, and private headers of its own folder
# only; qat and lora are side by side and include neither each other nor
# qtc/qtc.h. A public header keeps the same rule for its own layer. No library
# file includes a tool header (tools/*.h). Also: docs/ARCHITECTURE.md's folder
# table names exactly the project's folders. Prints each violation and ends
# with the suite's line "layers: N passed, N failed".
set -u
cd "$(dirname "$0")/.."

# the layer of a public header, by name
header_layer() {
    case $1 in
    error | tensor | graph | optim | rng | runtime) echo tensor ;;
    export) echo tensor ;;
    quant | calib) echo quant ;;
    io | convert) echo convert ;;
    model | calibrate | plot) echo model ;;
    train) echo train ;;
    qat) echo qat ;;
    lora) echo lora ;;
    qtc) echo umbrella ;;
    *) echo unknown ;;
    esac
}
# the rank of a layer: qat and lora share one
rank() {
    case $1 in
    tensor) echo 0 ;; quant) echo 1 ;; convert) echo 2 ;; model) echo 3 ;; train) echo 4 ;;
    qat | lora) echo 5 ;; tools) echo 6 ;; *) echo 99 ;;
    esac
}

pass=0
fail=0
bad() {
    echo "FAIL layers: $*"
    fail=$((fail + 1))
}

# check FILE LAYER: every quoted include of FILE against LAYER
check() {
    file=$1 layer=$2
    dir=$(dirname "$file")
    me=$(rank "$layer")
    ok=1
    for inc in $(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$file"); do
        case $inc in
        qtc/*.h)
            h=$(basename "$inc" .h)
            hl=$(header_layer "$h")
            if [ ! -f "include/$inc" ] || [ "$hl" = unknown ]; then
                bad "$file includes $inc, a header with no layer (add it to tests/check_layers.sh)"
                ok=0
            elif [ "$hl" = umbrella ]; then
                if [ "$layer" != tools ]; then
                    bad "$file ($layer) includes qtc/qtc.h: the library includes what it uses"
                    ok=0
                fi
            elif [ "$(rank "$hl")" -gt "$me" ]; then
                bad "$file ($layer) includes $inc of $hl, a layer to its right"
                ok=0
            elif [ "$(rank "$hl")" -eq "$me" ] && [ "$hl" != "$layer" ]; then
                bad "$file ($layer) includes $inc of $hl, a layer beside it"
                ok=0
            fi
            ;;
        *)
            if [ ! -f "$dir/$inc" ]; then
                bad "$file includes \"$inc\", not a header of its own folder"
                ok=0
            elif [ "$layer" != tools ] && [ "$(dirname "$dir/$inc")" != "$dir" ]; then
                bad "$file includes \"$inc\" outside its folder"
                ok=0
            fi
            ;;
        esac
    done
    [ "$ok" -eq 1 ] && pass=$((pass + 1))
}

for layer in tensor quant convert model train qat lora tools; do
    for f in "$layer"/*.c "$layer"/*.h; do
        [ -e "$f" ] || continue
        check "$f" "$layer"
    done
done
for f in include/qtc/*.h; do
    h=$(basename "$f" .h)
    hl=$(header_layer "$h")
    if [ "$hl" = unknown ]; then
        bad "$f has no layer (add it to tests/check_layers.sh)"
        continue
    fi
    [ "$hl" = umbrella ] && hl=tools
    check "$f" "$hl"
done
# qtc.h includes every public header
for f in include/qtc/*.h; do
    h=$(basename "$f")
    [ "$h" = qtc.h ] && continue
    if grep -q "#include \"qtc/$h\"" include/qtc/qtc.h; then pass=$((pass + 1)); else bad "qtc/qtc.h does not include qtc/$h"; fi
done

# docs/ARCHITECTURE.md's folder table lists exactly the project's folders
T=$(mktemp)
trap 'rm -f "$T" "$T.doc"' EXIT
if git ls-files >/dev/null 2>&1; then
    git ls-files | sed -n 's|^\([^./][^/]*\)/.*|\1|p' | sort -u >"$T"
else
    ls -d */ | sed 's|/$||' | grep -v -x -e bin -e build | sort -u >"$T"
fi
sed -n '/^## Folders/,/^## /s/^| `\([^`/]*\)\/.*/\1/p' docs/ARCHITECTURE.md | sort -u >"$T.doc"
for f in $(comm -23 "$T" "$T.doc"); do bad "folder $f/ is not in docs/ARCHITECTURE.md's folder table"; done
for f in $(comm -13 "$T" "$T.doc"); do bad "docs/ARCHITECTURE.md's folder table lists $f/, which is not a folder here"; done
[ -s "$T.doc" ] && [ -z "$(comm -3 "$T" "$T.doc")" ] && pass=$((pass + 1))

echo "layers: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
