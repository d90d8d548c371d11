#!/usr/bin/env bash
# Runs each libFuzzer target in turn for FUZZ_SECONDS (under nice, one process at a time), starting from the
# committed seeds in fuzz/corpus/<target> and the new inputs of earlier runs in fuzz/.scratch/corpus/<target>
# (where new inputs are written). Crash, timeout and out-of-memory inputs go to fuzz/artifacts/. Prints each
# target's final libFuzzer figures; exits non-zero if any target failed.
#
# Usage: fuzz/run.sh [target...]   (default: every target; see FUZZ_TARGETS in the Makefile)
# Environment: FUZZ_SECONDS (60), FUZZ_FLAGS (extra libFuzzer flags), FUZZ_BIN (fuzz/.build/release).
set -u
cd "$(dirname "$0")"
seconds=${FUZZ_SECONDS:-60}
bin=${FUZZ_BIN:-.build/release}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(fuzz-json fuzz-frame fuzz-jws fuzz-encoding fuzz-http-request-head)
mkdir -p artifacts .scratch/logs
failed=()
for t in "${targets[@]}"; do
    mkdir -p ".scratch/corpus/$t" "corpus/$t"
    dict=()
    [ -f "dictionaries/$t.dict" ] && dict=("-dict=dictionaries/$t.dict")
    log=".scratch/logs/$t.log"
    echo "== $t: ${seconds}s"
    start=$(date +%s)
    TIMEFORMAT="   cpu %Us user + %Ss sys"
    # shellcheck disable=SC2086
    time nice -n 19 "$bin/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t-" "${dict[@]}" ${FUZZ_FLAGS:-} ".scratch/corpus/$t" "corpus/$t" >"$log" 2>&1
    status=$?
    # The last status line, the totals and the stats libFuzzer prints at exit.
    grep -E '^#[0-9]+\s+(DONE|INITED)|^Done [0-9]+ runs|^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" | tail -5
    echo "   wall $(( $(date +%s) - start ))s, corpus $(ls ".scratch/corpus/$t" | wc -l) new + $(ls "corpus/$t" | wc -l) seeds, exit $status"
    if [ $status -ne 0 ]; then
        failed+=("$t")
        grep -E 'Fatal error|ERROR: |SUMMARY|Test unit written' "$log" | head -5
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]} (logs in fuzz/.scratch/logs, inputs in fuzz/artifacts)"
    exit 1
fi
