"""Starting the whole system (or pieces of it) as child processes on loopback.

Used by ``livecomments up`` and by the integration tests' fixtures, so the
tests start the system exactly the way a developer does.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

READY_MARK = "livecomments-ready"
ZK_CLASSPATH = ("/usr/share/java/zookeeper.jar", "/usr/share/java/slf4j-simple.jar")
SYSTEM_PACKAGES = {"java": "zookeeper", "redis-server": "redis-server"}


class LaunchError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now: the kernel's choice, or the next free one of
    ``LIVECOMMENTS_PORT_RANGE`` (``first-last``) when that is set.

    Several clusters started at once by different processes (the test suite's
    workers) each get a range of their own, so two of them can never be handed the
    same port between the choice and the bind; a range below the kernel's ephemeral
    ports is also never taken by an outgoing connection meanwhile.
    """
    spec = os.environ.get("LIVECOMMENTS_PORT_RANGE")
    if not spec:
        with socket.socket() as sock:
            sock.bind((host, 0))
            return int(sock.getsockname()[1])
    first, last = (int(part) for part in spec.split("-", 1))
    for _ in range(last - first + 1):
        port = first + next(_range_cursor) % (last - first + 1)
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise LaunchError(f"no free port left in LIVECOMMENTS_PORT_RANGE={spec}")


_range_cursor = itertools.count()


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def port_holders(ports: Mapping[int, str]) -> list[str]:
    """What already listens on any of ``ports`` (port -> what it is for), one line each.

    ``livecomments up`` asks before it starts anything: a process left over from
    an earlier run that was killed (its children outlive it) would otherwise make
    some component fail later, with an error far from the cause.
    """
    import psutil

    listening: dict[int, int | None] = {}
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port in ports:
                listening.setdefault(conn.laddr.port, conn.pid)
    except psutil.AccessDenied:  # not root: at least find that the port is taken
        listening = {port: None for port in ports if not _bindable(port)}
    lines = []
    for port, pid in sorted(listening.items()):
        holder = "another process (run as root to see which)"
        if pid is not None:
            try:
                command = " ".join(psutil.Process(pid).cmdline()) or psutil.Process(pid).name()
            except psutil.Error:
                command = "?"
            holder = f"pid {pid}: {command[:120]}"
        lines.append(f"port {port} ({ports[port]}) is held by {holder}")
    return lines


def _bindable(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def missing_system_packages() -> list[str]:
    """Debian packages that must be installed before anything can start."""
    missing = [pkg for binary, pkg in SYSTEM_PACKAGES.items() if shutil.which(binary) is None]
    if not all(Path(p).exists() for p in ZK_CLASSPATH) and "zookeeper" not in missing:
        missing.append("zookeeper")
    return missing


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0
    log_offset: int = 0  # where this run's output starts in an appended log
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """``kill -9``: no goodbye, no deregistration."""
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(5)

    def stop(self, timeout: float = 10.0) -> None:
        self.terminate()
        self.wait_stopped(timeout)

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM); :meth:`wait_stopped` waits for it."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float = 10.0) -> None:
        """Until it has exited; ``kill -9`` after ``timeout``."""
        if not self.alive():
            return
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


def stop_all(procs: list[Proc], timeout: float = 10.0) -> None:
    """Stop them together: SIGTERM to each, then wait for each (``kill -9`` after ``timeout``)."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait_stopped(timeout)


def spawn(
    name: str,
    argv: list[str],
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    port: int = 0,
) -> Proc:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
        for key in env:  # a value we set wins over an inherited LIVECOMMENTS_<X>_FILE
            full_env.pop(key + "_FILE", None)
    with log_path.open("ab") as log_file:
        popen = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            start_new_session=True,  # Ctrl-C in the terminal reaches `up`, which stops us in order
        )
    proc = Proc(name, popen, log_path, port, offset)
    proc.extra.update(argv=list(argv), env=dict(env or {}), log_dir=log_dir)
    return proc


def respawn(proc: Proc, timeout: float = 30.0) -> Proc:
    """Start a stopped or killed backend again, same command, same port; wait for the port."""
    proc.stop()
    new = spawn(
        proc.name,
        proc.extra["argv"],  # type: ignore[arg-type]
        proc.extra["log_dir"],  # type: ignore[arg-type]
        proc.extra["env"],  # type: ignore[arg-type]
        proc.port,
    )
    wait_until(new, lambda: port_open(new.port), timeout, "restarting")
    return new


def zookeeper_mode(port: int) -> str:
    """ "leader", "follower" or "standalone" from the ``srvr`` command; "" if it does not answer."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"srvr")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
    except OSError:
        return ""
    for line in answer.decode(errors="replace").splitlines():
        if line.startswith("Mode:"):
            return line.split(":", 1)[1].strip()
    return ""


def wait_until(proc: Proc, check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise LaunchError(f"{proc.name} exited while {what}:\n{proc.log_tail()}")
        if callable(check) and check():
            return
        time.sleep(0.05)
    raise LaunchError(f"{proc.name} not ready after {timeout}s ({what}):\n{proc.log_tail()}")


def _log_has(proc: Proc, mark: str) -> bool:
    try:
        with proc.log_path.open("rb") as log_file:
            log_file.seek(proc.log_offset)
            return mark.encode() in log_file.read()
    except OSError:
        return False


def _zk_ok(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"srvr")
            reply = sock.recv(4096)
        return b"Mode:" in reply
    except OSError:
        return False


# -- third-party servers -------------------------------------------------------


def start_zookeeper(
    run_dir: Path,
    ports: list[int],
    *,
    member: int = 1,
    peer_ports: list[tuple[int, int]] | None = None,
    heap_mb: int = 128,
) -> Proc:
    """One ZooKeeper server; with ``peer_ports`` it is member ``member`` of an ensemble.
    ``heap_mb``: enough for tests; the scale benchmark gives it more."""
    data = run_dir / f"zk{member}"
    data.mkdir(parents=True, exist_ok=True)
    port = ports[member - 1]
    lines = [
        "tickTime=1000",
        "initLimit=10",
        "syncLimit=5",
        f"dataDir={data}",
        f"clientPort={port}",
        "clientPortAddress=127.0.0.1",
        "admin.enableServer=false",
        "4lw.commands.whitelist=ruok,srvr,stat,mntr",
        "minSessionTimeout=2000",
        "maxSessionTimeout=60000",
    ]
    if peer_ports:
        (data / "myid").write_text(str(member))
        lines += [f"server.{i}=127.0.0.1:{a}:{b}" for i, (a, b) in enumerate(peer_ports, 1)]
    config = data / "zoo.cfg"
    config.write_text("\n".join(lines) + "\n")
    argv = [
        "java", f"-Xmx{heap_mb}m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
        "-Dzookeeper.admin.enableServer=false",
        "-cp", ":".join(ZK_CLASSPATH),
        "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(config),
    ]  # fmt: skip
    return spawn(f"zookeeper{member}", argv, run_dir / "logs", port=port)


def wait_zookeeper(procs: list[Proc], timeout: float = 30.0) -> None:
    for proc in procs:
        wait_until(proc, lambda p=proc: _zk_ok(p.port), timeout, "waiting for a quorum")


def wait_port(proc: Proc, timeout: float) -> None:
    """Until a backend we started listens on its port."""
    wait_until(proc, lambda: port_open(proc.port), timeout, "waiting for its port")


def start_redis(
    run_dir: Path,
    port: int,
    *,
    wait: bool = True,
    name: str = "redis",
    replica_of: int | None = None,
) -> Proc:
    """``wait=False`` returns at once (then :func:`wait_port`), as for our components.
    ``replica_of``: the port of a primary on this host to replicate."""
    data = run_dir / name
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", str(data), "--daemonize", "no", "--maxclients", "10000",
    ]  # fmt: skip
    if replica_of is not None:
        argv += ["--replicaof", "127.0.0.1", str(replica_of)]
    proc = spawn(name, argv, run_dir / "logs", port=port)
    if wait:
        wait_port(proc, 15)
    return proc


def start_sentinel(
    run_dir: Path,
    port: int,
    master: str,
    primary_port: int,
    *,
    name: str = "sentinel",
    quorum: int = 2,
    down_after_ms: int = 1000,
    wait: bool = True,
) -> Proc:
    """A Redis Sentinel watching the primary on ``primary_port`` as ``master``. It
    rewrites its config file as it learns the other sentinels and the replicas."""
    data = run_dir / name
    data.mkdir(parents=True, exist_ok=True)
    conf = data / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {data}\n"
        f"sentinel monitor {master} 127.0.0.1 {primary_port} {quorum}\n"
        f"sentinel down-after-milliseconds {master} {down_after_ms}\n"
        f"sentinel failover-timeout {master} {down_after_ms * 5}\n"
        f"sentinel parallel-syncs {master} 1\n",
        encoding="utf-8",
    )
    proc = spawn(name, ["redis-server", str(conf), "--sentinel"], run_dir / "logs", port=port)
    if wait:
        wait_port(proc, 15)
    return proc


def start_store(run_dir: Path, port: int, *, memory: bool = False, wait: bool = True) -> Proc:
    """SecantusDB, the embedded MongoDB-wire store (local runs and tests only).

    Started as a standalone server (``--standalone``), which is what it is. By
    default it advertises itself as a one-member replica set: pymongo then sends
    and checks cluster times and session state on every call, which cost the store
    ~0.3 ms and the comment service ~0.25 ms of CPU per comment (issue 13, step 2).
    Nothing here needs a replica set (no change streams, no transactions).
    """
    storage = ":memory:" if memory else str(run_dir / "store")
    exe = Path(sys.executable).with_name("secantusd-py")
    argv = [str(exe), "--host", "127.0.0.1", "--port", str(port), "--storage-path", storage,
            "--log-level", "WARNING", "--standalone"]  # fmt: skip
    proc = spawn("store", argv, run_dir / "logs", port=port)
    if wait:
        wait_port(proc, 30)
    return proc


# -- our own components ---------------------------------------------------------


def start_component(
    kind: str,
    name: str,
    run_dir: Path,
    env: Mapping[str, str],
    port: int,
    timeout: float = 30.0,
    *,
    wait: bool = True,
) -> Proc:
    """``python -m livecomments <kind>``, waited for until it says it is ready.

    ``wait=False`` returns at once: start several, then :func:`wait_ready` each,
    so their start-ups overlap.
    """
    argv = [sys.executable, "-m", "livecomments", kind]
    proc = spawn(name, argv, run_dir / "logs", env=env, port=port)
    if wait:
        wait_ready(proc, timeout)
    return proc


def wait_ready(proc: Proc, timeout: float = 30.0) -> None:
    """Until a component we started says it is ready (LaunchError if it exits or times out)."""
    wait_until(proc, lambda: _log_has(proc, READY_MARK), timeout, "starting")
