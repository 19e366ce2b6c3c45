#!/usr/bin/env python3
"""Connection-cap check (issue 11): open TOTAL connections to 127.0.0.1:PORT from one process,
count those the server holds and those it answers 503 and closes, measure the server's CPU for
10 s while the held ones sit idle at the cap, then free one and time a new client's request.

Usage: examples/catalog_service --config bench/cap/qos-cap.yaml --db /tmp/cap.db &
       python3 bench/cap/flood.py $! [PORT=19400] [TOTAL=15000]
Loopback only; bounded (connects, 1.5 s, 10 s, one request); closes everything at exit.
"""
import os
import resource
import socket
import sys
import time

pid = int(sys.argv[1])
port = int(sys.argv[2]) if len(sys.argv) > 2 else 19400
total = int(sys.argv[3]) if len(sys.argv) > 3 else 15000
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_seconds():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


start = time.time()
conns = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(total)]
time.sleep(1.5)
held, refused = [], 0
for s in conns:
    s.setblocking(False)
    try:
        data = s.recv(4096)
        if data == b"" or data.startswith(b"HTTP/1.1 503"):
            refused += 1
            s.close()
            continue
    except BlockingIOError:
        pass
    held.append(s)
print(f"connected {total} in {time.time() - start:.1f} s: held {len(held)}, refused {refused}")
c0 = cpu_seconds()
time.sleep(10)
print(f"server CPU over 10 s with {len(held)} idle connections at the cap: {cpu_seconds() - c0:.2f} s")
held.pop().close()
time.sleep(0.2)
t = time.time()
s = socket.create_connection(("127.0.0.1", port), timeout=5)
s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
line = s.recv(100).split(b"\r\n")[0].decode()
print(f"after one left, a new client: {line} in {1000 * (time.time() - t):.1f} ms")
