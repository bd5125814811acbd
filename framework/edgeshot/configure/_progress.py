"""A live view of a configuration run: one row per host, its current task and counts.

Fed with ansible-runner events. On a terminal it redraws in place; elsewhere (CI,
logs) it prints one line per notable event (a failure, an unreachable host, a
changed task) and the final table, so that logs stay readable.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.spinner import Spinner
from rich.table import Table

from ._report import STYLE, render


class ProgressView:
    def __init__(self, network: str, results: dict[str, Any],
                 console: Console | None = None) -> None:
        self.network = network
        self.results = results
        self.console = console or Console(stderr=True)
        self.task: dict[str, str] = {}
        self.counts: dict[str, dict[str, int]] = {n: {"ok": 0, "changed": 0, "failed": 0}
                                                  for n in results}
        self.state: dict[str, str] = {n: ("missing" if r.status == "missing" else "waiting")
                                      for n, r in results.items()}
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._live: Live | None = None

    # ------------------------------------------------------------------ events

    def event(self, event: dict[str, Any]) -> None:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        host = data.get("host")
        with self._lock:
            if host in self.counts:
                task = data.get("task") or ""
                if kind == "runner_on_start":
                    self.task[host] = task
                    if self.state[host] == "waiting":
                        self.state[host] = "running"
                elif kind == "runner_on_ok":
                    key = "changed" if (data.get("res") or {}).get("changed") else "ok"
                    self.counts[host][key] += 1
                    if key == "changed":
                        self._line(f"[yellow]changed[/] {escape(host)}: {escape(task)}")
                    self._note(host, data)
                elif kind == "runner_on_failed" and not data.get("ignore_errors"):
                    self.counts[host]["failed"] += 1
                    self.state[host] = "failed"
                    msg = _msg(data)
                    self._line(f"[bold red]failed[/] {escape(host)}: {escape(task)}: {escape(msg)}")
                elif kind == "runner_on_unreachable":
                    self.state[host] = "unreachable"
                    self._line(f"[bold red]unreachable[/] {escape(host)}: {escape(_msg(data))}")
            if self._live is not None:
                self._live.update(self._render())

    def _note(self, host: str, data: dict[str, Any]) -> None:
        """Messages the roles print on purpose (debug tasks: e.g. CRIU unusable here)."""
        res = data.get("res") or {}
        if data.get("task_action") in ("debug", "ansible.builtin.debug") and res.get("msg"):
            self._line(f"[magenta]note[/] {escape(host)}: {escape(str(res['msg']))}")

    def _line(self, text: str) -> None:
        if self._live is not None and self.console.is_terminal:
            self._live.console.print(text, highlight=False)
        else:
            self.console.print(text, highlight=False)

    # ------------------------------------------------------------------ drawing

    def _render(self) -> Group:
        t = Table(title=f"configuring network {escape(self.network)} "
                        f"({time.monotonic() - self.started:.0f} s)", title_justify="left")
        for col in ("server", "edgepoint", "state", "ok", "changed", "failed", "task"):
            t.add_column(col)
        for name, r in self.results.items():
            st = self.state[name]
            c = self.counts[name]
            t.add_row(escape(name), escape(r.edgepoint or "—"),
                      f"[{STYLE.get(st, '')}]{st}[/]", str(c["ok"]), str(c["changed"]),
                      str(c["failed"]), escape(self.task.get(name, "")[:60]))
        return Group(t, Spinner("dots", text="running site.yml"))

    def start(self) -> None:
        if self.console.is_terminal:
            self._live = Live(self._render(), console=self.console, refresh_per_second=8,
                              transient=True)
            self._live.start()
        else:
            self.console.print(f"configuring network {escape(self.network)}: "
                               f"{len(self.results)} servers", highlight=False)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def summary(self, result: Any) -> None:
        """The final table: per server its result, and the edgepoints kept out of routing."""
        self.console.print(render(result.summary(), f"network {result.network}: "
                                  f"{result.status} in {result.duration_s:.0f} s"))


def _msg(data: dict[str, Any]) -> str:
    res = data.get("res") or {}
    msg = res.get("msg") or res.get("stderr") or ""
    lines = str(msg).strip().splitlines()
    return lines[-1][:300] if lines else "failed"
