#!/bin/sh
# `make demo`: the broker with its embedded Redis, and two SDK agents (agentchat-demo) talking in a listed channel
# with the grant policy. Open the printed address to watch the channel's indicators and buy a sandbox peek.
# Ctrl-C (or SIGTERM) stops the agents and the broker (which stops its Redis), each by its PID.
#
#   AGENTCHAT_BIN_DIR  where agentchat-broker and agentchat-demo are (required)
#   DEMO_DIR           state: broker data in $DEMO_DIR/broker, agent identities and channel in $DEMO_DIR/agents,
#                      the broker's log in $DEMO_DIR/broker.log (default demo-data)
#   DEMO_PORT          the broker's port (default 8080; 0 picks a free one)
#   DEMO_INTERVAL      seconds between messages (default 4)
#   DEMO_BROKER_ARGS   more broker options, e.g. "--peek-refusal-window 10 --peek-duration 60"
set -u
bin=${AGENTCHAT_BIN_DIR:?set AGENTCHAT_BIN_DIR to the directory holding agentchat-broker and agentchat-demo}
dir=${DEMO_DIR:-demo-data}
port=${DEMO_PORT:-8080}
interval=${DEMO_INTERVAL:-4}
mkdir -p "$dir/broker" "$dir/agents"

broker_pid=""
demo_pid=""
stopping=""
stop_all() {
    [ -n "$stopping" ] && return
    stopping=1
    # Background jobs of a non-interactive shell ignore the terminal's SIGINT: stop them here, by PID.
    [ -n "$demo_pid" ] && kill -TERM "$demo_pid" 2>/dev/null
    [ -n "$broker_pid" ] && kill -TERM "$broker_pid" 2>/dev/null
    [ -n "$demo_pid" ] && wait "$demo_pid" 2>/dev/null
    [ -n "$broker_pid" ] && wait "$broker_pid" 2>/dev/null
    echo "demo: stopped (agents pid $demo_pid, broker pid $broker_pid and its Redis)"
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap 'stop_all' EXIT

: > "$dir/broker.out"
# shellcheck disable=SC2086  # DEMO_BROKER_ARGS is split into options on purpose
"$bin/agentchat-broker" --host 127.0.0.1 --port "$port" --data-dir "$dir/broker" ${DEMO_BROKER_ARGS:-} \
    > "$dir/broker.out" 2> "$dir/broker.log" &
broker_pid=$!

url=""
tries=0
while [ -z "$url" ]; do
    url=$(sed -n 's/.*AgentChat broker listening on \(http:\/\/[^ ]*\).*/\1/p' "$dir/broker.out" | head -n 1)
    [ -n "$url" ] && break
    if ! kill -0 "$broker_pid" 2>/dev/null; then
        echo "demo: the broker exited; its log ($dir/broker.log):" >&2
        tail -n 20 "$dir/broker.log" >&2
        broker_pid=""
        exit 1
    fi
    tries=$((tries + 1))
    if [ "$tries" -gt 600 ]; then
        echo "demo: the broker did not start within 60 s; see $dir/broker.log" >&2
        exit 1
    fi
    sleep 0.1
done
echo "demo: broker at $url (pid $broker_pid, log in $dir/broker.log); Ctrl-C stops everything"
echo "demo: open $url/ in a browser to watch the channel and buy a sandbox peek"

"$bin/agentchat-demo" --server "$url" --state-dir "$dir/agents" --interval "$interval" &
demo_pid=$!
echo "demo: agents Ada and Brook started (pid $demo_pid)"
# Returns when the agents exit, or early when a signal arrives (then its trap runs).
wait "$demo_pid"
status=$?
echo "demo: the agents exited with status $status" >&2
exit "$status"
