"""Kiln's commands: a page of thin invoke tasks. The work happens in the `release` package.

`inv --list` shows every command; `inv --help <command>` explains its flags.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from release.errors import KilnError, UsageError

if TYPE_CHECKING:
    from release.commands.context import CommandContext
    from release.config import Config
    from release.ui import UI

# Loading this file is what `inv --list` and every command pay first, so it imports no AWS, SSH or
# table code: each task imports what it needs (tests/unit/test_tasks_import.py keeps it so).

# invoke turns off writing bytecode (it would leave tasks.pyc beside tasks.py), so every command
# would compile Kiln's modules anew (some 50 ms). Cache them in release/__pycache__ (ignored by git)
# unless Python itself was told not to (PYTHONDONTWRITEBYTECODE, -B).
sys.dont_write_bytecode = bool(sys.flags.dont_write_bytecode)

CONFIG = "Path of versions.toml (default: ./versions.toml)."
ENV = "Environment from versions.toml (default: the sandbox without AWS credentials, else default_environment)."
JSON = "Print one JSON document on stdout (for CI) instead of tables."
DRY_RUN = "Show what would happen and change nothing."


@contextmanager
def kiln_errors() -> Iterator[None]:
    """A Kiln error is one clear line and its exit code, never a traceback."""
    try:
        yield
    except KilnError as err:
        raise Exit(f"kiln: {err}", code=err.exit_code) from None


def load_config(config: str | None) -> Config:
    from release import config as kiln_config

    return kiln_config.load(Path(config) if config else kiln_config.DEFAULT_PATH)


def make_ui(json: bool) -> UI:
    from release.ui import UI

    return UI(json_mode=json)


def open_context(env: str | None, config: str | None, json: bool, *, bake: bool = False) -> CommandContext:
    from release.commands import context

    return context.open_context(load_config(config), env, make_ui(json), bake=bake)


@task(help={"config": CONFIG, "env": ENV, "json": JSON})
def show_config(c: Context, env: str | None = None, config: str | None = None, json: bool = False) -> None:
    """Validate versions.toml and show what one environment resolves to."""
    from release.commands import context

    with kiln_errors():
        context.show_config(load_config(config), env, make_ui(json))


@task(help={"env": ENV, "config": CONFIG, "json": JSON, "dry_run": "Print the fingerprint, whether a bake is "
            "needed and the exact Packer command.", "force": "Bake even when an AMI with this fingerprint exists."})
def bake(c: Context, env: str | None = None, config: str | None = None, json: bool = False, dry_run: bool = False,
         force: bool = False) -> None:
    """Bake the AMI for versions.toml's [app] version with Packer + Ansible, then smoke-test it."""
    from release.commands import bake as baking

    with kiln_errors():
        baking.bake(open_context(env, config, json, bake=True), force=force, dry_run=dry_run)


@task(help={"version": "The version to release (PEP 440), baked and validated.", "env": ENV, "config": CONFIG,
            "json": JSON, "dry_run": DRY_RUN + " Prints the plan (and any unfinished release).",
            "allow_downgrade": "Allow releasing a version older than the live one.",
            "force": "Accept an unvalidated or deprecated AMI, or one that skipped lower environments."})
def release(c: Context, version: str | None = None, env: str | None = None, config: str | None = None,
            json: bool = False, dry_run: bool = False, allow_downgrade: bool = False, force: bool = False) -> None:
    """Release a baked version: new LT version, gated instance refresh, automatic rollback."""
    from release.commands import context, deploy

    with kiln_errors():
        wanted = context.parse_version(version)  # bad input first: before touching anything
        deploy.release(open_context(env, config, json), wanted, dry_run=dry_run, allow_downgrade=allow_downgrade,
                         force=force)


@task(help={"env": ENV, "config": CONFIG, "json": JSON,
            "dry_run": DRY_RUN + " Shows the unfinished release and its next step."})
def resume(c: Context, env: str | None = None, config: str | None = None, json: bool = False,
           dry_run: bool = False) -> None:
    """Finish an unfinished release whose driver died (once its lock's lease has lapsed)."""
    from release.commands import deploy

    with kiln_errors():
        deploy.resume(open_context(env, config, json), dry_run=dry_run)


@task(help={"env": ENV, "config": CONFIG, "json": JSON, "dry_run": DRY_RUN,
            "to": "Roll back to this version instead of the previous good one.",
            "break_lock": "Emergency: take the lock over from a live driver of an unfinished release (which stops "
                          "at its next fence check) and roll that release back."})
def rollback(c: Context, env: str | None = None, config: str | None = None, json: bool = False,
             dry_run: bool = False, to: str | None = None, break_lock: bool = False) -> None:
    """Go back: an unfinished release to what the group ran before it; otherwise to the previous good
    release, through the same gated path."""
    from release.commands import deploy

    with kiln_errors():
        deploy.rollback(open_context(env, config, json), to=to, dry_run=dry_run, break_lock=break_lock)


@task(help={"env": ENV, "config": CONFIG, "json": JSON})
def status(c: Context, env: str | None = None, config: str | None = None, json: bool = False) -> None:
    """What is live, what the group launches, the lock, any unfinished release (and what resume or
    rollback would do), where the ledger and the cloud disagree, and each instance's health."""
    from release.commands import status as reports

    with kiln_errors():
        reports.status(open_context(env, config, json))


@task(help={"env": ENV, "config": CONFIG, "json": JSON, "limit": "How many records (newest first)."})
def history(c: Context, env: str | None = None, config: str | None = None, json: bool = False,
            limit: int = 20) -> None:
    """The release history of an environment, from the ledger."""
    from release.commands import status as reports

    with kiln_errors():
        reports.history(open_context(env, config, json), limit=limit)


@task(help={"release": "The release's id (see `inv history`; default: the newest).", "env": ENV, "config": CONFIG,
            "json": JSON, "output": "Where to write the HTML file (default: kiln-report-<env>-<release>.html)."})
def report(c: Context, release: str | None = None, env: str | None = None, config: str | None = None,
           json: bool = False, output: str | None = None) -> None:
    """Write one release as a self-contained HTML report: timeline, gate checks, failure, rollback."""
    from release.commands import status as reports

    with kiln_errors():
        reports.report(open_context(env, config, json), release_id=release, output=Path(output) if output else None)


@task(help={"version": "The version to record for what the group runs now (PEP 440).", "env": ENV,
            "config": CONFIG, "json": JSON, "force": "Adopt even when the environment has a release history."})
def adopt(c: Context, version: str | None = None, env: str | None = None, config: str | None = None, json: bool = False,
          force: bool = False) -> None:
    """Record what an existing group runs now as a release (release 0), so Kiln can roll back to it."""
    from release.commands import context, deploy

    with kiln_errors():
        wanted = context.parse_version(version)
        deploy.adopt(open_context(env, config, json), wanted, force=force)


@task(name="cleanup", help={"env": ENV, "config": CONFIG, "json": JSON, "keep": "How many app versions to keep "
                             "(besides everything still referenced).", "dry_run": DRY_RUN + " Prints keep/delete "
                             "with the reason for each AMI."})
def ami_cleanup(c: Context, env: str | None = None, config: str | None = None, json: bool = False, keep: int = 3,
                dry_run: bool = False) -> None:
    """Deregister AMIs nothing needs (and their snapshots), in every region they were copied to."""
    from release.commands import images

    with kiln_errors():
        images.cleanup(open_context(env, config, json), keep=keep, dry_run=dry_run)


@task(name="deprecate", help={"version": "The version whose AMIs to deprecate.", "reason": "Why (kept in a tag "
                               "and the ledger).", "env": ENV, "config": CONFIG, "json": JSON,
                               "foundation": "Deprecate this foundation AMI instead (the next bake bakes a new one); "
                                             "the app images baked on it are flagged.",
                               "children": "With --foundation: deprecate the app images baked on it too."})
def ami_deprecate(c: Context, version: str | None = None, reason: str = "deprecated by hand", env: str | None = None,
                  config: str | None = None, json: bool = False, foundation: str | None = None,
                  children: bool = False) -> None:
    """Mark a bad version's AMIs deprecated: release refuses them unless forced; rollback skips them."""
    from release.commands import context, images

    with kiln_errors():
        if foundation:
            if version:
                raise UsageError("name a --version or a --foundation, not both",
                                 hint="inv ami.deprecate --version 1.4.2, or --foundation ami-… [--children].")
            images.deprecate_foundation(open_context(env, config, json), foundation, reason=reason,
                                          children=children)
            return
        if children:
            raise UsageError("--children applies to --foundation",
                             hint="inv ami.deprecate --foundation ami-… --children")
        wanted = context.parse_version(version)
        images.deprecate(open_context(env, config, json), wanted, reason=reason)


@task(name="promote", help={"version": "The version to promote: the exact AMI that passed in --env.",
                             "to": "The environment to promote to.", "env": "The environment it passed in.",
                             "config": CONFIG, "json": JSON})
def ami_promote(c: Context, version: str | None = None, to: str | None = None, env: str | None = None,
                config: str | None = None, json: bool = False) -> None:
    """Copy (and share, and re-key) the AMI that passed in one environment to another. Never a rebake."""
    from release.commands import context, images

    with kiln_errors():
        wanted = context.parse_version(version)
        if not to:
            raise UsageError("inv ami.promote needs --to", hint="Name the environment to promote to, e.g. --to prod.")
        images.promote(open_context(env, config, json), wanted, to=to)


@task(name="verify", help={"env": ENV, "config": CONFIG, "json": JSON, "parallel": "How many instances at once.",
                            "key": "Private key for the instances (default: ssh-agent; the sandbox's own key)."})
def fleet_verify(c: Context, env: str | None = None, config: str | None = None, json: bool = False,
                 parallel: int = 8, key: str | None = None) -> None:
    """Prove every in-service instance is what was baked (image, /version, files, services) over SSH."""
    from release.commands import fleet

    with kiln_errors():
        fleet.verify(open_context(env, config, json), parallel=parallel, key=Path(key) if key else None)


@task(name="up", help={"config": CONFIG, "json": JSON,
                       "time_scale": "How long one AWS second lasts in the sandbox (0.1: ten times faster).",
                       "instances": "Run real instances (needs root on Linux). --no-instances: control plane "
                                    "only."})
def sandbox_up(c: Context, config: str | None = None, json: bool = False, time_scale: float = 0.1,
               instances: bool = True) -> None:
    """Start the sandbox (idempotent) and provision every sandbox environment; print how to reach it."""
    from release.commands import sandbox

    with kiln_errors():
        cfg = load_config(config)
        sandbox.up(cfg, make_ui(json), time_scale=time_scale, instances=instances)


@task(name="status", help={"json": JSON})
def sandbox_status(c: Context, json: bool = False) -> None:
    """Is the sandbox running, where, and with which load balancers."""
    from release.commands import sandbox

    with kiln_errors():
        sandbox.status(make_ui(json))


@task(name="down", help={"json": JSON})
def sandbox_down(c: Context, json: bool = False) -> None:
    """Stop the sandbox: its server, every instance, PostgreSQL. Leaves nothing running."""
    from release.commands import sandbox

    with kiln_errors():
        sandbox.down(make_ui(json))


@task(name="new-base-image", help={"config": CONFIG, "json": JSON})
def sandbox_new_base_image(c: Context, config: str | None = None, json: bool = False) -> None:
    """Publish a newer base AMI in the running sandbox (as Debian does with security updates), so that
    the next `inv bake` bakes on it."""
    from release.commands import sandbox

    with kiln_errors():
        sandbox.new_base_image(load_config(config), make_ui(json))


@task(name="fault", optional=["timeout"], auto_shortflags=False, help={
    "operation": "Fault the AWS operation with this botocore name (StartInstanceRefresh), or '*' for every one.",
    "service": "Only calls to this service (botocore name: autoscaling, ec2, elbv2, dynamodb…); default any.",
    "error": "Answer with this AWS error instead of performing the call: Throttling, ServiceUnavailable, "
             "InternalError (each in the service's own words), or any error code.",
    "status": "HTTP status of --error (400-599; default: the error's own, else 400).",
    "message": "Message of --error.",
    "latency": "Perform the call after this many seconds.",
    "timeout": "Perform the call, then hold its response this many seconds (alone: 15), past the client's read "
               "timeout: the request reached AWS, the response was lost.",
    "count": "For the next N matching calls (default 1 without --seconds).",
    "seconds": "For this many seconds (wall clock); with --count, whichever ends first.",
    "list": "List the fault rules in force (and the last ones that ended).",
    "clear": "End every fault rule.",
    "kill": "Kill this instance's processes, as a host failure does; the group replaces it.",
    "stop": "Stop this instance (EC2 StopInstances); the group replaces it.",
    "unhealthy": "Make this instance fail its load balancer health checks.",
    "healthy": "Make this instance pass its health checks again.",
    "json": JSON + " Includes the fault rules in force."})
def sandbox_fault(c: Context, operation: str | None = None, service: str | None = None, error: str | None = None,
                  status: str | None = None, message: str | None = None, latency: str | None = None,
                  timeout: str | None = None, count: str | None = None, seconds: str | None = None,
                  list: bool = False, clear: bool = False, kill: str | None = None, stop: str | None = None,
                  unhealthy: str | None = None, healthy: str | None = None, json: bool = False) -> None:
    """Rehearse a failure in the running sandbox: AWS calls that fail, lag or lose their response, or an
    instance that dies, stops or fails its health checks."""
    from release.commands import sandbox

    with kiln_errors():
        sandbox.fault(make_ui(json), operation=operation, service=service, error=error, status=status,
                               message=message, latency=latency, timeout=timeout, count=count, seconds=seconds,
                               list_rules=list, clear=clear, kill=kill, stop=stop, unhealthy=unhealthy,
                               healthy=healthy)


@task(name="reset", help={"config": CONFIG, "json": JSON, "time_scale": "As for sandbox.up."})
def sandbox_reset(c: Context, config: str | None = None, json: bool = False, time_scale: float = 0.1) -> None:
    """An empty sandbox: stop it, then start and provision it again (the base image cache stays)."""
    from release.commands import sandbox

    with kiln_errors():
        sandbox.reset(load_config(config), make_ui(json), time_scale=time_scale)


ns = Collection(show_config, bake, release, resume, rollback, status, history, report, adopt)
ns.add_collection(Collection("sandbox", sandbox_up, sandbox_status, sandbox_down, sandbox_reset,
                             sandbox_new_base_image, sandbox_fault))
ns.add_collection(Collection("ami", ami_cleanup, ami_deprecate, ami_promote))
ns.add_collection(Collection("fleet", fleet_verify))
