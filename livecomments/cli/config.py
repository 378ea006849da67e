"""``livecomments config check|show``: a configuration, validated without starting anything."""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click

from livecomments.kernel import settings as cfg
from livecomments.kernel.grpcauth import GrpcConfigError, GrpcSecurity

COMPONENTS: dict[str, type[cfg.BackendSettings]] = {
    "rtms": cfg.RTMSSettings,
    "dispatcher": cfg.DispatcherSettings,
    "comment-service": cfg.CommentServiceSettings,
}
SECRET_FIELDS = frozenset({"jwt_secret", "zk_auth"})
MASK = "********"


def masked(name: str, value: Any) -> Any:
    """A value fit to print: secrets hidden, the password of a URL hidden."""
    if name in SECRET_FIELDS:
        return MASK if value else ""
    if isinstance(value, str) and "://" in value and "@" in value:
        parts = urlsplit(value)
        if parts.password:
            host = parts.netloc.rsplit("@", 1)[1]
            netloc = f"{parts.username or ''}:{MASK}@{host}"
            return urlunsplit(parts._replace(netloc=netloc))
    return value


def problems(component: str, settings: cfg.BackendSettings) -> list[str]:
    """What would stop ``component`` at start, beyond values that do not parse."""
    found = []
    if isinstance(settings, cfg.CommentServiceSettings) and not settings.jwt_secret:
        found.append("LIVECOMMENTS_JWT_SECRET (or _FILE) is required: every replica shares it")
    try:
        GrpcSecurity.from_settings(settings)  # reads the certificate files, as a start would
    except GrpcConfigError as exc:
        found.append(str(exc))
    return [f"{component}: {problem}" for problem in found]


def _selected(component: str) -> dict[str, type[cfg.BackendSettings]]:
    return COMPONENTS if component == "all" else {component: COMPONENTS[component]}


_component = click.option(
    "--component",
    type=click.Choice(["all", *COMPONENTS]),
    default="all",
    show_default=True,
    help="Which process's settings.",
)


@click.group()
def config() -> None:
    """Check or show the configuration the environment gives."""


@config.command()
@_component
def check(component: str) -> None:
    """Validate the settings without starting anything; exit 78 when they are wrong."""
    for variable, close in cfg.unknown_variables():
        hint = f" (did you mean {close}?)" if close else ""
        click.echo(f"warning: {variable} is not a setting{hint}", err=True)
    errors: list[str] = []
    files = [os.environ[cfg.CONFIG_VARIABLE]] if os.environ.get(cfg.CONFIG_VARIABLE) else []
    for name, cls in _selected(component).items():
        try:
            errors += problems(name, cfg.load(cls))
        except cfg.ConfigError as exc:
            errors += [
                problem if problem.startswith(tuple(files)) else f"{name}: {problem}"
                for problem in exc.problems
            ]
    for error in dict.fromkeys(errors):  # a file's mistake once, not once per component
        click.echo(f"error: {error}", err=True)
    if errors:
        sys.exit(cfg.EXIT_CONFIG)
    click.echo(f"configuration ok ({', '.join(_selected(component))})")


@config.command()
@_component
def show(component: str) -> None:
    """Print the effective values (secrets masked)."""
    for name, cls in _selected(component).items():
        try:
            settings = cfg.load(cls)
        except cfg.ConfigError as exc:
            click.echo(f"livecomments: configuration error: {exc}", err=True)
            sys.exit(cfg.EXIT_CONFIG)
        from_file = (
            cfg.read_config_file(os.environ[cfg.CONFIG_VARIABLE], cls)
            if os.environ.get(cfg.CONFIG_VARIABLE)
            else {}
        )
        click.echo(f"[{name}]")
        for field in dataclasses.fields(settings):
            variable = cfg.ENV_PREFIX + field.name.upper()
            value = masked(field.name, getattr(settings, field.name))
            if variable in os.environ or variable + "_FILE" in os.environ:
                source = "environment"
            elif field.name in from_file:
                source = "file"
            else:
                source = "default"
            click.echo(f"{variable} = {value!r}  # {source}")
        click.echo("")
