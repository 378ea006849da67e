"""An optional TOML configuration file (``--config`` / ``LIVECOMMENTS_CONFIG``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from livecomments.kernel import settings as cfg


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "livecomments.toml"
    path.write_text(text)
    return str(path)


def test_file_values_sit_between_defaults_and_the_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'log_level = "DEBUG"\nport = 7000\nmax_viewers = 5\ntrusted_proxies = ["10.0.0.0/8"]\n'
        "[rtms]\nport = 9000\n[comment_service]\nport = 8080\n",
    )
    env = {cfg.CONFIG_VARIABLE: path, "LIVECOMMENTS_LOG_LEVEL": "WARNING"}
    rtms = cfg.load(cfg.RTMSSettings, environ=env)
    assert (rtms.port, rtms.max_viewers, rtms.log_level) == (9000, 5, "WARNING")
    comments = cfg.load(cfg.CommentServiceSettings, environ=env)
    assert comments.port == 8080
    assert cfg.load(cfg.DispatcherSettings, environ=env).port == 7000  # the top-level value
    assert cfg.load(cfg.RTMSSettings, {"port": 9100}, environ=env).port == 9100  # a flag wins


def test_every_mistake_in_the_file_is_named(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'prot = 1\nzk_timeout = "soon"\n[rtms]\nmax_viewer = 3\n[comment-srv]\nport = 1\n'
        "[dispatcher]\ngrpc_insecure = 1\n",
    )
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.load(cfg.CommentServiceSettings, environ={cfg.CONFIG_VARIABLE: path})
    problems = caught.value.problems
    assert f"{path}: prot: not a setting (did you mean port?)" in problems
    assert f"{path}: zk_timeout: expected a number, got 'soon'" in problems
    assert f"{path}: [rtms] max_viewer: not a setting (did you mean max_viewers?)" in problems
    assert f"{path}: [comment-srv] is not a component (did you mean [comment_service]?)" in problems
    assert f"{path}: [dispatcher] grpc_insecure: expected a boolean (true/false), got 1" in problems
    assert len(problems) == 5


def test_an_unreadable_or_broken_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(cfg.ConfigError, match="LIVECOMMENTS_CONFIG: cannot read"):
        cfg.load(cfg.RTMSSettings, environ={cfg.CONFIG_VARIABLE: str(tmp_path / "none.toml")})
    broken = write(tmp_path, "port = = 1\n")
    with pytest.raises(cfg.ConfigError, match="not valid TOML"):
        cfg.load(cfg.RTMSSettings, environ={cfg.CONFIG_VARIABLE: broken})


def test_the_command_line_reads_the_file_and_shows_where_values_come_from(tmp_path: Path) -> None:
    path = write(tmp_path, 'jwt_secret = "from-the-file-secret"\n[comment_service]\nport = 8181\n')
    env = {"PATH": "/usr/bin:/bin", "LIVECOMMENTS_JWT_TTL": "60"}
    done = subprocess.run(
        [sys.executable, "-m", "livecomments", "--config", path, "config", "show",
         "--component", "comment-service"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "LIVECOMMENTS_PORT = 8181  # file" in done.stdout
    assert "LIVECOMMENTS_JWT_TTL = 60  # environment" in done.stdout
    assert "LIVECOMMENTS_JWT_SECRET = '********'  # file" in done.stdout
    assert "from-the-file-secret" not in done.stdout
    assert "LIVECOMMENTS_MONGO_DB = 'livecomments'  # default" in done.stdout
