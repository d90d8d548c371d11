#!/usr/bin/env python3
"""Hold N idle WebSocket connections open against a server and report its memory and CPU per connection.

Connections are spread over several worker processes and loopback source addresses (127.0.0.2, .3, ...), because
one process here may open at most 20,000 files and one source address has about 28,000 ephemeral ports. Workers
answer the server's pings, as a live client would. Only loopback addresses are used; the run is bounded in time.

  scripts/idle-connections.py --port 8080 --pid <server pid> --connections 19000 --seconds 30
"""
import argparse, asyncio, base64, multiprocessing as mp, os, resource, struct, sys, time

def worker(host, port, path, subprotocol, count, source, ready, stop):
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    async def one(i):
        for attempt in range(5):
            try:
                r, w = await asyncio.open_connection(host, port, local_addr=(source, 0))
                break
            except OSError:
                await asyncio.sleep(0.2 * (attempt + 1))
        else:
            return False
        key = base64.b64encode(os.urandom(16)).decode()
        proto = f"Sec-WebSocket-Protocol: {subprotocol}\r\n" if subprotocol else ""
        w.write((f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{proto}\r\n").encode())
        head = await r.readuntil(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n")[0]:
            return False
        asyncio.get_running_loop().create_task(serve(r, w))
        return True
    async def serve(r, w):
        try:
            while True:
                b0, b1 = await r.readexactly(2)
                n = b1 & 0x7F
                if n == 126: n = struct.unpack(">H", await r.readexactly(2))[0]
                elif n == 127: n = struct.unpack(">Q", await r.readexactly(8))[0]
                payload = await r.readexactly(n)
                if b0 & 0x0F == 0x9:  # ping -> masked pong
                    mask = os.urandom(4)
                    w.write(bytes([0x8A, 0x80 | len(payload)]) + mask +
                            bytes(c ^ mask[i % 4] for i, c in enumerate(payload)))
        except Exception:
            pass
    async def main():
        ok = 0
        for start in range(0, count, 200):
            results = await asyncio.gather(*(one(i) for i in range(start, min(count, start + 200))))
            ok += sum(results)
        ready.put(ok)
        while not stop.is_set():
            await asyncio.sleep(0.2)
    try:
        asyncio.run(main())
    finally:
        os._exit(0)  # the sockets close with the process; skip asyncio's teardown of thousands of tasks

def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--subprotocol", default="agentchat.v1")
    p.add_argument("--pid", type=int, required=True, help="server process to measure")
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--per-process", type=int, default=5000)
    p.add_argument("--seconds", type=float, default=30)
    a = p.parse_args()
    assert a.host.startswith("127."), "loopback only"
    rss0 = rss_kib(a.pid)
    procs, ready, stop = [], mp.Queue(), mp.Event()
    remaining, k = a.connections, 0
    while remaining > 0:
        n = min(a.per_process, remaining)
        pr = mp.Process(target=worker, args=(a.host, a.port, a.path, a.subprotocol, n, f"127.0.0.{2 + k}", ready, stop))
        pr.start(); procs.append(pr); remaining -= n; k += 1
    opened = sum(ready.get(timeout=300) for _ in procs)
    time.sleep(2)  # let connection set-up work finish
    rss1, cpu0, t0 = rss_kib(a.pid), cpu_seconds(a.pid), time.monotonic()
    time.sleep(a.seconds)
    cpu1, t1 = cpu_seconds(a.pid), time.monotonic()
    stop.set()
    for pr in procs: pr.join(timeout=30)
    per_conn_kib = (rss1 - rss0) / max(opened, 1)
    cpu_us = (cpu1 - cpu0) / (t1 - t0) * 1e6 / max(opened, 1)
    print(f"connections={opened} rss_before_kib={rss0} rss_after_kib={rss1} "
          f"rss_per_connection_bytes={per_conn_kib * 1024:.0f} "
          f"idle_cpu_us_per_second_per_connection={cpu_us:.3f} window_s={t1 - t0:.1f}")
    return 0 if opened == a.connections else 1

if __name__ == "__main__":
    sys.exit(main())
