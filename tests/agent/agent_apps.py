"""Pod specs of the example apps and tiny inline apps, for the agent tests."""

from __future__ import annotations

from pathlib import Path

from edgeshot.agent import appshots as A

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "examples" / "hello"
SHOP = REPO / "examples" / "shop" / "app"


def hello_spec(**kw) -> A.PodSpec:
    tier = dict(name="web", command=("python3", "app.py"), entry=True, cpu="1", memory_mb=128,
                reseed_signal="SIGUSR2")
    tier.update(kw.pop("tier", {}))
    return A.PodSpec(app=kw.pop("app", "hello"), version="1.0", owner="acme", vendor="acme",
                     source_dir=HELLO, tiers=(A.TierSpec(**tier),),
                     warmup=(A.WarmupRequest(path="/", count=3),), **kw)


def shop_spec() -> A.PodSpec:
    env = {"STORE_PORT": "7001"}
    return A.PodSpec(
        app="shop", version="1.0.0", owner="acme-shop", vendor="acme", source_dir=SHOP,
        tiers=(A.TierSpec(name="web", command=("python3", "web.py"), port=8000, env=env,
                          entry=True, cpu="0.5", memory_mb=128, reseed_signal="SIGUSR2"),
               A.TierSpec(name="store", command=("python3", "store.py"), port=7001, env=env,
                          cpu="0.25", memory_mb=64, reseed_signal="SIGUSR2")),
        warmup=(A.WarmupRequest(path="/catalog", count=5), A.WarmupRequest(path="/", count=2)))


def inline_app(tmp: Path, name: str, code: str) -> Path:
    d = tmp / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "app.py").write_text(code)
    return d


HOG_APP = '''
import os
from http.server import BaseHTTPRequestHandler, HTTPServer

held = []


class H(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/alloc/"):
            held.append(bytearray(int(self.path.rsplit("/", 1)[1]) << 20))
        body = f"held {sum(map(len, held)) >> 20} MiB".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


HTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
'''

URING_APP = '''
import ctypes, os
from http.server import BaseHTTPRequestHandler, HTTPServer

libc = ctypes.CDLL(None, use_errno=True)
ring = libc.syscall(425, 4, ctypes.create_string_buffer(120))  # io_uring_setup
print("io_uring fd", ring, flush=True)


class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


HTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
'''


def inline_spec(tmp: Path, app: str, code: str, **tier) -> A.PodSpec:
    src = inline_app(tmp, app, code)
    t = dict(name="web", command=("python3", "app.py"), entry=True, health_path="/")
    t.update(tier)
    return A.PodSpec(app=app, version="1", source_dir=src, tiers=(A.TierSpec(**t),))
