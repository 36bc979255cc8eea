"""The smoke test of a freshly baked AMI, before anything may release it.

One instance is launched from the environment's launch template (its default version: the
same user data, security groups and instance profile a real release uses) with the new image
and a throwaway key pair. Kiln connects with strict host-key checking — the host keys come
from the instance's console output — and checks the services, /health and /version (the baked
version and fingerprint) and the baked files. The instance and the key pair are removed
whatever happens.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path

from release import audit
from release.clock import Clock
from release.cloud import Cloud
from release.config import Environment
from release.errors import BakeError, KilnError
from release.model import Check
from release.ssh import HttpResponse, Timeouts, new_key_pair

BOOT_TIMEOUT = 300  # seconds for the instance to run and its services to pass every check
POLL = 3


# (key file, timeouts) -> how to reach the instance: an Ssh (through the bastion) or SSM Run Command.
OpenReach = Callable[[Path, Timeouts], AbstractContextManager[audit.Reach]]


def smoke_test(cloud: Cloud, env: Environment, image_id: str, version: str, fingerprint: str, clock: Clock,
               open_reach: OpenReach, on_step: Callable[[str], None], *, ready_timeout: float = 45
               ) -> tuple[Check, ...]:
    """`ready_timeout` ([bake] smoke_ready_timeout): once the instance runs the baked files and
    services, how long its /health may take to say 200 (an app's own warm-up)."""
    name = f"kiln-smoke-{fingerprint[:8]}-{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory(prefix="kiln-smoke-") as scratch:
        key_file = Path(scratch) / "smoke_ed25519"
        public_key = new_key_pair(key_file, "kiln-smoke")
        cloud.import_key_pair(name, public_key)
        instance_id = None
        try:
            instance_id = cloud.launch_from_template(env.launch_template, image_id, name,
                                                     {"Name": name, "kiln:smoke": fingerprint})
            on_step(f"smoke test: launched {instance_id} from {image_id}")
            address = _wait_running(cloud, instance_id, clock)
            with open_reach(key_file, Timeouts.from_settings(env.ssh, command=60.0)) as reach:
                return _checks_until_green(reach, audit.FleetInstance(instance_id, address, image_id, None),
                                           audit.ExpectedRelease(version, fingerprint, image_id, None), clock, on_step,
                                           access=env.access, ready_timeout=ready_timeout)
        finally:
            if instance_id is not None:
                cloud.terminate(instance_id)
                on_step(f"smoke test: terminated {instance_id}")
            cloud.delete_key_pair(name)


def _wait_running(cloud: Cloud, instance_id: str, clock: Clock) -> str:
    deadline = clock.now() + timedelta(seconds=BOOT_TIMEOUT)
    while True:
        state, address = cloud.instance(instance_id)
        if state == "running" and address:
            return address
        if state in ("shutting-down", "terminated", "stopped") or clock.now() >= deadline:
            raise BakeError(f"smoke instance {instance_id} is {state}, not running", where="smoke test",
                            hint="See its console output (aws ec2 get-console-output).")
        clock.sleep(POLL)


def _checks_until_green(reach: audit.Reach, instance: audit.FleetInstance, expected: audit.ExpectedRelease,
                        clock: Clock, on_step: Callable[[str], None], *, access: str,
                        ready_timeout: float) -> tuple[Check, ...]:
    """Services take a moment to boot: check again until everything passes or time is up."""
    deadline = clock.now() + timedelta(seconds=BOOT_TIMEOUT)
    while True:
        try:
            checks = smoke_check(reach, instance, expected, access=access)
        except KilnError as err:
            checks = (Check(access, False, str(err)),)
        failing = [c for c in checks if not c.ok]
        if not failing or clock.now() >= deadline:
            return checks
        if all(c.name == "/health" for c in failing):
            # Booted and serving the right files: the app's own readiness gets a shorter leash.
            deadline = min(deadline, clock.now() + timedelta(seconds=ready_timeout))
        on_step(f"smoke test: waiting for {failing[0].name} ({failing[0].detail[:80]})")
        clock.sleep(POLL)


# Which smoke check each kind of FieldDrift belongs to (every name judge() produces).
SMOKE_CHECK_OF_FIELD = {
    "image_id": "image", "template_version": "image",
    "version": "/version", "fingerprint": "/version", "/version": "/version",
    "manifest": "files", "files": "files",
    "services": "services",
}  # fmt: skip


def smoke_checks(verdict: audit.InstanceVerdict, health: HttpResponse | str | None, *,
                 access: str = "ssh") -> tuple[Check, ...]:
    """The smoke test's checks from an audit verdict and the /health answer (or why it failed). Pure.
    The first check is the way in (`access`): SSH with a verified host key, or SSM Run Command."""
    if verdict.reason is not None:  # judge() sets a reason only when the way in did not get through
        return (Check(access, False, "; ".join(verdict.details())),)
    problems: dict[str, list[str]] = {name: [] for name in ("image", "services", "/version", "files")}
    for drift in verdict.fields:
        problems[SMOKE_CHECK_OF_FIELD[drift.name]].append(str(drift))
    problems["files"] += [line for line in verdict.details() if line.startswith(("changed:", "added:", "missing:"))]
    problems["services"] += [f"not running: {name}" for name in verdict.services_down]
    if isinstance(health, HttpResponse):
        health_check = Check("/health", health.status == 200, f"HTTP {health.status}")
    else:
        health_check = Check("/health", False, health or "not checked")
    fine = {"image": "as launched", "services": "running", "/version": "serves the baked version and fingerprint",
            "files": "match the baked manifest"}  # fmt: skip
    checks = [Check(name, not found, "; ".join(found) or fine[name]) for name, found in problems.items()]
    way_in = "host key verified, logged in" if access == "ssh" else "SSM Run Command reached the instance"
    return (Check(access, True, way_in), *checks, health_check)


def smoke_check(
    reach: audit.Reach,
    instance: audit.FleetInstance,
    expected: audit.ExpectedRelease,
    *,
    access: str = "ssh",
    services: Sequence[audit.ServiceCheck] = audit.DEFAULT_SERVICES,
    app_root: str = audit.APP_ROOT,
    http_port: int = audit.HTTP_PORT,
) -> tuple[Check, ...]:
    """The bake's smoke test of one instance from a fresh image; every check passes or says why."""
    observed = audit.observe(reach, instance, expected, services=services, app_root=app_root, http_port=http_port)
    health: HttpResponse | str | None = None
    if observed.unreachable is None and instance.private_ip:
        try:
            health = reach.http_get(instance.private_ip, http_port, "/health", instance_id=instance.instance_id)
        except KilnError as err:
            health = f"GET /health failed: {err}"
    return smoke_checks(audit.judge(expected, observed), health, access=access)
