"""What each piece of the edgepoint's HAProxy configuration costs, against a plain HAProxy.

    .venv/bin/python bench/edge_haproxy_pieces.py [--rounds 8] [--seconds 2] [--callgrind]

No agent, no CRIU, no edge process: the tiny keep-alive app (``bench/apps/tiny``, node)
listens on loopback; in front of it run a plain hand-written HAProxy (the baseline) and
the edgepoint's own configuration as ``edgeshot.edge`` renders it, whole and with one
piece removed at a time. Two measures:

* req/s and p50 with wrk ``-t1 -c32``, HAProxy on its default threads, the variants
  alternated round by round (medians; ~±0.03 from run to run on 2 vCPUs);
* ``--callgrind``: instructions per request under ``valgrind --tool=callgrind`` (one
  thread): exact whatever else the machine does, but blind to cross-thread costs.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from edgeshot.edge import _haproxy as H

HERE = Path(__file__).resolve().parent
HOST = "bench.example.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def wrk(port: int, seconds: int, conns: int = 32) -> tuple[float, float, int]:
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "-H",
                          f"Host: {HOST}", f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    n = int(re.search(r"(\d+) requests in", out).group(1))
    v, unit = re.search(r"^\s+50%\s+([\d.]+)(\w+)", out, re.M).groups()
    return rps, float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit], n


def plain(port: int, backend: str) -> str:
    return (f"global\n    maxconn 4096\ndefaults\n    mode http\n    timeout connect 3s\n"
            f"    timeout client 60s\n    timeout server 60s\nfrontend plain\n"
            f"    bind 127.0.0.1:{port}\n    default_backend app\nbackend app\n"
            f"    server s1 {backend}\n")


# the pieces, as (text in the rendered configuration, replacement)
SAMPLE = re.compile(r"    http-request set-log-level silent if .*\n")
CAPTURE = "    http-request capture req.hdr(x-edgeshot-region) len 48\n"
NO_LOGS = [(re.compile(r"    log 127\.0\.0\.1.*\n"), ""), ("    log global\n", "")]
STAGE = "    http-request del-header x-edgeshot-stage\n"
VARIANTS: dict[str, list[tuple[re.Pattern[str] | str, str]]] = {
    "edgepoint": [],
    "- region capture": [(CAPTURE, "")],
    "- stage header strip": [(STAGE, "")],
    "- sampling rule (every request logged)": [(SAMPLE, "")],
    "- request logs": NO_LOGS,
    "- request logs, sampling rule": NO_LOGS + [(SAMPLE, "")],
    "- logs, sampling, capture, strip": NO_LOGS + [(SAMPLE, ""), (CAPTURE, ""), (STAGE, "")],
}


def edgepoint(port: int, run_dir: Path, backend: str, log_port: int,
              edits: list[tuple[re.Pattern[str] | str, str]]) -> str:
    conf = H.HAProxyConf(
        edgepoint="b", listen="127.0.0.1", http_port=port, run_dir=run_dir,
        apps=(H.AppConf("tiny", hosts=(HOST,), health_path="/healthz",
                        servers=(H.Server("tiny-1", backend),)),),
        log_port=log_port, log_every=64)  # 1 in 64: what the edge sets near 13k req/s
    rendered = H.render(conf)
    H.write_config(conf, rendered)
    text = rendered.text
    for old, new in edits:
        text, n = (old.subn(new, text) if isinstance(old, re.Pattern)
                   else (text.replace(old, new), text.count(old)))
        if not n:
            raise SystemExit(f"the rendered configuration has no {old!r}: update this bench")
    return text


class Bench:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="es-pieces-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        app_port = free_port()
        self.backend = f"127.0.0.1:{app_port}"
        self.spawn(["node", str(HERE / "apps" / "tiny" / "server.js")],
                   env={**os.environ, "PORT": str(app_port)})
        wait_port(app_port)
        self.sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sink.bind(("127.0.0.1", 0))
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while True:
            self.sink.recv(65536)

    def spawn(self, argv: list[str], **kw) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             stdin=subprocess.DEVNULL, **kw)
        self.procs.append(p)
        return p

    def config(self, name: str, port: int) -> Path:
        if name == "plain HAProxy":
            text = plain(port, self.backend)
        else:
            run = self.root / f"run-{port}"
            text = edgepoint(port, run, self.backend, self.sink.getsockname()[1],
                             VARIANTS[name])
        path = self.root / f"{port}.cfg"
        path.write_text(text)
        return path

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


def cpu_s(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def throughput(b: Bench, names: list[str], rounds: int, seconds: int) -> None:
    running: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    for name in names:
        port = free_port()
        running[name] = (b.spawn(["haproxy", "-f", str(b.config(name, port))]), port)
        wait_port(port)
        wrk(port, 1)
    res: dict[str, list[tuple[float, float, float]]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            p, port = running[name]
            c0 = cpu_s(p.pid)
            rps, p50, n = wrk(port, seconds)
            res[name].append((rps, p50, (cpu_s(p.pid) - c0) * 1e6 / max(n, 1)))
    base_rps = statistics.median(x[0] for x in res["plain HAProxy"])
    base_p50 = statistics.median(x[1] for x in res["plain HAProxy"])
    print(f"req/s, wrk -t1 -c32, {rounds} x {seconds} s alternated, medians "
          f"(load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs):")
    for name, xs in res.items():
        rps, p50 = statistics.median(x[0] for x in xs), statistics.median(x[1] for x in xs)
        print(f"  {name:42s} {rps:8.0f} req/s {rps / base_rps:5.2f}x  p50 {p50:5.2f} ms "
              f"({p50 - base_p50:+.2f})  HAProxy CPU {statistics.median(x[2] for x in xs):5.1f} "
              "us/req")


def instructions(b: Bench, names: list[str], seconds: int = 6) -> None:
    print("instructions per request, callgrind, one thread:")
    base = None
    for name in names:
        port = free_port()
        cfg = b.config(name, port)
        cfg.write_text(cfg.read_text().replace("global\n", "global\n    nbthread 1\n", 1))
        out = b.root / f"cg-{port}"
        p = b.spawn(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                     "haproxy", "-db", "-f", str(cfg)])
        wait_port(port, 120)
        wrk(port, 2, conns=4)  # valgrind translates the hot paths first
        subprocess.run(["callgrind_control", "-z", str(p.pid)], capture_output=True, check=True)
        _, _, n = wrk(port, seconds, conns=4)
        subprocess.run(["callgrind_control", "-d", str(p.pid)], capture_output=True, check=True)
        p.terminate()
        p.wait(timeout=30)
        totals = [int(m.group(1)) for f in glob.glob(f"{out}.*")
                  if (m := re.search(r"^(?:summary|totals):\s+(\d+)", Path(f).read_text(
                      errors="replace"), re.M))]
        ir = max(totals) / n
        base = base or ir
        print(f"  {name:42s} {ir:9.0f} instructions/request  {ir / base:5.2f}x  ({n} requests)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=2)
    ap.add_argument("--callgrind", action="store_true", help="also count instructions")
    ap.add_argument("--only", default="", help="comma-separated variant names")
    args = ap.parse_args()
    for tool in ("haproxy", "wrk", "node") + (("valgrind",) if args.callgrind else ()):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing (make system installs it)")
    names = ["plain HAProxy"] + [n for n in VARIANTS
                                 if not args.only or n in args.only.split(",")]
    b = Bench()
    try:
        throughput(b, names, args.rounds, args.seconds)
        if args.callgrind:
            instructions(b, names)
    finally:
        b.close()


if __name__ == "__main__":
    main()
