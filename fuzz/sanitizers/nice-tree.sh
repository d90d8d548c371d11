#!/usr/bin/env bash
# Runs a command at nice 19 and keeps every process it starts there, or attaches to a running one with
# `--pid PID`. Needed because SwiftPM starts its compilers and the test binary at the default priority whatever its
# own (seen with swift 6.3.1: `nice -n 19 swift build` runs swift-frontend at nice 0), and so do the brokers and
# redis-servers the tests start. Checks once a second; exits with the command's status.
set -u
if [ "${1:-}" = "--pid" ]; then
    root=$2
else
    nice -n 19 "$@" &
    root=$!
fi
while kill -0 "$root" 2>/dev/null; do
    # Every descendant of root (one ps per pass) that is not yet at nice 19.
    ps -eo pid=,ppid=,ni= | awk -v root="$root" '
        { parent[$1] = $2; nice[$1] = $3 }
        END {
            for (p in parent) {
                q = p
                while (q in parent && q != root && q > 1) q = parent[q]
                if (q == root && p != root && nice[p] != 19) print p
            }
        }' | xargs -r renice -n 19 -p >/dev/null 2>&1
    sleep 1
done
[ "${1:-}" = "--pid" ] && exit 0
wait "$root"
