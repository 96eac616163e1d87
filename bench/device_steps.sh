# Sourced by the bench/check_*.sh device calls: `run NAME LIMIT COMMAND...` runs one step with OUT set to
# $OUT/NAME (its JSON lands there), under a time limit, printing only the step's last 25 non-JSON lines; a failing
# step does not stop the script. The caller exports OUT.
: "${OUT:?export OUT first}"
run() {  # name, time limit (s), command...
    local name=$1 limit=$2
    shift 2
    mkdir -p "$OUT/$name"
    echo "== $name"
    OUT="$OUT/$name" timeout "$limit" "$@" 2>&1 | grep -v '^{' | tail -25
}
