"""Throwaway Debian servers that really boot, for the configuration tests.

docs/architecture.md ("Tests and benchmarks"): a debootstrap root file system (cached
under ~/.cache/edgeshot/nspawn, built once), an overlayfs copy-on-write view
of it per server, booted with
``systemd-nspawn --boot --register=no --keep-unit`` inside a network
namespace the test makes. The servers share one private LAN (a bridge in a
namespace of its own) that the host joins through one veth pair, so they
reach each other (an edgepoint's servers do) and the host reaches them, and
nothing else: they have no route outward. Their packages come from a local
flat repository of .deb files downloaded on the host with apt-get (the
machine's own Debian sources, never a host name written here), bind-mounted
read-only into each server as ``file:/srv/edgeshot-mirror``.

Teardown: ``systemctl poweroff`` over ssh (all servers at once), then the
overlay mounts, the namespaces (and with them every veth) and the upper
directories are removed; `Lab.close` reports anything left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

CACHE = Path(os.environ.get("EDGESHOT_CACHE",
                            Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                            / "edgeshot")) / "nspawn"
SUITE = "bookworm"
BASE_PACKAGES = ("systemd", "systemd-sysv", "openssh-server", "python3", "iproute2")
ROOTFS_FORMAT = 2  # bump when the customisation below changes
MIRROR_IN_SERVER = "/srv/edgeshot-mirror"


def run(*cmd: str | os.PathLike[str], check: bool = True, timeout: float = 600,
        **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc


def missing_tools() -> list[str]:
    return [t for t in ("debootstrap", "systemd-nspawn", "ssh", "ssh-keygen", "ip",
                        "dpkg-scanpackages", "apt-get")
            if shutil.which(t) is None]


def debian_uri() -> str:
    """The machine's Debian archive URI (deb822 or one-line sources), not the security one."""
    sources = Path("/etc/apt/sources.list.d")
    for f in sorted(sources.glob("*.sources")):
        for stanza in f.read_text().split("\n\n"):
            fields = dict(line.split(":", 1) for line in stanza.splitlines()
                          if ":" in line and not line.startswith("#"))
            suites = fields.get("Suites", "").split()
            if fields.get("Types", "").strip().startswith("deb") and SUITE in suites:
                for uri in fields.get("URIs", "").split():
                    if "security" not in uri:
                        return uri
    for f in [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list"))]:
        if not f.exists():
            continue
        for line in f.read_text().splitlines():
            parts = line.split()
            if parts[:1] == ["deb"] and "security" not in line:
                for p in parts[1:]:
                    if p.split(":", 1)[0] in ("http", "https", "file", "ftp"):
                        return p
    raise RuntimeError("no Debian archive URI in the machine's apt sources")


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def rootfs() -> Path:
    """The cached, bootable base root file system (built on first use, ~1 min)."""
    key = hashlib.sha256(f"{ROOTFS_FORMAT} {SUITE} {' '.join(BASE_PACKAGES)}".encode()
                         ).hexdigest()[:12]
    base = CACHE / f"rootfs-{SUITE}-{key}"
    with _locked(CACHE / ".rootfs.lock"):
        if (base / ".complete").exists():
            return base
        tmp = base.with_name(base.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        run("debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
            SUITE, tmp, debian_uri(), timeout=1200)
        # Packages come from the local mirror the tests prepare, bind-mounted read-only.
        (tmp / "etc/apt/sources.list").write_text(
            f"deb [trusted=yes] file:{MIRROR_IN_SERVER} ./\n")
        (tmp / "etc/apt/apt.conf.d/90edgeshot-test").write_text(
            'Acquire::Languages "none";\nAPT::Install-Recommends "false";\n')
        shutil.rmtree(tmp / "var/lib/apt/lists", ignore_errors=True)
        (tmp / "var/lib/apt/lists/partial").mkdir(parents=True)
        for p in (tmp / "var/cache/apt/archives").glob("*.deb"):
            p.unlink()
        # A container has no consoles to serve and no hardware clock.
        for unit in ("getty@tty1.service", "console-getty.service", "systemd-timesyncd.service"):
            (tmp / "etc/systemd/system" / unit).unlink(missing_ok=True)
            (tmp / "etc/systemd/system" / unit).symlink_to("/dev/null")
        (tmp / "etc/hostname").write_text("edgeshot-test\n")
        for k in (tmp / "etc/ssh").glob("ssh_host_*"):
            k.unlink()  # each server makes its own (sshd-keygen at boot, see Server.prepare)
        (tmp / ".complete").write_text(key + "\n")
        tmp.rename(base)
        return base


def _apt_options(base: Path, archives: Path) -> list[str]:
    """apt on the host, but with its own sources (the debootstrap suite only, from the
    machine's Debian URI), its own lists, and the base root's dpkg status: it resolves
    exactly what installing on a fresh server needs, without upgrades."""
    state = CACHE / f"apt-{SUITE}"
    (state / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (state / "parts").mkdir(exist_ok=True)
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    (state / "sources.list").write_text(
        f"deb [signed-by={keyring}] {debian_uri()} {SUITE} main\n")
    return ["-o", f"Dir::Etc::SourceList={state / 'sources.list'}",
            "-o", f"Dir::Etc::SourceParts={state / 'parts'}",
            "-o", f"Dir::State::Lists={state / 'lists'}",
            "-o", f"Dir::State::status={base}/var/lib/dpkg/status",
            "-o", f"Dir::Cache::archives={archives}", "-o", "APT::Sandbox::User=root",
            "-o", "APT::Install-Recommends=false", "-o", "Debug::NoLocking=1"]


def mirror(packages: tuple[str, ...], base: Path) -> Path:
    """A flat apt repository with every .deb that installing ``packages`` on ``base`` needs.

    Resolved against the base root file system's dpkg status and the same suite
    debootstrap used, from the machine's Debian URI; cached by package list (other
    mirrors of the same base are removed).
    """
    key = hashlib.sha256(f"2 {base.name} {' '.join(sorted(packages))}".encode()).hexdigest()[:12]
    repo = CACHE / f"mirror-{key}"
    with _locked(CACHE / ".mirror.lock"):
        if (repo / "Packages").exists():
            return repo
        tmp = repo.with_name(repo.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "partial").mkdir(parents=True)
        opts = _apt_options(base, tmp)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run("apt-get", *opts, "-q", "update", env=env)
        run("apt-get", *opts, "-y", "-q", "--download-only", "install", *packages, env=env)
        shutil.rmtree(tmp / "partial")
        (tmp / "lock").unlink(missing_ok=True)
        index = run("dpkg-scanpackages", "--multiversion", ".", "/dev/null", cwd=tmp).stdout
        (tmp / "Packages").write_text(index)
        tmp.rename(repo)
        for old in CACHE.glob("mirror-*"):
            if old != repo and old.is_dir() and time.time() - old.stat().st_mtime > 3600:
                shutil.rmtree(old, ignore_errors=True)
        return repo


def ssh_key(directory: Path) -> Path:
    key = directory / "id_ed25519"
    if not key.exists():
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgeshot-test", "-f", key)
    return key


SSH_OPTS = ("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5")


@dataclass
class Server:
    name: str
    address: str
    root: Path
    netns: str
    key: Path
    # "full": every capability and writable /proc/sys, like a real server (CRIU works);
    # "confined": systemd-nspawn's defaults plus CAP_NET_ADMIN and a writable
    # /proc/sys/net (`criu check` fails: kernel.ns_last_pid stays read-only).
    mode: str = "full"
    proc: subprocess.Popen | None = None
    log: Path | None = None

    def ssh(self, command: str, *, check: bool = True, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
        return run("ssh", *SSH_OPTS, "-i", self.key, f"root@{self.address}", command,
                   check=check, timeout=timeout)

    def port_open(self, port: int = 22) -> bool:
        with contextlib.suppress(OSError), socket.create_connection((self.address, port), 0.5):
            return True
        return False


@dataclass
class Lab:
    """A private LAN of booted servers; ``close()`` leaves nothing behind."""

    workdir: Path
    prefix: str = field(default_factory=lambda: f"es{os.getpid() % 100000}")
    servers: dict[str, Server] = field(default_factory=dict)
    subnet: ipaddress.IPv4Network | None = None
    repo: Path | None = None

    @property
    def lan_ns(self) -> str:
        return f"{self.prefix}-lan"

    @property
    def host_if(self) -> str:
        return f"{self.prefix}h"

    def _free_subnet(self) -> ipaddress.IPv4Network:
        used = run("ip", "-o", "-4", "addr").stdout + run("ip", "-4", "route").stdout
        for _ in range(200):
            net = ipaddress.ip_network(f"10.231.{random.randrange(1, 255)}.0/24")
            if f"10.231.{net.network_address.packed[2]}." not in used:
                return net
        raise RuntimeError("no free 10.231.x.0/24 for the test LAN")

    def up(self) -> None:
        """The LAN: a bridge in its own namespace; the host joins it through one veth."""
        self.subnet = self._free_subnet()
        host_addr = f"{self.subnet.network_address + 1}/24"
        run("ip", "netns", "add", self.lan_ns)
        run("ip", "-n", self.lan_ns, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.lan_ns, "link", "set", "br0", "up")
        run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", "up0",
            "netns", self.lan_ns)
        run("ip", "-n", self.lan_ns, "link", "set", "up0", "master", "br0", "up")
        run("ip", "addr", "add", host_addr, "dev", self.host_if)
        run("ip", "link", "set", self.host_if, "up")

    @property
    def host_address(self) -> str:
        assert self.subnet
        return str(self.subnet.network_address + 1)

    def add(self, name: str, base: Path, key: Path, mode: str = "full") -> Server:
        assert self.subnet and self.repo
        i = len(self.servers) + 10
        address = str(self.subnet.network_address + i)
        srv = Server(name=name, address=address, root=self.workdir / name,
                     netns=f"{self.prefix}-{name}", key=key, mode=mode)
        self.servers[name] = srv
        # The server's root: copy-on-write over the cached base (overlayfs), so a server
        # costs only what it changes; the base itself is never written.
        upper, work = self.workdir / f"{name}.upper", self.workdir / f"{name}.work"
        for d in (srv.root, upper, work):
            d.mkdir()
        run("mount", "-t", "overlay", "overlay", "-o",
            f"lowerdir={base},upperdir={upper},workdir={work}", srv.root)
        (srv.root / "etc/hostname").write_text(name + "\n")
        ssh_dir = srv.root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
        os.chmod(ssh_dir / "authorized_keys", 0o600)
        run("ssh-keygen", "-A", "-f", srv.root)  # the server's own host keys
        # Its network: one veth into the LAN bridge, the address on the server's side.
        run("ip", "netns", "add", srv.netns)
        run("ip", "-n", srv.netns, "link", "set", "lo", "up")
        run("ip", "link", "add", f"{self.prefix}-{i}", "netns", self.lan_ns, "type", "veth",
            "peer", "name", "eth0", "netns", srv.netns)
        run("ip", "-n", self.lan_ns, "link", "set", f"{self.prefix}-{i}", "master", "br0", "up")
        run("ip", "-n", srv.netns, "addr", "add", f"{address}/24", "dev", "eth0")
        run("ip", "-n", srv.netns, "link", "set", "eth0", "up")
        self.boot(srv)
        return srv

    def boot(self, srv: Server) -> None:
        srv.log = self.workdir / f"{srv.name}.console"
        env = dict(os.environ)
        if srv.mode == "full":
            caps = ["--capability=all"]
            env["SYSTEMD_NSPAWN_API_VFS_WRITABLE"] = "1"  # /proc/sys: CRIU writes ns_last_pid
        else:  # /proc/sys/net only: forwarding works, CRIU's ns_last_pid does not
            caps = ["--capability=CAP_NET_ADMIN"]
            env["SYSTEMD_NSPAWN_API_VFS_WRITABLE"] = "network"
        with open(srv.log, "ab") as log:
            srv.proc = subprocess.Popen(
                ["systemd-nspawn", "-q", "-D", str(srv.root), "--boot", "--register=no",
                 "--keep-unit", f"--network-namespace-path=/run/netns/{srv.netns}",
                 f"--machine={srv.netns}", "--console=passive", "--link-journal=no",
                 f"--bind-ro={self.repo}:{MIRROR_IN_SERVER}", *caps],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=env)

    def wait_ready(self, timeout: float = 90) -> None:
        """Every server boots to the point where sshd runs commands."""
        deadline = time.monotonic() + timeout
        for srv in self.servers.values():
            while True:
                assert srv.proc is not None
                if srv.proc.poll() is not None:
                    raise RuntimeError(f"{srv.name} exited while booting ({srv.proc.returncode}):"
                                       f"\n{srv.log.read_text()[-3000:] if srv.log else ''}")
                if srv.port_open() and srv.ssh("true", check=False, timeout=15).returncode == 0:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{srv.name} did not answer ssh within {timeout:.0f} s:"
                                       f"\n{srv.log.read_text()[-3000:] if srv.log else ''}")
                time.sleep(0.3)

    def poweroff(self, srv: Server, timeout: float = 60, send: bool = True) -> None:
        if srv.proc is None or srv.proc.poll() is not None:
            return
        if send:
            srv.ssh("systemctl poweroff", check=False, timeout=15)
        try:
            srv.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(srv.proc.pid, signal.SIGKILL)  # nspawn started its own session
            srv.proc.wait(10)

    def leftovers(self) -> list[str]:
        found = []
        netns = run("ip", "netns", "list").stdout
        found += [f"netns {ln.split()[0]}" for ln in netns.splitlines()
                  if ln.startswith(f"{self.prefix}-")]
        links = run("ip", "-o", "link").stdout
        if f" {self.host_if}@" in links or f" {self.host_if}:" in links:
            found.append(f"link {self.host_if}")
        mounts = Path("/proc/self/mountinfo").read_text()
        if str(self.workdir) in mounts:
            found.append(f"mounts under {self.workdir}")
        for srv in self.servers.values():
            if srv.proc is not None and srv.proc.poll() is None:
                found.append(f"server {srv.name} still running (pid {srv.proc.pid})")
        return found

    def set_link(self, srv: Server, up: bool) -> None:
        """Cut (or restore) a server's cable: its veth in the LAN bridge goes down."""
        i = list(self.servers).index(srv.name) + 10
        run("ip", "-n", self.lan_ns, "link", "set", f"{self.prefix}-{i}", "up" if up else "down")

    def close(self) -> list[str]:
        running = [s for s in self.servers.values() if s.proc and s.proc.poll() is None]
        for srv in running:  # all at once, then wait for each
            with contextlib.suppress(Exception):
                self.set_link(srv, True)
            with contextlib.suppress(Exception):
                srv.ssh("systemctl poweroff", check=False, timeout=15)
        for srv in running:
            with contextlib.suppress(Exception):
                self.poweroff(srv, send=False)
        for srv in self.servers.values():
            run("ip", "netns", "delete", srv.netns, check=False)
        run("ip", "netns", "delete", self.lan_ns, check=False)
        run("ip", "link", "delete", self.host_if, check=False)
        for srv in self.servers.values():
            if os.path.ismount(srv.root):
                if run("umount", srv.root, check=False).returncode != 0:
                    time.sleep(1)
                    run("umount", srv.root, check=False)
        left = self.leftovers()
        for srv in self.servers.values():
            if not os.path.ismount(srv.root):  # never delete through a mount
                run("rm", "-rf", "--one-file-system", srv.root,
                    self.workdir / f"{srv.name}.upper", self.workdir / f"{srv.name}.work",
                    check=False)
        return left
