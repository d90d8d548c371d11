#!/usr/bin/env bash
# Fails (and prints each report's summary and first frames) if any process wrote a sanitizer report into $1.
# Files that only list the suppressions used (LeakSanitizer writes those too) are not reports.
dir=$1
shopt -s nullglob
reports=()
for f in "$dir"/*; do
    grep -qE 'ERROR: |WARNING: ThreadSanitizer|CHECK failed' "$f" && reports+=("$f")
done
if [ ${#reports[@]} -eq 0 ]; then
    echo "no sanitizer reports in $dir"
    exit 0
fi
echo "${#reports[@]} sanitizer report(s) in $dir:"
for r in "${reports[@]}"; do
    echo "== $r"
    grep -m1 -E 'ERROR: |WARNING: ThreadSanitizer' "$r"
    grep -m6 -E '^    #[0-9]+ ' "$r"
    grep -m1 '^SUMMARY' "$r"
done
exit 1
