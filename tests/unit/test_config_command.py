"""``livecomments config check|show``: validate without starting, print with secrets masked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from livecomments.kernel import settings as cfg


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(cfg.ENV_PREFIX)}
    return subprocess.run(
        [sys.executable, "-m", "livecomments", "config", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_names_every_problem_and_exits_78(tmp_path: Path) -> None:
    done = run("check", LIVECOMMENTS_PORT="eighty", LIVECOMMENTS_GRPC_INSECURE="maybe")
    assert done.returncode == cfg.EXIT_CONFIG
    assert "rtms: LIVECOMMENTS_PORT: expected an integer, got 'eighty'" in done.stderr
    assert "rtms: LIVECOMMENTS_GRPC_INSECURE: expected a boolean" in done.stderr
    assert "Traceback" not in done.stderr
    done = run("check")
    assert done.returncode == cfg.EXIT_CONFIG
    assert "comment-service: LIVECOMMENTS_JWT_SECRET (or _FILE) is required" in done.stderr
    assert "LIVECOMMENTS_GRPC_CA" in done.stderr and "Traceback" not in done.stderr
    done = run(
        "check",
        "--component",
        "dispatcher",
        LIVECOMMENTS_GRPC_CA=str(tmp_path / "ca.pem"),
        LIVECOMMENTS_GRPC_CERT=str(tmp_path / "cert.pem"),
        LIVECOMMENTS_GRPC_KEY=str(tmp_path / "key.pem"),
    )
    assert done.returncode == cfg.EXIT_CONFIG and "cannot read gRPC credentials" in done.stderr


def test_check_passes_a_good_configuration() -> None:
    done = run("check", LIVECOMMENTS_JWT_SECRET="x" * 32, LIVECOMMENTS_GRPC_INSECURE="true")
    assert done.returncode == 0, done.stderr
    assert "configuration ok" in done.stdout


def test_show_prints_effective_values_with_secrets_masked() -> None:
    done = run(
        "show",
        "--component",
        "comment-service",
        LIVECOMMENTS_JWT_SECRET="very-secret-value",
        LIVECOMMENTS_ZK_AUTH="ops:zk-password",
        LIVECOMMENTS_REDIS_URL="redis://app:redis-password@10.0.0.5:6379/0",
        LIVECOMMENTS_PORT="8443",
    )
    assert done.returncode == 0, done.stderr
    for secret in ("very-secret-value", "zk-password", "redis-password"):
        assert secret not in done.stdout
    assert "LIVECOMMENTS_REDIS_URL = 'redis://app:********@10.0.0.5:6379/0'" in done.stdout
    assert "LIVECOMMENTS_JWT_SECRET = '********'" in done.stdout
    assert "LIVECOMMENTS_PORT = 8443" in done.stdout
