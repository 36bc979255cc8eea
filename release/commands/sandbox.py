"""The sandbox tasks (`inv sandbox.*`): start, show, stop and rehearse failures in the local cloud.
The only command module that loads the sandbox package."""

from __future__ import annotations

from packaging.version import Version

from release.clock import Clock, SystemClock
from release.commands.context import open_context
from release.commands.deploy import adopt
from release.config import Config
from release.errors import SandboxError, UsageError
from release.sandbox import lookup, server_process, stack
from release.ui import UI


def up(cfg: Config, ui: UI, *, time_scale: float, instances: bool) -> None:
    with ui.progress("starting the sandbox") as progress:
        info = stack.up(cfg, lookup.STATE_DIR, time_scale=time_scale, dataplane=instances,
                        on_step=progress.update)
    if info.dataplane:
        # The seeded fleet runs the legacy app; adopt it as release 0, as a user would (README).
        for name in info.environments:
            ctx = open_context(cfg, name, ui)
            if not ctx.ledger.history(name, limit=1):
                with ui.step():
                    adopt(ctx, Version(stack.LEGACY_VERSION))
    _show_sandbox(ui, info)


def status(ui: UI) -> None:
    info = stack.status(lookup.STATE_DIR)
    if info is None:
        ui.check(False, "sandbox", f"not running (state in {lookup.STATE_DIR}); start it with `inv sandbox.up`")
        ui.result({"running": False})
        raise SandboxError("the sandbox is not running", hint="Start it with `inv sandbox.up`.")
    _show_sandbox(ui, info)


def new_base_image(cfg: Config, ui: UI, clock: Clock | None = None) -> dict[str, str]:
    """Publish a newer base AMI in the running sandbox, the way Debian publishes security updates:
    the next `inv bake` sees the base image move and bakes."""
    base = cfg.base_image
    if base.ami or "*" not in base.name:
        raise UsageError(f"[base_image] pins {base.ami or base.name!r}: a newer base AMI would never be picked up",
                         where=f"{cfg.path}:base_image",
                         hint="Find the base by owners + a name filter with a '*' (README) to follow new images.")
    info = stack.status(lookup.STATE_DIR)
    if info is None:
        raise SandboxError("the sandbox is not running", hint="Start it with `inv sandbox.up`.")
    name = base.name.replace("*", f"sandbox-{(clock or SystemClock()).now():%Y%m%d-%H%M%S}")
    images = stack.publish_base_image(info.endpoint, name)
    for region, image_id in sorted(images.items()):
        ui.success(f"published base image {name} in {region} as {image_id}")
    ui.result({"name": name, "images": images})
    return images


def reset(cfg: Config, ui: UI, *, time_scale: float) -> None:
    """An empty sandbox: stop it, then start and provision it again (the base image cache stays),
    with real instances when the one stopped had them (or none was running)."""
    previous = stack.status(lookup.STATE_DIR)
    with ui.step():
        down(ui)
    up(cfg, ui, time_scale=time_scale, instances=previous.dataplane if previous is not None else True)


def down(ui: UI) -> None:
    stopped = stack.down(lookup.STATE_DIR)
    ui.success("sandbox stopped" if stopped else "the sandbox was not running")
    ui.result({"stopped": stopped})


def _show_sandbox(ui: UI, info: object) -> None:
    assert isinstance(info, stack.StackInfo)
    ui.success(f"sandbox running at {info.endpoint} ({'real instances' if info.dataplane else 'control plane only'})")
    rows = [("environments", ", ".join(f"{n} ({r})" for n, r in info.environments.items())),
            ("database", info.database_url.split("@")[-1]),
            ("instance SSH key", info.key_file),
            *[(f"bastion {name}", f"ssh -i {info.key_file} {address}") for name, address in info.bastions.items()],
            *[(f"load balancer {lb['load_balancer']}", lb["url"]) for lb in info.load_balancers]]
    ui.table(["", ""], rows)
    ui.info("Point the AWS CLI or boto3 at it:")
    for key, value in info.env.items():
        ui.info(f"  export {key}={value}")
    ui.result(info)


def fault(ui: UI, *, operation: str | None = None, service: str | None = None, error: str | None = None,
                  status: str | int | None = None, message: str | None = None,
                  latency: str | float | None = None, timeout: str | float | bool | None = None,
                  count: str | int | None = None, seconds: str | float | None = None, list_rules: bool = False,
                  clear: bool = False, kill: str | None = None, stop: str | None = None,
                  unhealthy: str | None = None, healthy: str | None = None) -> dict[str, object]:
    """Rehearse a failure in the running sandbox (docs/sandbox.md, "Fault injection"): a rule that
    makes AWS calls fail, lag or lose their response after taking effect; an instance killed,
    stopped, or failing its health checks; or list / clear the rules. Every argument is checked
    before the sandbox is touched: bad input is a UsageError and nothing changes."""
    import re

    def number(flag: str, value: str | float | bool, whole: bool = False) -> float:
        try:
            parsed = float(value) if not whole else int(str(value))
        except ValueError:
            raise UsageError(f"{flag} takes a {'whole ' if whole else ''}number, not {value!r}") from None
        if not parsed > 0 or isinstance(value, bool):
            raise UsageError(f"{flag} must be more than 0, not {value!r}")
        return parsed

    rule_flags = [flag for flag, value in (("--service", service), ("--error", error), ("--status", status),
                                           ("--message", message), ("--latency", latency), ("--timeout", timeout),
                                           ("--count", count), ("--seconds", seconds)) if value is not None]
    rule: dict[str, object] = {}
    if operation is None and rule_flags:
        raise UsageError(f"{', '.join(rule_flags)} describe a fault rule: name its --operation (or '*' for all)")
    instance = kill or stop or unhealthy or healthy
    actions = [flag for flag, given in (("--operation", operation), ("--list", list_rules), ("--clear", clear),
                                        ("--kill", kill), ("--stop", stop), ("--unhealthy", unhealthy),
                                        ("--healthy", healthy)) if given]
    if len(actions) != 1:
        raise UsageError("say one thing to do: --operation NAME with --error, --latency or --timeout; --list; "
                         "--clear; or --kill, --stop, --unhealthy or --healthy INSTANCE"
                         + (f" (got {' and '.join(actions)})" if actions else ""))
    if operation is not None:
        if not re.fullmatch(r"\*|[A-Z][A-Za-z0-9]*", operation):
            raise UsageError(f"--operation {operation!r}: an AWS operation as botocore names it "
                             "(DescribeAutoScalingGroups), or '*'")
        kinds = [flag for flag in ("--error", "--latency", "--timeout") if flag in rule_flags]
        if len(kinds) != 1:
            raise UsageError("say what the fault is with exactly one of --error CODE, --latency S or --timeout S"
                             + (f" (got {' and '.join(kinds)})" if kinds else ""))
        if (status is not None or message is not None) and error is None:
            raise UsageError("--status and --message go with --error")
        rule = {"operation": operation, "service": service}
        if error is not None:
            rule.update(error=error, message=message,
                        status=int(number("--status", status, whole=True)) if status is not None else None)
        elif latency is not None:
            rule["latency"] = number("--latency", latency)
        elif timeout is not None:
            rule["timeout"] = True if timeout is True else number("--timeout", timeout)
        rule["count"] = int(number("--count", count, whole=True)) if count is not None else None
        rule["seconds"] = number("--seconds", seconds) if seconds is not None else None
        rule = {key: value for key, value in rule.items() if value is not None}
    if instance is not None and not re.fullmatch(r"i-[0-9a-f]{8,17}", instance):
        raise UsageError(f"{actions[0]} {instance!r}: an instance id such as i-0123456789abcdef0")

    info = server_process.find(lookup.STATE_DIR)
    if info is None:
        raise SandboxError("the sandbox is not running", hint="Start it with `inv sandbox.up`.")
    outcome: dict[str, object] = {}
    if operation is not None:
        added = stack.add_fault(info.endpoint, rule)
        outcome["added"] = added
        lasts = " and ".join(part for part in (f"{added['count']} call(s)" if added.get("count") else "",
                                               f"{added['seconds']:g} s" if added.get("seconds") else "") if part)
        fault = (f"error {added['error']} ({added['status']})" if added["kind"] == "error"
                 else f"{added['kind']} {added[added['kind']]:g} s")
        ui.success(f"{added['id']}: {added['service']} {added['operation']} -> {fault}, for {lasts}")
    elif clear:
        ui.success(f"cleared {stack.clear_faults(info.endpoint)} fault rule(s)")
    elif (kill or stop) and instance is not None:
        done = stack.instance_fault(info.endpoint, instance, "kill" if kill else "stop")
        outcome["instance"] = done
        ui.success(f"{instance}: {'killed (' + str(done['effect']) + ')' if kill else 'stopped'}")
    elif instance is not None:
        outcome["target_health"] = stack.set_target_health(info.endpoint, instance, healthy=healthy is not None)
        ui.success(f"{instance}: {'passes its health checks again' if healthy else 'fails its health checks'}")
    book = stack.faults(info.endpoint)
    rules = list(book["rules"])
    if rules:
        ui.table(["rule", "service", "operation", "fault", "left", "fired"], [
            (r["id"], r["service"], r["operation"],
             f"error {r['error']} ({r['status']})" if r["kind"] == "error" else f"{r['kind']} {r[r['kind']]:g} s",
             ", ".join(part for part in (f"{r['remaining']} call(s)" if r["remaining"] is not None else "",
                                         f"{r['expires_in']:g} s" if r["expires_in"] is not None else "") if part),
             r["fired"]) for r in rules], title="fault rules in force")
    elif list_rules:
        ui.info("no fault rules in force")
    if list_rules and book["finished"]:
        ui.note("ended: " + ", ".join(f"{r['id']} ({r['ended']}, fired {r['fired']})" for r in book["finished"]))
    result = {**outcome, "rules": rules, "finished": list(book["finished"])}
    ui.result(result)
    return result
