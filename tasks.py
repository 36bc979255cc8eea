"""Kiln's commands: a page of thin invoke tasks. The work happens in the `release` package.

`inv --list` shows every command; `inv --help <command>` explains its flags.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from release import config as kiln_config
from release.errors import KilnError
from release.ui import UI

CONFIG_HELP = "Path of versions.toml (default: ./versions.toml)."
ENV_HELP = "Environment from versions.toml (default: the sandbox without AWS credentials, "
ENV_HELP += "else default_environment)."
JSON_HELP = "Print one JSON document on stdout instead of tables."


@contextmanager
def kiln_errors() -> Iterator[None]:
    """A Kiln error is one clear line and its exit code, never a traceback."""
    try:
        yield
    except KilnError as err:
        raise Exit(f"kiln: {err}", code=err.exit_code) from None


def load_config(path: str | None) -> kiln_config.Config:
    return kiln_config.load(Path(path) if path else kiln_config.DEFAULT_PATH)


@task(help={"config": CONFIG_HELP, "env": ENV_HELP, "json": JSON_HELP})
def show_config(c: Context, env: str | None = None, config: str | None = None, json: bool = False) -> None:
    """Validate versions.toml and show what one environment resolves to."""
    from release.aws import credentials_configured

    ui = UI(json_mode=json)
    with kiln_errors():
        cfg = load_config(config)
        environment, why = kiln_config.select_environment(
            cfg, env, aws_credentials=bool(env) or credentials_configured())
        if why:
            ui.note(why)
        preferences = environment.refresh.as_aws(environment.alarms)
        ui.success(f"{cfg.path}: valid ({len(cfg.environments)} environments)")
        ui.table(["key", "value"], [
            ("app", f"{cfg.app.name} {cfg.app.version}"),
            ("environment", environment.name + (" (sandbox)" if environment.sandbox else "")),
            ("region", environment.region),
            ("auto scaling group", environment.asg),
            ("launch template", environment.launch_template),
            ("alarms", ", ".join(environment.alarms)),
            ("refresh", ", ".join(f"{k}={v}" for k, v in preferences.items())),
            ("gate", f"timeout {environment.gate.timeout}s, poll every {environment.gate.poll_interval}s"),
        ])
        ui.result({"app": cfg.app, "environment": environment})


ns = Collection(show_config)
