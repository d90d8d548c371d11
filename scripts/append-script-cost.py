#!/usr/bin/env python3
"""Redis's cost of the message append script, in instructions (callgrind), so that it can be compared between
revisions on a noisy machine: instruction counts do not depend on what else the machine is doing.

    scripts/append-script-cost.py [--count 10000] [REVISION...]

For each git revision (default: the working tree), the `channel_append` script is read out of
Sources/Persistence/ChannelStore.swift, and redis-server runs under `valgrind --tool=callgrind` twice: once idle
and once serving COUNT appends (pipelined, 100 calls at a time, one channel with 10 members, 256-byte payloads as the
load test sends them). A script that takes several appends per call (the batching layout of 4f884b2) is measured with
1, 4 and 16 per call (--per-call). The difference divided by COUNT is printed, with the same for two references: the script
reduced to `return`, and the five commands of the hot path sent as plain pipelined commands (no script). Redis's
own timers run during both runs, so the figures vary by about 1% between runs.
"""
import argparse, os, re, shutil, socket, subprocess, sys, tempfile, time

DID = "did:agentchat:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
CHANNEL = "agentchat:ch:{ch_FSIvPElWY3B9ipeksb7L2A}"


def script_source(revision):
    path = "Sources/Persistence/ChannelStore.swift"
    text = open(path).read() if revision is None else subprocess.check_output(["git", "show", f"{revision}:{path}"], text=True)
    # The source is a literal (older revisions) or built by appendScript(publish:) with PUBLISH or SPUBLISH.
    match = re.search(r'RedisScript\(name: "channel_append", source: """\n(.*?)\n\s*"""\)', text, re.S)
    if not match:
        sys.exit(f"no channel_append script in {path} at {revision or 'the working tree'}")
    return "\n".join(line.strip() for line in match.group(1).replace("\\(publish)", "PUBLISH").split("\n"))


class Redis:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.file = self.sock.makefile("rb")

    @staticmethod
    def encode(*args):
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        return b"".join(out)

    def read(self):
        line = self.file.readline()
        kind, rest = line[:1], line[1:-2]
        if kind in (b"+", b":"):
            return rest
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b"$":
            return None if int(rest) < 0 else self.file.read(int(rest) + 2)[:-2]
        if kind == b"*":
            return [self.read() for _ in range(max(int(rest), 0))]
        raise RuntimeError(f"unexpected reply {line!r}")

    def call(self, *args):
        self.sock.sendall(self.encode(*args))
        return self.read()


def appends(redis, source, count, per_call=1):
    """Sends `count` appends of one channel; `source` None sends the hot path's commands without a script.
    With `per_call` > 1, `source` is the batch script and each call carries that many appends."""
    sha = redis.call("SCRIPT", "LOAD", source or "return 1").decode()
    redis.call("HSET", CHANNEL, "epoch", 1, "keyedEpoch", 1, "seq", 0, "historyEpoch", "x", "name", "n", "owner", DID)
    redis.call("SADD", CHANNEL + ":members", DID, *[DID[:-4] + "%04d" % i for i in range(1, 10)])
    suffix = (',"ciphertext":"' + "A" * 342 + '","epoch":1,"id":"m%d","nonce":"AAAAAAAAAAAAAAAA","sender":"' + DID
              + '","signature":"' + "B" * 86 + '","ts":1764700000000}')
    now = int(time.time() * 1000)
    batch, calls = [], []
    for n in range(count):
        keys = [CHANNEL, CHANNEL + ":members", CHANNEL + ":log", f"{CHANNEL}:dedup:{DID}:m{n}", CHANNEL + ":rate"]
        if source is None:
            item = '{"offset":%d' % (n + 1) + suffix % n
            batch += [Redis.encode("SISMEMBER", keys[1], DID),
                      Redis.encode("HMGET", CHANNEL, "epoch", "keyedEpoch", "listed", "oldestAt", "seq"),
                      Redis.encode("SET", keys[3], n + 1, "NX", "GET", "PX", 300000),
                      Redis.encode("XADD", keys[2], "MAXLEN", 10000, "0-%d" % (n + 1), "m", item, "t", now),
                      Redis.encode("HSET", CHANNEL, "seq", n + 1, "lastActivity", now),
                      Redis.encode("PUBLISH", CHANNEL + ":feed", item)]
        elif "local function append(" not in source:
            # The layout before batching (one message per call, everything in ARGV).
            batch.append(Redis.encode("EVALSHA", sha, 5, *keys, DID, 1, '{"offset":', suffix % n, now, 10000,
                                      now - 30 * 86_400_000, 300_000, CHANNEL + ":feed"))
        else:
            calls.append((keys, [DID, 1, suffix % n, now, CHANNEL + ":feed"]))
            if len(calls) == per_call or n == count - 1:
                batch.append(Redis.encode("EVALSHA", sha, 5 * len(calls), *[k for keys, _ in calls for k in keys],
                                          '{"offset":', 10000, 30 * 86_400_000, 300_000,
                                          *[a for _, args in calls for a in args]))
                calls = []
        if len(batch) >= 100 or n == count - 1:
            redis.sock.sendall(b"".join(batch))
            for _ in batch:
                redis.read()
            batch = []


def instructions(source, count, workdir, per_call=1):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    output = os.path.join(workdir, "callgrind.out")
    server = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={output}", "redis-server",
                               "--port", str(port), "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                redis = Redis(port)
                redis.call("PING")
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("redis-server under callgrind did not start")
        if count:
            appends(redis, source, count, per_call)
        try:
            redis.call("SHUTDOWN", "NOSAVE")
        except (RuntimeError, OSError):
            pass
        server.wait(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    with open(output) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    raise RuntimeError("no totals in the callgrind output")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--per-call", default="1,4,16",
                        help="appends per call, comma-separated (scripts that take several; default 1,4,16)")
    parser.add_argument("revisions", nargs="*")
    options = parser.parse_args()
    for tool in ("valgrind", "redis-server"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed")
    with tempfile.TemporaryDirectory() as workdir:
        idle = instructions(None, 0, workdir)
        per_call = [int(n) for n in options.per_call.split(",")]
        rows = []
        for rev in options.revisions or [None]:
            source = script_source(rev)
            name = f"channel_append at {rev or 'the working tree'}"
            if "local function append(" in source:
                rows += [(f"{name}, {n} per call", source, n) for n in per_call]
            else:
                rows.append((name, source, 1))
        rows += [("a script that only returns (the cost of calling one)", "return {'ok', 1, 0}", 1),
                 ("the six commands, pipelined, no script", None, 1)]
        print(f"redis-server idle: {idle:,} instructions; {options.count:,} appends each")
        for label, source, n in rows:
            total = instructions(source, options.count, workdir, n)
            print(f"{(total - idle) / options.count / 1000:8.1f}k instructions per append  {label}")


if __name__ == "__main__":
    main()
