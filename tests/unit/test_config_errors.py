"""A bad setting names its variable and what it expects, and the process exits 78."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from livecomments.kernel import settings as cfg


@pytest.mark.parametrize(
    ("variable", "value", "expects"),
    [
        ("LIVECOMMENTS_PORT", "80a", "expected an integer"),
        ("LIVECOMMENTS_ZK_TIMEOUT", "soon", "expected a number"),
        ("LIVECOMMENTS_GRPC_INSECURE", "maybe", "expected a boolean"),
    ],
)
def test_a_bad_value_names_its_variable(variable: str, value: str, expects: str) -> None:
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.load(cfg.RTMSSettings, environ={variable: value})
    assert variable in str(caught.value) and expects in str(caught.value)
    assert repr(value) in str(caught.value)


def test_a_check_after_parsing_is_a_config_error_too() -> None:
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.load(cfg.RTMSSettings, environ={"LIVECOMMENTS_TRUSTED_PROXIES": "10.0.0.0/33"})
    assert "10.0.0.0/33" in str(caught.value)


@pytest.mark.parametrize("value", ["10.0.0.7", "rtms-3:", ":9801", "rtms-3:0", "rtms-3:70000",
                                   "rtms-3:grpc"])  # fmt: skip
def test_the_advertised_grpc_address_must_be_host_and_port(value: str) -> None:
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.load(cfg.RTMSSettings, environ={"LIVECOMMENTS_GRPC_ADVERTISE": value})
    assert "LIVECOMMENTS_GRPC_ADVERTISE: expected host:port" in str(caught.value)
    for good in ("rtms-3.rtms.svc:9801", "10.0.0.7:443", "[fd00::7]:9801", ""):
        loaded = cfg.load(cfg.RTMSSettings, environ={"LIVECOMMENTS_GRPC_ADVERTISE": good})
        assert loaded.grpc_advertise == good


def test_good_values_still_load() -> None:
    loaded = cfg.load(
        cfg.RTMSSettings,
        environ={"LIVECOMMENTS_PORT": "8443", "LIVECOMMENTS_GRPC_INSECURE": "yes"},
    )
    assert loaded.port == 8443 and loaded.grpc_insecure is True


def test_a_process_with_a_bad_value_exits_78_without_a_traceback() -> None:
    env = {**os.environ, "LIVECOMMENTS_PORT": "eighty"}
    done = subprocess.run(
        [sys.executable, "-m", "livecomments", "rtms"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == cfg.EXIT_CONFIG
    assert "LIVECOMMENTS_PORT" in done.stderr and "expected an integer" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_operator_command_with_a_bad_value_exits_78_too() -> None:
    env = {**os.environ, "LIVECOMMENTS_ZK_TIMEOUT": "soon"}
    done = subprocess.run(
        [sys.executable, "-m", "livecomments", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == cfg.EXIT_CONFIG, done.stderr
    assert "LIVECOMMENTS_ZK_TIMEOUT" in done.stderr and "Traceback" not in done.stderr


def test_a_secret_can_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "jwt"
    secret.write_text("s3cret-from-a-file\n")
    loaded = cfg.load(
        cfg.CommentServiceSettings, environ={"LIVECOMMENTS_JWT_SECRET_FILE": str(secret)}
    )
    assert loaded.jwt_secret == "s3cret-from-a-file"
    with pytest.raises(cfg.ConfigError, match="LIVECOMMENTS_JWT_SECRET_FILE: cannot read"):
        cfg.load(
            cfg.CommentServiceSettings,
            environ={"LIVECOMMENTS_JWT_SECRET_FILE": str(tmp_path / "missing")},
        )
    with pytest.raises(cfg.ConfigError, match="both set"):
        cfg.load(
            cfg.CommentServiceSettings,
            environ={"LIVECOMMENTS_JWT_SECRET_FILE": str(secret), "LIVECOMMENTS_JWT_SECRET": "x"},
        )


def test_an_unknown_variable_is_warned_about_with_the_name_it_resembles() -> None:
    env = {"LIVECOMMENTS_REDIS_ULR": "redis://x", "LIVECOMMENTS_PORT": "1", "PATH": "/bin"}
    assert cfg.unknown_variables(env) == [("LIVECOMMENTS_REDIS_ULR", "LIVECOMMENTS_REDIS_URL")]
    assert cfg.unknown_variables({"LIVECOMMENTS_JWT_SECRET_FILE": "/x"}) == []
    env = {**os.environ, "LIVECOMMENTS_REDIS_ULR": "redis://x", "LIVECOMMENTS_PORT": "eighty"}
    done = subprocess.run(
        [sys.executable, "-m", "livecomments", "rtms"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "LIVECOMMENTS_REDIS_ULR is not a setting (did you mean LIVECOMMENTS_REDIS_URL?)" in (
        done.stderr
    )


def test_the_worker_id_range_is_a_setting_checked_at_start() -> None:
    assert cfg.CommentServiceSettings().worker_range == (0, 1023)
    assert cfg.CommentServiceSettings(worker_ids="512-767").worker_range == (512, 767)
    for bad in ("", "5", "7-3", "0-1024", "-1-4", "a-b", "1-2-3"):
        with pytest.raises(cfg.ConfigError):
            cfg.CommentServiceSettings(worker_ids=bad)
