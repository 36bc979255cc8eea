"""One command's world: the config, the chosen environment, AWS (after the account guard), the
ledger, the clock and the printer; and how a command reaches the environment's instances."""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.version import InvalidVersion, Version

from release.aws import Aws, Target, credentials_configured, session_name
from release.clock import Clock, SystemClock
from release.cloud import Cloud
from release.config import Config, Environment, select_environment
from release.errors import SandboxError, UsageError, WrongAccount
from release.ledger import Ledger
from release.ui import UI

if TYPE_CHECKING:
    from release.runcommand import SsmReach
    from release.ssh import Ssh, Timeouts



# The tree that is baked (app/, ansible/, packer/), wherever the config file comes from.
PROJECT = Path(__file__).resolve().parents[2]


@dataclass
class CommandContext:
    """One command's world: the config, the chosen environment, AWS, the clock and the printer."""

    cfg: Config
    env: Environment
    aws: Aws
    ui: UI
    clock: Clock
    project: Path
    account: str | None = None  # the AWS account the credentials act in, once checked

    @property
    def cloud(self) -> Cloud:
        return Cloud(self.aws)

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.aws, self.env.ledger_table)


def open_context(cfg: Config, env_name: str | None, ui: UI, *, clock: Clock | None = None,
                 project: Path | None = None, bake: bool = False) -> CommandContext:
    """The world of one command. `bake`: act as the environment's bake role (bake_role_arn)."""
    env, why = select_environment(cfg, env_name, aws_credentials=bool(env_name) or credentials_configured())
    if why:
        ui.once(why)
    ctx = CommandContext(cfg, env, Aws(target_for(env, bake=bake)), ui, clock or SystemClock(), project or PROJECT)
    if not env.sandbox or env.account_id:
        ctx.account = check_account(ctx)
    return ctx


def check_account(ctx: CommandContext) -> str:
    """The account guard: the account the credentials act in (after any role assumption) must be
    the environment's `account_id`, before any command reads or changes anything else."""
    seen = ctx.cloud.caller_account()
    want = ctx.env.account_id
    if want and seen != want:
        raise WrongAccount(f"the AWS credentials act in account {seen}, but [environments.{ctx.env.name}] "
                           f"account_id is {want}; nothing was changed",
                           hint=f"Sign in to account {want} (AWS_PROFILE, or role_arn in versions.toml), "
                                "or correct account_id.")
    if not want:
        ctx.ui.once(f"[environments.{ctx.env.name}] has no account_id: acting in account {seen} unchecked; "
                    f"set account_id = \"{seen}\" to have Kiln refuse any other.")
    return seen


def target_for(env: Environment, *, bake: bool = False) -> Target:
    if not env.sandbox:
        role = (env.bake_role_arn or env.role_arn) if bake else env.role_arn
        return Target(region=env.region, profile=env.profile, role_arn=role,
                      session_name=session_name(actor()), external_id=env.external_id,
                      role_duration=env.role_duration)
    from release.sandbox import lookup  # the sandbox is only loaded when it is used

    info = lookup.running()
    if info is None:
        raise SandboxError(f"environment {env.name!r} is the sandbox, and the sandbox is not running",
                           hint="Start it with `inv sandbox.up`.")
    return Target(region=env.region, endpoint_url=info.endpoint, time_scale=info.time_scale, read_timeout=10.0)


def actor() -> str:
    return os.environ.get("KILN_ACTOR") or f"{getpass.getuser()}@{socket.gethostname()}"


def parse_version(text: str | None) -> Version:
    if not text:
        raise UsageError("--version is required", hint="Name the version, e.g. --version 1.4.2 (see `inv history`).")
    try:
        return Version(text)
    except InvalidVersion:
        raise UsageError(f"--version {text!r} is not a PEP 440 version", hint='Use e.g. --version 1.4.2.') from None


KNOWN_HOSTS = Path(os.environ.get("KILN_KNOWN_HOSTS", "~/.kiln/known_hosts")).expanduser()


def sandbox_key() -> Path | None:
    """The sandbox's launch template key pair, saved by `inv sandbox.up` (None when absent)."""
    from release.sandbox import lookup

    return lookup.instance_key()


def reach_for(ctx: CommandContext, *, key: Path | None = None, use_agent: bool = True,
              record_to: Path | None = None, timeouts: Timeouts | None = None) -> Ssh | SsmReach:
    """How this environment's instances are read: SSH (ssh_for) or, with access = "ssm", SSM Run
    Command (no bastion, no inbound port, no host keys)."""
    if ctx.env.access == "ssm":
        from release.runcommand import SsmReach

        return SsmReach(ctx.cloud, ctx.clock, timeout=timeouts.command if timeouts else 30.0)
    return ssh_for(ctx, key=key, use_agent=use_agent, record_to=record_to, timeouts=timeouts)


def ssh_for(ctx: CommandContext, *, key: Path | None = None, use_agent: bool = True, record_to: Path | None = None,
            timeouts: Timeouts | None = None) -> Ssh:
    """SSH to the environment's instances: strict host keys (known_hosts, then the console output)
    and the environment's bastion, found through the cloud when it is named by its Name tag."""
    from release.ssh import Ssh

    sandbox = sandbox_key() if ctx.env.sandbox else None
    return Ssh(ctx.env.ssh, key_filename=key or sandbox, use_agent=use_agent, console_output=ctx.cloud.console_output,
               record_to=record_to, timeouts=timeouts, locate_bastion=ctx.cloud.running_instance_named,
               bastion_key=sandbox)


def show_config(cfg: Config, env_name: str | None, ui: UI) -> None:
    """`inv show-config`: versions.toml is valid, and what one environment resolves to."""
    environment, why = select_environment(cfg, env_name, aws_credentials=bool(env_name) or credentials_configured())
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
