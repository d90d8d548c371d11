#!/usr/bin/env bash
# The standard comparison of issue 6 (`make bench`): every target on broadcast (1 publisher → 1,000 subscribers,
# 256-byte payloads) and idle (10,000 connections), then the tables and chart spliced into docs/BENCHMARKS.md
# between its `bench:begin` and `bench:end` markers. Every server is started and stopped (by PID) by the harness,
# on loopback only.
#
# Environment: REPEAT (runs per target, the median is reported; default 3), TARGETS (default: all four),
# SUBSCRIBERS (1000), PAYLOAD (256), IDLE_CONNECTIONS (10000), IDLE_HOLD (seconds, default 40: past the broker's
# 30 s keep-alive ping), EXTRAS (beyond the standard comparison, default "churn rooms multi-broker"; empty for
# none; "indicators" is also available: 10 listed channels × 200 msg/s watched by 1,000 viewers, agentchat only),
# STANDARD=0 (skip the standard rows and EXTRAS: only the COMPARE rows), COMPARE (the rows of issue 12, REPEAT times
# each with the order of agentchat and nats-server flipped every repetition; default "payloads fanout resume"; empty
# for none): "payloads" = broadcast 1 → SUBSCRIBERS at fixed rates, one run per PAYLOAD_RATES entry BYTES:MSG_PER_S
# (default "256:100 256:300 64:100 1024:100 16384:20": 100k and 300k deliveries/s at 256 B, then sizes); "fanout" = 1 → FANOUT_AGENTS × FANOUT_PER_AGENT connections (default
# 1,000 × 10 = 10,000; the first connection of each agent joins, the others subscribe; nats-server: as many
# subscribers) at FANOUT_RATE msg/s (30); "resume" = a backlog of RESUME_BACKLOG messages (10,000), then RESUME_TRIES
# (5) subscribers resuming from offset 0 (agentchat only). FIXED_SECONDS (each fixed-rate step, default 5),
# BROKER_PROCESSES (default "1 2": also runs agentchat with --processes 2 on the standard broadcast, rooms and every
# COMPARE row, for 1 → 2 scaling; "1" for one process only),
# SKIP_BUILD=1, REPORT_FROM=loadtest/results/bench-… (no runs: only rebuild the page from that run).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REPEAT=${REPEAT:-3}
TARGETS=${TARGETS:-agentchat nats mosquitto lws-mirror}
SUBSCRIBERS=${SUBSCRIBERS:-1000}
PAYLOAD=${PAYLOAD:-256}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-10000}
IDLE_HOLD=${IDLE_HOLD:-40}
SWIFT=${SWIFT:-swift}
EXTRAS=${EXTRAS-churn rooms multi-broker}
STANDARD=${STANDARD:-1}
COMPARE=${COMPARE-payloads fanout resume}
PAYLOAD_RATES=${PAYLOAD_RATES:-256:100 256:300 64:100 1024:100 16384:20}
FANOUT_AGENTS=${FANOUT_AGENTS:-1000}
FANOUT_PER_AGENT=${FANOUT_PER_AGENT:-10}
FANOUT_RATE=${FANOUT_RATE:-30}
RESUME_BACKLOG=${RESUME_BACKLOG:-10000}
RESUME_TRIES=${RESUME_TRIES:-5}
FIXED_SECONDS=${FIXED_SECONDS:-5}
BROKER_PROCESSES=${BROKER_PROCESSES:-1 2}

if [ "${SKIP_BUILD:-0}" != 1 ] && [ -z "${REPORT_FROM:-}" ]; then
    $SWIFT build -c release --product agentchat-broker
    $SWIFT build -c release --package-path loadtest --product agentchat-loadtest
fi
LT=$ROOT/loadtest/.build/release/agentchat-loadtest
# Several broker processes need a broker that has --processes: refuse before measuring anything.
for n in $BROKER_PROCESSES; do
    if [ "$n" != 1 ] && [ -z "${REPORT_FROM:-}" ] && ! "$ROOT/.build/release/agentchat-broker" --help 2>&1 | grep -q -- --processes; then
        echo "bench: BROKER_PROCESSES=\"$BROKER_PROCESSES\": .build/release/agentchat-broker --help does not list --processes" >&2
        exit 2
    fi
done
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RES=$ROOT/loadtest/results/bench-$STAMP
[ -n "${REPORT_FROM:-}" ] && RES=$(cd "$REPORT_FROM" && pwd)
mkdir -p "$RES"
LOG=$RES/bench.log
targets_args=()
for t in $TARGETS; do targets_args+=(--target "$t"); done
# The COMPARE rows: agentchat and nats-server (where they are in TARGETS).
new_targets=()
for t in agentchat nats; do case " $TARGETS " in *" $t "*) new_targets+=("$t") ;; esac; done
first_processes=${BROKER_PROCESSES%% *}
# Targets of repetition $1 with broker processes $2, in flipped order on even repetitions; with more than one broker
# process only agentchat (the peers do not change).
compare_targets() {
    local order=("${new_targets[@]}") out=() t
    if [ $(($1 % 2)) = 0 ]; then order=(); for t in "${new_targets[@]}"; do order=("$t" "${order[@]}"); done; fi
    for t in "${order[@]}"; do
        if [ "$t" = agentchat ] || [ "$2" = "$first_processes" ]; then out+=(--target "$t"); fi
    done
    echo "${out[@]}"
}
lt() { echo "\$ agentchat-loadtest $*" >> "$LOG"; "$LT" "$@" 2>&1 | tee -a "$LOG"; }

load() { cut -d' ' -f1-3 /proc/loadavg; }
if [ -z "${REPORT_FROM:-}" ]; then
echo "load average before: $(load)" | tee -a "$LOG"
if [ "$STANDARD" = 1 ]; then
for i in $(seq 1 "$REPEAT"); do
    echo "== broadcast, run $i of $REPEAT" | tee -a "$LOG"
    # 280 msg/s × 1,000 = 280k deliveries/s: the issue's comparison point (half of nats-server's maximum there).
    "$LT" run --workload broadcast "${targets_args[@]}" --connections "$SUBSCRIBERS" --payload "$PAYLOAD" \
        --extra-rate $((280000 / SUBSCRIBERS)) --results "$RES" 2>&1 | tee -a "$LOG"
    for n in $BROKER_PROCESSES; do
        [ "$n" = 1 ] && continue
        echo "== broadcast, agentchat with $n broker processes, run $i of $REPEAT" | tee -a "$LOG"
        "$LT" run --workload broadcast --target agentchat --broker-processes "$n" --connections "$SUBSCRIBERS" \
            --payload "$PAYLOAD" --extra-rate $((280000 / SUBSCRIBERS)) --results "$RES" 2>&1 | tee -a "$LOG"
    done
    echo "load average: $(load)" | tee -a "$LOG"
done
echo "== idle" | tee -a "$LOG"
"$LT" run --workload idle "${targets_args[@]}" --connections "$IDLE_CONNECTIONS" --hold "$IDLE_HOLD" \
    --results "$RES" 2>&1 | tee -a "$LOG"
for extra in $EXTRAS; do
    echo "== $extra" | tee -a "$LOG"
    case $extra in
        churn)  # 100 connections closed and reopened as soon as each has logged in, for 10 s; then agentchat's
                # reconnect with the session token of the previous welcome instead of a signed challenge
            "$LT" run --workload churn "${targets_args[@]}" --connections 100 --hold 10 --results "$RES" 2>&1 | tee -a "$LOG"
            case " $TARGETS " in *" agentchat "*)
                "$LT" run --workload churn --target agentchat --churn-login token --connections 100 --hold 10 \
                    --results "$RES" 2>&1 | tee -a "$LOG" ;;
            esac ;;
        rooms)  # 100 rooms of 10 members, every member publishing; lws-mirror has no rooms
            room_targets=()
            for t in $TARGETS; do [ "$t" = lws-mirror ] || room_targets+=(--target "$t"); done
            "$LT" run --workload rooms "${room_targets[@]}" --connections 1000 --payload "$PAYLOAD" --start-rate 1 \
                --max-rate 200 --results "$RES" 2>&1 | tee -a "$LOG"
            for n in $BROKER_PROCESSES; do
                [ "$n" = 1 ] && continue
                case " $TARGETS " in *" agentchat "*)
                    "$LT" run --workload rooms --target agentchat --broker-processes "$n" --connections 1000 \
                        --payload "$PAYLOAD" --start-rate 1 --max-rate 200 --results "$RES" 2>&1 | tee -a "$LOG" ;;
                esac
            done ;;
        indicators)  # 10 listed channels at 200 msg/s each, 1,000 viewers of all 10; agentchat only (no peer equivalent)
            case " $TARGETS " in *" agentchat "*)
                "$LT" run --workload indicators --target agentchat --connections 1000 --channels 10 \
                    --channel-rate 200 --hold 20 --results "$RES" 2>&1 | tee -a "$LOG" ;;
            esac ;;
        multi-broker)  # two brokers on one Redis: the publisher on one, the 1,000 subscribers on the other
            case " $TARGETS " in *" agentchat "*)
                "$LT" run --workload broadcast --target agentchat --brokers 2 --connections "$SUBSCRIBERS" \
                    --payload "$PAYLOAD" --results "$RES" 2>&1 | tee -a "$LOG" ;;
            esac ;;
    esac
done
fi  # STANDARD
# The rows of issue 12: fixed rates (payloads, fan-out) and resume, every repetition in flipped target order.
if [ -n "$COMPARE" ]; then
for i in $(seq 1 "$REPEAT"); do
    for n in $BROKER_PROCESSES; do
        read -r -a ct <<< "$(compare_targets "$i" "$n")"
        [ ${#ct[@]} = 0 ] && continue
        for row in $COMPARE; do
            echo "== $row, run $i of $REPEAT, broker processes $n: ${ct[*]}" | tee -a "$LOG"
            case $row in
                payloads)
                    for pr in $PAYLOAD_RATES; do
                        lt run --workload broadcast "${ct[@]}" --broker-processes "$n" --connections "$SUBSCRIBERS" \
                            --payload "${pr%%:*}" --fixed-rate "${pr##*:}" --step-seconds "$FIXED_SECONDS" --results "$RES"
                    done ;;
                fanout)
                    lt run --workload broadcast "${ct[@]}" --broker-processes "$n" \
                        --connections $((FANOUT_AGENTS * FANOUT_PER_AGENT)) --connections-per-agent "$FANOUT_PER_AGENT" \
                        --payload "$PAYLOAD" --fixed-rate "$FANOUT_RATE" --step-seconds $((FIXED_SECONDS * 2)) --results "$RES" ;;
                resume)
                    case " ${ct[*]} " in *" agentchat "*)
                        lt run --workload resume --target agentchat --broker-processes "$n" --backlog "$RESUME_BACKLOG" \
                            --tries "$RESUME_TRIES" --payload "$PAYLOAD" --results "$RES" ;;
                    esac ;;
                *) echo "bench: unknown COMPARE row $row (payloads, fanout, resume)" | tee -a "$LOG" ;;
            esac
        done
    done
    echo "load average: $(load)" | tee -a "$LOG"
done
fi
echo "load average after: $(load)" | tee -a "$LOG"
fi

# Keep the figures the page shows: JSON and chart under loadtest/benchmarks/ (results/ is not committed); what
# `make bench-compare` keeps there (compare-*) stays.
KEEP=$ROOT/loadtest/benchmarks
mkdir -p "$KEEP"; rm -f "$KEEP"/*.json "$KEEP"/*.svg
cp "$RES"/*.json "$KEEP"/ 2>/dev/null || true
"$LT" report --results "$RES" --markdown "$RES/tables.md" --svg "$KEEP/broadcast.svg" \
    --svg-link ../loadtest/benchmarks/broadcast.svg

{
    echo "Measured $(date -u -r "$LOG" '+%Y-%m-%d %H:%M UTC') by \`make bench\` (scripts/bench.sh; REPEAT=$REPEAT)."
    echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')),"
    echo "$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(. /etc/os-release; echo "$PRETTY_NAME"),"
    echo "kernel $(uname -r), $($SWIFT --version 2>&1 | head -1 | sed 's/ (.*//'); nats-server $(nats-server --version | awk '{print $NF}'),"
    echo "mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}'), libwebsockets-test-server $(dpkg-query -W -f='${Version}' libwebsockets-test-server),"
    echo "redis-server $(redis-server --version | awk '{print $3}' | cut -d= -f2). Load average (1/5/15 min) before, between runs and after: $(grep -h 'load average' "$LOG" | sed 's/.*: //' | paste -sd';' | sed 's/;/; /g')."
    echo
    echo '```sh'
    echo "make bench   # = scripts/bench.sh; per target:"
    if [ "$STANDARD" = 1 ]; then
    echo "loadtest/.build/release/agentchat-loadtest run --workload broadcast --target T --connections $SUBSCRIBERS --payload $PAYLOAD --extra-rate $((280000 / SUBSCRIBERS))"
    echo "loadtest/.build/release/agentchat-loadtest run --workload idle --target T --connections $IDLE_CONNECTIONS --hold $IDLE_HOLD"
    [ -n "$EXTRAS" ] && echo "# and, once each: churn (--connections 100 --hold 10), rooms (--connections 1000 --start-rate 1), multi-broker (--brokers 2)"
    fi
    # The COMPARE rows as the first repetition ran them, without this machine's paths.
    awk '/^== (payloads|fanout|resume), run 2 of/{exit} /^\$ agentchat-loadtest/' "$LOG" \
        | sed -e 's/^\$ //' -e 's| --results [^ ]*||' -e 's|^|loadtest/.build/release/|' 
    echo '```'
    echo
    cat "$RES/tables.md"
} > "$RES/section.md"

python3 - "$ROOT/docs/BENCHMARKS.md" "$RES/section.md" <<'EOF'
import sys
doc, section = sys.argv[1], open(sys.argv[2]).read()
text = open(doc).read()
begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
if begin in text and end in text:
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    text = head + begin + "\n" + section + end + tail
else:
    text = text.rstrip("\n") + "\n\n" + begin + "\n" + section + end + "\n"
open(doc, "w").write(text)
EOF
echo "docs/BENCHMARKS.md updated from $RES"
