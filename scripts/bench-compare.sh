#!/usr/bin/env bash
# Old and new broker side by side (`make bench-compare`, issue 10): the release broker of BASELINE (a git revision)
# and the release broker of this tree, measured by the same harness in one run as targets agentchat-baseline and
# agentchat, each with its own redis-server set up identically, on broadcast (1 publisher → 1,000 subscribers,
# 256-byte payloads) and rooms (100 rooms of 10, every member publishing): for each, the harness's ramp to the maximum
# sustained rate, then a run at a fixed rate (the same work for both builds, measured even where a loaded machine
# keeps the ramp from passing its first step). The two targets alternate within every run and their order flips from
# one repetition to the next (new, old; old, new; …), so that the machine's noise falls on both. Writes
# OUT_DIR/compare-<UTC stamp>.md (tables to paste into docs/BENCHMARKS.md, with the machine, the commands and the
# load average before, between repetitions and after), OUT_DIR/compare-<UTC stamp>.json (every figure: median, runs,
# ratio) and OUT_DIR/compare-<UTC stamp>/ (every run's JSON and the log).
#
# The baseline is built once per commit, in release, in a temporary git worktree (detached, under TMPDIR, removed
# afterwards); the broker binary and its resource bundle are kept in BENCH_CACHE/broker-<commit>/ (default
# ~/.cache/agentchat-bench, shared by every worktree of the repository), so a second run does not rebuild it.
#
# Environment: BASELINE (default 386fb75), REPEAT (repetitions; medians are reported; default 3), SUBSCRIBERS (1000),
# PAYLOAD (256), BROADCAST_FIXED_RATES (msg/s to the 1,000 subscribers, one run each; default 280: 280k
# deliveries/s, the issue 6 comparison point; empty for none), ROOMS (connections, default 1000 = 100 rooms of 10),
# ROOMS_FIXED_RATE (msg/s per member, default 4: 4k msg/s, 36k deliveries/s; empty for none), FIXED_SECONDS (the
# fixed-rate step, default 5), STEP_SECONDS (ramp steps, default 2), BROADCAST_START_RATE (20), ROOMS_START_RATE
# (1), P99_LIMIT (ms, what a step may not exceed to pass, default 50), MAX_SECONDS (bound on each ramp, default
# 240), RAMPS=0 (fixed rates only), OUT_DIR (default loadtest/benchmarks), BENCH_CACHE,
# SKIP_BUILD=1 (use the release broker and harness as built), NICE_BUILD=0 (builds at normal priority; default: nice
# 19), REPORT_FROM=<a compare-… directory> (no runs: only the tables again).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SWIFT=${SWIFT:-swift}
BASELINE=${BASELINE:-386fb75}
REPEAT=${REPEAT:-3}
SUBSCRIBERS=${SUBSCRIBERS:-1000}
PAYLOAD=${PAYLOAD:-256}
BROADCAST_FIXED_RATES=${BROADCAST_FIXED_RATES-280}
ROOMS=${ROOMS:-1000}
ROOMS_FIXED_RATE=${ROOMS_FIXED_RATE-4}
FIXED_SECONDS=${FIXED_SECONDS:-5}
STEP_SECONDS=${STEP_SECONDS:-2}
BROADCAST_START_RATE=${BROADCAST_START_RATE:-20}
ROOMS_START_RATE=${ROOMS_START_RATE:-1}
MAX_SECONDS=${MAX_SECONDS:-240}
P99_LIMIT=${P99_LIMIT:-50}
RAMPS=${RAMPS:-1}
OUT_DIR=${OUT_DIR:-loadtest/benchmarks}
BENCH_CACHE=${BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentchat-bench}
NICE=()
[ "${NICE_BUILD:-1}" = 1 ] && NICE=("$ROOT/fuzz/sanitizers/nice-tree.sh")

OLD_REV=$(git rev-parse --verify --quiet "$BASELINE^{commit}") || { echo "bench-compare: unknown revision $BASELINE" >&2; exit 2; }
NEW_REV=$(git rev-parse HEAD)
NEW_DESC=$(git rev-parse --short HEAD)
[ -n "$(git status --porcelain --untracked-files=no -- Sources Package.swift)" ] && NEW_DESC="$NEW_DESC + uncommitted changes"
OLD_DESC=$(git rev-parse --short "$OLD_REV")
OLD_DIR=$BENCH_CACHE/broker-$OLD_REV
OLD_BROKER=$OLD_DIR/agentchat-broker

# The baseline: built in a temporary worktree unless cached; only the binary and its resource bundle (the viewer's
# files, found next to the executable) are kept.
build_baseline() {
    local tmp
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/agentchat-baseline-XXXXXX")
    # shellcheck disable=SC2064
    trap "git -C '$ROOT' worktree remove --force '$tmp/src' 2>/dev/null; rm -rf '$tmp'; git -C '$ROOT' worktree prune" EXIT
    echo "bench-compare: building the baseline broker $OLD_DESC ($BASELINE) in $tmp/src"
    git worktree add --detach "$tmp/src" "$OLD_REV" >/dev/null
    # The same dependency versions as this tree (SwiftPM re-resolves what the older manifest does not accept).
    [ -f Package.resolved ] && cp Package.resolved "$tmp/src/"
    (cd "$tmp/src" && "${NICE[@]}" "$SWIFT" build -c release --product agentchat-broker)
    local bin
    bin=$(cd "$tmp/src" && "$SWIFT" build -c release --show-bin-path)
    rm -rf "$OLD_DIR.partial"
    mkdir -p "$OLD_DIR.partial"
    cp "$bin/agentchat-broker" "$OLD_DIR.partial/"
    cp -R "$bin"/*.resources "$OLD_DIR.partial/" 2>/dev/null || true
    git log -1 --format='%H %s' "$OLD_REV" > "$OLD_DIR.partial/REVISION"
    rm -rf "$OLD_DIR"
    mv "$OLD_DIR.partial" "$OLD_DIR"
    git worktree remove --force "$tmp/src"
    # SwiftPM's lock files for that scratch path, left in the temporary directory (named after the path).
    local locks
    locks=$(printf %s "$tmp/src/.build" | tr / _)
    rm -f "${TMPDIR:-/tmp}/$locks"*.lock "/tmp/$locks"*.lock
    rm -rf "$tmp"
    trap - EXIT
}

LT=$ROOT/loadtest/.build/release/agentchat-loadtest
if [ -z "${REPORT_FROM:-}" ]; then
    if [ -x "$OLD_BROKER" ]; then
        echo "bench-compare: baseline broker $OLD_DESC cached in $OLD_DIR"
    else
        build_baseline
    fi
    if [ "${SKIP_BUILD:-0}" != 1 ]; then
        "${NICE[@]}" "$SWIFT" build -c release --product agentchat-broker
        "${NICE[@]}" "$SWIFT" build -c release --package-path loadtest --product agentchat-loadtest
    fi
fi
NEW_BROKER=$ROOT/.build/release/agentchat-broker

STAMP=$(date -u +%Y%m%d-%H%M)
if [ -n "${REPORT_FROM:-}" ]; then
    RES=$(cd "$REPORT_FROM" && pwd)
    STAMP=$(basename "$RES" | sed 's/^compare-//')
else
    mkdir -p "$OUT_DIR"
    RES=$(cd "$OUT_DIR" && pwd)/compare-$STAMP
    mkdir -p "$RES/fixed"
fi
MD=$(dirname "$RES")/compare-$STAMP.md
LOG=$RES/bench.log

load() { cut -d' ' -f1-3 /proc/loadavg; }
lt() { echo "\$ agentchat-loadtest $*" >> "$LOG"; "$LT" "$@" 2>&1 | tee -a "$LOG"; }

if [ -z "${REPORT_FROM:-}" ]; then
    export AGENTCHAT_BASELINE_BROKER=$OLD_BROKER
    {
        echo "baseline (old): $OLD_DESC ($BASELINE) $OLD_BROKER"
        echo "current (new): $NEW_DESC $NEW_BROKER"
    } | tee -a "$LOG"
    echo "load average before: $(load)" | tee -a "$LOG"
    for i in $(seq 1 "$REPEAT"); do
        if [ $((i % 2)) = 1 ]; then order=(agentchat agentchat-baseline); else order=(agentchat-baseline agentchat); fi
        targets=()
        for t in "${order[@]}"; do targets+=(--target "$t"); done
        echo "== run $i of $REPEAT: ${order[*]}" | tee -a "$LOG"
        common=("${targets[@]}" --broker-binary "$NEW_BROKER" --payload "$PAYLOAD" --p99-limit "$P99_LIMIT")
        if [ "$RAMPS" = 1 ]; then
            lt run --workload broadcast "${common[@]}" --connections "$SUBSCRIBERS" --start-rate "$BROADCAST_START_RATE" \
                --step-seconds "$STEP_SECONDS" --max-seconds "$MAX_SECONDS" --results "$RES"
        fi
        # Fixed rates: one step at exactly the rate (start = max), repeated once if it fails, for each target.
        for r in $BROADCAST_FIXED_RATES; do
            lt run --workload broadcast "${common[@]}" --connections "$SUBSCRIBERS" --start-rate "$r" --max-rate "$r" \
                --no-fractions --step-seconds "$FIXED_SECONDS" --results "$RES/fixed"
        done
        if [ "$RAMPS" = 1 ]; then
            lt run --workload rooms "${common[@]}" --connections "$ROOMS" --start-rate "$ROOMS_START_RATE" --max-rate 200 \
                --step-seconds "$STEP_SECONDS" --max-seconds "$MAX_SECONDS" --results "$RES"
        fi
        if [ -n "$ROOMS_FIXED_RATE" ]; then
            lt run --workload rooms "${common[@]}" --connections "$ROOMS" --start-rate "$ROOMS_FIXED_RATE" \
                --max-rate "$ROOMS_FIXED_RATE" --no-fractions --step-seconds "$FIXED_SECONDS" --results "$RES/fixed"
        fi
        echo "load average: $(load)" | tee -a "$LOG"
    done
    echo "load average after: $(load)" | tee -a "$LOG"
fi

"$LT" compare --results "$RES" --markdown "$RES/tables.md" --json "${MD%.md}.json" \
    --old-label "old ($OLD_DESC)" --new-label "new ($NEW_DESC)" >/dev/null

loads=$(grep -h '^load average' "$LOG" | sed 's/.*: //' | paste -sd';' | sed 's/;/; /g')
{
    echo "Measured $(date -u -r "$LOG" '+%Y-%m-%d %H:%M UTC') by \`make bench-compare BASELINE=$BASELINE\`"
    echo "(scripts/bench-compare.sh; REPEAT=$REPEAT): the release broker of $OLD_DESC (old) and of $NEW_DESC (new),"
    echo "both measured in one run by the same harness, each with its own redis-server (AOF everysec), alternating"
    echo "within every repetition and in flipped order from one repetition to the next."
    echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')),"
    echo "$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(. /etc/os-release; echo "$PRETTY_NAME"),"
    echo "kernel $(uname -r), $($SWIFT --version 2>&1 | head -1 | sed 's/ (.*//'), redis-server $(redis-server --version | awk '{print $3}' | cut -d= -f2)."
    echo "Load average (1/5/15 min) before, after each repetition: $loads."
    echo
    echo '```sh'
    echo "make bench-compare BASELINE=$BASELINE   # = scripts/bench-compare.sh; per repetition, both targets:"
    # The first repetition's commands, without this machine's paths.
    awk '/^== run 2 /{exit} /^\$ agentchat-loadtest/' "$LOG" \
        | sed -e 's/^\$ //' -e 's| --broker-binary [^ ]*||' -e 's| --results [^ ]*||' \
              -e 's/--target agentchat-baseline --target agentchat /--target agentchat --target agentchat-baseline /'
    echo '```'
    echo
    echo "\"at max\": the best step each build sustained in its ramp (delivered/offered ≥ 0.95, p99 ≤ $P99_LIMIT ms, no loss"
    echo "or duplicate). \"at N msg/s\": a run at that one offered rate (rooms: per member, and all members together),"
    echo "the same work for both builds, so deliveries per CPU-second compare directly; \"sustained\" says in how many"
    echo "runs it passed those limits. CPU shares are of one core over the step (sending plus draining). new/old above 1"
    echo "is better for deliveries and deliveries per CPU-second, worse for latency and CPU."
    echo
    cat "$RES/tables.md"
} > "$MD"
echo "bench-compare: $MD, ${MD%.md}.json (medians), $RES (every run)"
