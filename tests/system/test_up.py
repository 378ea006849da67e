"""``livecomments up``: leftovers holding its ports are named before anything starts, and a
component that dies is started again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from livecomments.cli.cluster import RTMS_PORT, Backends

# Below the ports the suite's workers take (20000 and up) and the kernel's ephemeral ones.
OFFSET = 10000
RTMS_1 = RTMS_PORT + OFFSET


def up_env(backends: Backends, namespace: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LIVECOMMENTS_")}
    return {
        **clean,
        "LIVECOMMENTS_ZK_HOSTS": backends.zk_hosts,
        "LIVECOMMENTS_REDIS_URL": backends.redis_url,
        "LIVECOMMENTS_MONGO_URI": backends.mongo_uri,
        "LIVECOMMENTS_NAMESPACE": namespace,
        "LIVECOMMENTS_PASSWORD_HASHING": "test-only",
    }


def command(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "livecomments", "up", "--run-dir", str(run_dir), "--no-tls",
            "--port-offset", str(OFFSET), "--dispatchers", "1", "--rtms", "2"]  # fmt: skip


def test_a_port_held_by_a_leftover_is_named_before_anything_starts(
    backends: Backends, tmp_path: Path
) -> None:
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", RTMS_1))
        squatter.listen()
        done = subprocess.run(
            command(tmp_path / "run"),
            env=up_env(backends, "upleft"),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1, done.stderr
    assert f"port {RTMS_1} (rtms-1 SSE) is held by pid {os.getpid()}: " in done.stderr
    assert "--port-offset" in done.stderr
    assert "starting" not in done.stdout  # nothing was started


def wait_for(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = path.read_text(errors="replace")
        if text in seen:
            return seen
        assert proc.poll() is None, f"up exited with {proc.returncode}:\n{seen}"
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not seen in:\n{path.read_text(errors='replace')}")


@pytest.fixture
def running_up(
    backends: Backends, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    output = tmp_path / "up.out"
    with output.open("wb") as out:
        proc = subprocess.Popen(
            command(tmp_path / "run"), env=up_env(backends, "uprestart"),
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(output, "livecomments is up.", proc)
        yield proc, output
    finally:
        children = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
        psutil.wait_procs(children, timeout=15)
        for child in children:  # never leave a process behind, whatever failed
            if child.is_running():
                child.kill()


def listener_pid(port: int) -> int:
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return conn.pid
    raise AssertionError(f"nothing listens on {port}")


def test_a_component_that_dies_is_started_again_and_said_so(
    running_up: tuple[subprocess.Popen[bytes], Path],
) -> None:
    proc, output = running_up
    victim = listener_pid(RTMS_1)
    assert victim in {child.pid for child in psutil.Process(proc.pid).children()}
    os.kill(victim, signal.SIGKILL)
    seen = wait_for(output, "rtms-1 is back", proc)
    assert "!! rtms-1 exited with status -9; restarting it" in seen
    assert listener_pid(RTMS_1) != victim
    with urllib.request.urlopen(f"http://127.0.0.1:{RTMS_1}/healthz", timeout=10) as answer:
        assert answer.status == 200
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0
    assert "stopped." in output.read_text()
