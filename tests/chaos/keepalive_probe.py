"""Observe how long the daemon keeps idle HTTP connections (about 95 s; not a test).

    python tests/chaos/keepalive_probe.py

A: 20 connections that connect and are closed by the client without sending a byte;
B: one connection that completed a request (GET /healthz) and then idles, kept open;
C: one connection that never sends a byte, kept open.
Prints the daemon's open fds every 5 s and when the server closes B or C.
Figures in docs/RELIABILITY.md ("Slow clients").
"""
import os, socket, sys, tempfile, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chaoslib import JqdProcess
d = JqdProcess(tempfile.mkdtemp(prefix="jqd-keepalive-"), env=dict(WORKER_COUNT="2"))
d.start()
pid = d.proc.pid
fc = lambda: len(os.listdir(f"/proc/{pid}/fd"))
time.sleep(0.5); base = fc(); print("base", base, flush=True)
t0 = time.monotonic()
# A: 20 connections that never send and are closed by the client at once
for _ in range(20):
    s = socket.create_connection(("127.0.0.1", d.port)); time.sleep(0.01); s.close()
# B: one connection that completed a request and then idles (client keeps it open)
b = socket.create_connection(("127.0.0.1", d.port)); b.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); print("B answer", b.recv(1000)[:15], flush=True)
# C: one connection that never sends and the client keeps open
c = socket.create_connection(("127.0.0.1", d.port))
b.settimeout(0.05); c.settimeout(0.05)
closed = {}
while time.monotonic() - t0 < 95:
    for name, s in (("B", b), ("C", c)):
        if name in closed: continue
        try:
            if s.recv(100) == b"": closed[name] = time.monotonic() - t0; print(name, "closed by server at", round(closed[name], 1), flush=True)
        except socket.timeout: pass
        except OSError as e: closed[name] = time.monotonic() - t0; print(name, "error", e, round(closed[name],1), flush=True)
    el = time.monotonic() - t0
    if int(el * 10) % 50 == 0: print(f"t={el:.0f}s fds={fc()} (base {base})", flush=True); time.sleep(0.1)
print("closed", closed)
d.stop()
