"""A stand-in server for bench/: it records the exact moments gpuops must react to.

    python bench/fake_server.py PORT LOAD_SECONDS MARK_FILE
    python bench/fake_server.py --port PORT LOAD_SECONDS MARK_FILE   # as a recipe: gpuops reads --port

Loads (prints progress) for LOAD_SECONDS, binds PORT, prints uvicorn's ready line, and writes the
time.time() of that line to MARK_FILE.ready. On SIGTERM it lingers 0.1-0.4 s (like a server
draining), writes the time just before exiting to MARK_FILE.exit, and exits.
"""

import http.server
import random
import signal
import sys
import threading
import time

args = [a for a in sys.argv[1:] if a != "--port"]
port, load, mark = int(args[0]), float(args[1]), args[2]

for i in range(10):
    print(f"Loading safetensors checkpoint shards: {i * 10}% Completed", flush=True)
    time.sleep(load / 10)


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Health)
threading.Thread(target=server.serve_forever, daemon=True).start()


def on_term(*_):
    time.sleep(random.uniform(0.1, 0.4))
    with open(mark + ".exit", "w") as f:
        f.write(repr(time.time()))
    sys.stdout.flush()
    import os

    os._exit(0)


signal.signal(signal.SIGTERM, on_term)
print(f"INFO:     Uvicorn running on http://127.0.0.1:{port} (Press CTRL+C to quit)", flush=True)
with open(mark + ".ready", "w") as f:
    f.write(repr(time.time()))
while True:
    time.sleep(3600)
