#!/usr/bin/env bash
# The test phase of `make sanitize`: runs the suite built in .build-asan under AddressSanitizer+LeakSanitizer,
# then the one in .build-tsan under ThreadSanitizer (filtered by $SANITIZE_TSAN_FILTER when set), each process
# writing its reports to .build-*/sanitizer-logs (file names end in the executable's name and pid). Runs both
# phases whatever the first gives; exits non-zero if a test failed or any process wrote a report.
set -u
cd "$(dirname "$0")/../.."
swift=${SWIFT:-swift}
here=$PWD
status=0
# SWIFT_BACKTRACE=enable=no: the Swift runtime's crash handler copies whole stacks, which ASan reports as a
# stack-buffer-overflow of its own; without it a crashing process gets the sanitizer's own report and stack.
common="SWIFT_BACKTRACE=enable=no"

rm -rf .build-asan/sanitizer-logs && mkdir -p .build-asan/sanitizer-logs
echo "== AddressSanitizer + LeakSanitizer: the whole suite"
start=$(date +%s)
env $common ASAN_OPTIONS="log_path=$here/.build-asan/sanitizer-logs/asan:log_exe_name=1:detect_leaks=1" \
    LSAN_OPTIONS="suppressions=$here/fuzz/sanitizers/lsan.supp" \
    fuzz/sanitizers/nice-tree.sh "$swift" test --skip-build --scratch-path .build-asan || status=1
echo "   $(( $(date +%s) - start ))s"
fuzz/sanitizers/check-logs.sh .build-asan/sanitizer-logs || status=1

rm -rf .build-tsan/sanitizer-logs && mkdir -p .build-tsan/sanitizer-logs
echo "== ThreadSanitizer: ${SANITIZE_TSAN_FILTER:-the whole suite}"
start=$(date +%s)
filter=()
[ -n "${SANITIZE_TSAN_FILTER:-}" ] && filter=(--filter "$SANITIZE_TSAN_FILTER")
env $common TSAN_OPTIONS="log_path=$here/.build-tsan/sanitizer-logs/tsan:log_exe_name=1:suppressions=$here/fuzz/sanitizers/tsan.supp" \
    fuzz/sanitizers/nice-tree.sh "$swift" test --skip-build --scratch-path .build-tsan "${filter[@]}" || status=1
echo "   $(( $(date +%s) - start ))s"
fuzz/sanitizers/check-logs.sh .build-tsan/sanitizer-logs || status=1
exit $status
