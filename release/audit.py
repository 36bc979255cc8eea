"""The fleet audit behind `inv fleet.verify`: is every in-service instance what was baked?

For each instance it compares, against the release that should be live:

- the ImageId and launch template version it was launched with (from AWS, no SSH needed);
- what `GET /version` on the instance serves (version, fingerprint), fetched through the jump;
- the baked checksum manifest of the release directory against the files on disk now
  (changed, added and missing files; `__pycache__` and `*.pyc` are runtime by-products);
- that the services run: checked with `pgrep`, which works on AWS (systemd) and in the sandbox
  (no systemd; each instance has its own PID namespace and /proc), where `systemctl` would not.

`judge()` is pure (expected + observed -> verdict); `observe()` and `audit()` do the I/O.
An instance that cannot be reached is reported as such; it never stops the audit of the others.

The same pieces serve two other callers: `probe_release()` is what the release gate asks of
each new instance (GET /version and /health), and smoke.py's checks of a fresh image.

Why one module (~500 lines): the audit's model, its pure judgement and its reads go together;
the judgement is tested alone (tests/unit/test_audit.py).
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from packaging.version import InvalidVersion, Version

from release.errors import DriftDetected, KilnError
from release.model import GroupState, Lifecycle, LiveRelease
from release.ssh import CommandResult, HttpResponse

APP_ROOT = "/opt/webapp"
MANIFEST_NAME = "MANIFEST.sha256"
HTTP_PORT = 80  # nginx, on the instance's private address only
DEFAULT_PARALLEL = 8

# The same file selection the bake's manifest task uses (ansible/roles/app/tasks/main.yml), so the
# two lists are comparable: regular files, no byte-code, not the manifest itself, sorted bytewise.
_DISK_CHECKSUMS = (
    "find . -name __pycache__ -prune -o -type f ! -name '*.pyc' ! -path ./{manifest} -printf '%P\\0'"
    " | LC_ALL=C sort -z | xargs -0 --no-run-if-empty sha256sum --"
)


@dataclass(frozen=True)
class ServiceCheck:
    """A service counts as active when `pgrep <args>` finds a process."""

    name: str
    pgrep: tuple[str, ...]


DEFAULT_SERVICES = (
    # "[g]unicorn" cannot match the shell that runs this very pgrep.
    ServiceCheck("webapp.service (gunicorn)", ("-f", "[g]unicorn.*webapp[.]wsgi")),
    ServiceCheck("nginx", ("-x", "nginx")),
)


def release_dir(version: str, app_root: str = APP_ROOT) -> str:
    return f"{app_root}/releases/{version}"


# --- inputs and observations -----------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedRelease:
    """The release that should be live (from the ledger and the launch template)."""

    version: str
    fingerprint: str | None
    image_id: str
    template_version: str | None  # the numbered LT version, e.g. "7"; None: not compared


@dataclass(frozen=True)
class FleetInstance:
    """An in-service instance as AWS describes it, with what it was launched with."""

    instance_id: str
    private_ip: str | None
    image_id: str
    template_version: str | None


def expected_from_live(live: LiveRelease) -> ExpectedRelease:
    """The release the ledger says is live, as the audit compares against it."""
    template = str(live.template_version) if live.template_version is not None else None
    return ExpectedRelease(live.version, live.fingerprint, live.image_id, template)


def in_service(group: GroupState) -> list[FleetInstance]:
    """The group's in-service instances, with the image and LT version each was launched with."""
    return [
        FleetInstance(i.instance_id, i.private_ip, i.image_id, i.launch_template_version)
        for i in group.instances
        if i.lifecycle == Lifecycle.IN_SERVICE
    ]


@dataclass(frozen=True)
class Reading:
    """What the audit saw on one instance. `unreachable` set: nothing over SSH was observed.

    A None observation with no problem means it was not made, which judge() reports as drift
    rather than assuming the best.
    """

    instance: FleetInstance
    unreachable: str | None = None
    served: Mapping[str, Any] | None = None  # the /version JSON document
    served_problem: str | None = None
    manifest: Mapping[str, str] | None = None  # relative path -> sha256, as baked
    manifest_problem: str | None = None
    on_disk: Mapping[str, str] | None = None  # relative path -> sha256, now
    disk_problem: str | None = None
    services: Mapping[str, bool] = field(default_factory=dict)
    interrupted: bool = False  # connected, then the session dropped midway


# --- verdicts ---------------------------------------------------------------------------------


class Finding(StrEnum):
    MATCH = "match"
    DRIFT = "drift"
    UNREACHABLE = "unreachable"


SYMBOLS = {Finding.MATCH: "✔", Finding.DRIFT: "✘", Finding.UNREACHABLE: "?"}


@dataclass(frozen=True)
class FieldDrift:
    name: str
    expected: str
    actual: str

    def __str__(self) -> str:
        return f"{self.name}: expected {self.expected}, found {self.actual}"


@dataclass(frozen=True)
class InstanceVerdict:
    instance_id: str
    address: str | None
    outcome: Finding
    fields: tuple[FieldDrift, ...] = ()
    changed_files: tuple[str, ...] = ()
    added_files: tuple[str, ...] = ()
    missing_files: tuple[str, ...] = ()
    services_down: tuple[str, ...] = ()
    reason: str | None = None  # why it could not be (fully) checked

    @property
    def symbol(self) -> str:
        return SYMBOLS[self.outcome]

    def details(self) -> list[str]:
        """One line per difference, for people."""
        lines = [str(f) for f in self.fields]
        lines += [f"changed: {path}" for path in self.changed_files]
        lines += [f"added: {path}" for path in self.added_files]
        lines += [f"missing: {path}" for path in self.missing_files]
        lines += [f"not running: {name}" for name in self.services_down]
        if self.reason:
            lines.append(f"unreachable: {self.reason}")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "address": self.address,
            "outcome": self.outcome.value,
            "fields": [{"name": f.name, "expected": f.expected, "actual": f.actual} for f in self.fields],
            "changed_files": list(self.changed_files),
            "added_files": list(self.added_files),
            "missing_files": list(self.missing_files),
            "services_down": list(self.services_down),
            "reason": self.reason,
        }


def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def compare_files(manifest: Mapping[str, str], on_disk: Mapping[str, str]) -> tuple[tuple[str, ...], ...]:
    """(changed, added, missing) relative paths, each sorted."""
    changed = sorted(p for p in manifest.keys() & on_disk.keys() if manifest[p] != on_disk[p])
    added = sorted(on_disk.keys() - manifest.keys())
    missing = sorted(manifest.keys() - on_disk.keys())
    return tuple(changed), tuple(added), tuple(missing)


def _served_drift(expected: ExpectedRelease, observed: Reading) -> list[FieldDrift]:
    if observed.served_problem is not None:
        return [FieldDrift("/version", f"version {expected.version}", observed.served_problem)]
    if observed.served is None:
        return [FieldDrift("/version", f"version {expected.version}", "not checked")]
    drift = []
    version = str(observed.served.get("version", ""))
    if not _same_version(version, expected.version):
        drift.append(FieldDrift("version", expected.version, version or "none"))
    fingerprint = str(observed.served.get("fingerprint", ""))
    if expected.fingerprint is not None and fingerprint != expected.fingerprint:
        drift.append(FieldDrift("fingerprint", expected.fingerprint, fingerprint or "none"))
    return drift


def judge(expected: ExpectedRelease, observed: Reading) -> InstanceVerdict:
    """The verdict for one instance. Pure."""
    instance = observed.instance
    fields: list[FieldDrift] = []
    if instance.image_id != expected.image_id:
        fields.append(FieldDrift("image_id", expected.image_id, instance.image_id))
    if expected.template_version is not None and instance.template_version != expected.template_version:
        fields.append(FieldDrift("template_version", expected.template_version, instance.template_version or "none"))

    if observed.unreachable is not None:
        # What AWS says is still known: an instance on the wrong image is drift even if it is down.
        outcome = Finding.DRIFT if fields else Finding.UNREACHABLE
        return InstanceVerdict(instance.instance_id, instance.private_ip, outcome, tuple(fields),
                               reason=observed.unreachable)  # fmt: skip

    fields += _served_drift(expected, observed)
    changed: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    baked = f"the baked {MANIFEST_NAME}"
    if observed.manifest_problem is not None or observed.manifest is None:
        fields.append(FieldDrift("manifest", baked, observed.manifest_problem or "not checked"))
    elif observed.disk_problem is not None or observed.on_disk is None:
        fields.append(FieldDrift("files", "checksums of the release directory", observed.disk_problem or "not checked"))
    else:
        changed, added, missing = compare_files(observed.manifest, observed.on_disk)
    down = tuple(name for name, running in observed.services.items() if not running)
    if not observed.services:
        fields.append(FieldDrift("services", "active", "not checked"))

    drifted = bool(fields or changed or added or missing or down)
    return InstanceVerdict(
        instance.instance_id, instance.private_ip, Finding.DRIFT if drifted else Finding.MATCH,
        tuple(fields), changed, added, missing, down,
    )  # fmt: skip


def _why(verdict: InstanceVerdict, limit: int = 160) -> str:
    """The outcome and its first detail, short enough for a one-line error."""
    details = verdict.details()
    if not details:
        return verdict.outcome.value
    first = details[0] if len(details[0]) <= limit else details[0][: limit - 1] + "…"
    return first if first.startswith(verdict.outcome.value) else f"{verdict.outcome.value}: {first}"


@dataclass(frozen=True)
class FleetReport:
    expected: ExpectedRelease
    verdicts: tuple[InstanceVerdict, ...]

    def count(self, outcome: Finding) -> int:
        return sum(1 for v in self.verdicts if v.outcome is outcome)

    @property
    def ok(self) -> bool:
        return all(v.outcome is Finding.MATCH for v in self.verdicts)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else DriftDetected.exit_code

    def error(self) -> DriftDetected | None:
        """The error a task raises (exit code DriftDetected's), or None when all match."""
        if self.ok:
            return None
        bad = [v for v in self.verdicts if v.outcome is not Finding.MATCH]
        names = ", ".join(f"{v.instance_id} ({_why(v)})" for v in bad)
        return DriftDetected(
            f"{self.count(Finding.DRIFT)} drifted and {self.count(Finding.UNREACHABLE)} unreachable of "
            f"{len(self.verdicts)} instances: {names}",
            where=f"fleet.verify {self.expected.version}",
            hint="Images are immutable: release a new bake (`inv bake`, `inv release`) to replace drifted "
            "instances; never patch them in place",
        )

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Columns and rows for ui.table()."""
        columns = ["", "instance", "address", "verdict", "details"]
        rows = [[v.symbol, v.instance_id, v.address or "-", v.outcome.value, "; ".join(v.details()) or "-"]
                for v in self.verdicts]  # fmt: skip
        return columns, rows

    def to_json(self) -> dict[str, Any]:
        return {
            "expected": {
                "version": self.expected.version,
                "fingerprint": self.expected.fingerprint,
                "image_id": self.expected.image_id,
                "template_version": self.expected.template_version,
            },
            "ok": self.ok,
            "counts": {outcome.value: self.count(outcome) for outcome in Finding},
            "instances": [v.to_json() for v in self.verdicts],
        }


# --- parsing command output (pure) -----------------------------------------------------------


def parse_sha256sum(text: str) -> dict[str, str]:
    """sha256sum's output ("<hex>  <path>", or "\\<hex>  <escaped path>") -> {path: hex}."""
    result = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        escaped = line.startswith("\\")
        if escaped:
            line = line[1:]
        digest, _, path = line.partition(" ")
        path = path[1:] if path[:1] in (" ", "*") else path  # text or binary mode marker
        if escaped:  # GNU coreutils escapes "\\" and "\n" in names it cannot print plainly
            path = path.replace("\\\\", "\0").replace("\\n", "\n").replace("\0", "\\")
        if len(digest) == 64 and path:
            result[path.removeprefix("./")] = digest.lower()
    return result


# --- I/O -------------------------------------------------------------------------------------


class Session(Protocol):
    def run(self, command: str, *, timeout: float | None = None) -> CommandResult: ...

    def read_file(self, path: str, *, timeout: float | None = None) -> str: ...

    def close(self) -> None: ...


class Reach(Protocol):
    """How the audit reaches instances; release.ssh.Ssh is one."""

    def connect(self, address: str, *, instance_id: str | None = None) -> Session: ...

    def http_get(self, address: str, port: int, path: str, *, timeout: float | None = None,
                 instance_id: str | None = None) -> HttpResponse: ...


def _first_line(text: str, fallback: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), fallback)


def _observe_served(reach: Reach, address: str, port: int,
                    instance_id: str | None = None) -> tuple[Mapping[str, Any] | None, str | None]:
    try:
        response = reach.http_get(address, port, "/version", instance_id=instance_id)
    except KilnError as err:
        return None, f"GET /version failed: {err}"
    if response.status != 200:
        return None, f"GET /version answered HTTP {response.status}: {_first_line(response.text(), 'no body')[:120]}"
    try:
        document = json.loads(response.body)
    except ValueError:
        return None, "GET /version did not answer JSON"
    if not isinstance(document, dict):
        return None, "GET /version did not answer a JSON object"
    return document, None


def _services_running(session: Session, services: Sequence[ServiceCheck]) -> dict[str, bool]:
    """One round trip for all checks: a line "0" or "1" per check, in order."""
    if not services:
        return {}
    probes = [f"if pgrep {' '.join(shlex.quote(arg) for arg in check.pgrep)} >/dev/null; then echo 1; else echo 0; fi"
              for check in services]  # fmt: skip
    answers = session.run("; ".join(probes)).stdout.split()
    if len(answers) != len(services):
        raise KilnError(f"service check answered {answers!r} for {len(services)} checks")
    return {check.name: answer == "1" for check, answer in zip(services, answers, strict=True)}


def observe(
    reach: Reach,
    instance: FleetInstance,
    expected: ExpectedRelease,
    *,
    services: Sequence[ServiceCheck] = DEFAULT_SERVICES,
    app_root: str = APP_ROOT,
    http_port: int = HTTP_PORT,
) -> Reading:
    """Look at one instance over SSH. Any failure to connect becomes `unreachable`, never an exception."""
    if not instance.private_ip:
        return Reading(instance, unreachable="no private IP address")
    try:
        session = reach.connect(instance.private_ip, instance_id=instance.instance_id)
    except KilnError as err:
        return Reading(instance, unreachable=str(err))
    try:
        served, served_problem = _observe_served(reach, instance.private_ip, http_port, instance.instance_id)
        directory = release_dir(expected.version, app_root)
        manifest: dict[str, str] | None = None
        manifest_problem = None
        try:
            manifest = parse_sha256sum(session.read_file(f"{directory}/{MANIFEST_NAME}"))
        except KilnError as err:
            manifest_problem = f"cannot read {directory}/{MANIFEST_NAME} ({err.message})"
        disk = session.run(f"cd {shlex.quote(directory)} && " + _DISK_CHECKSUMS.format(manifest=MANIFEST_NAME))
        on_disk = parse_sha256sum(disk.stdout) if disk.ok else None
        disk_problem = None if disk.ok else f"checksums failed: {_first_line(disk.stderr, f'exit {disk.exit_status}')}"
        running = _services_running(session, services)
    except KilnError as err:  # the connection dropped or a command timed out midway
        return Reading(instance, unreachable=f"audit interrupted: {err}", interrupted=True)
    finally:
        session.close()
    return Reading(instance, None, served, served_problem, manifest, manifest_problem, on_disk, disk_problem, running)


def audit(
    reach: Reach,
    expected: ExpectedRelease,
    instances: Sequence[FleetInstance],
    *,
    parallel: int = DEFAULT_PARALLEL,
    services: Sequence[ServiceCheck] = DEFAULT_SERVICES,
    app_root: str = APP_ROOT,
    http_port: int = HTTP_PORT,
    on_verdict: Callable[[InstanceVerdict], None] | None = None,
    again_after: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> FleetReport:
    """Observe and judge every instance, at most `parallel` at a time; verdicts in input order.

    An instance whose session dropped midway is observed once more after `again_after` seconds
    (`sleep`) before it counts as unreachable (a connection that is refused is already retried by
    the Reach; an unknown host key never is). `on_verdict` (e.g. a progress display) is called
    from the worker threads as verdicts arrive.
    """

    def look(instance: FleetInstance) -> Reading:
        try:
            return observe(reach, instance, expected, services=services, app_root=app_root, http_port=http_port)
        except Exception as err:  # one broken host must not end the audit of the others
            return Reading(instance, unreachable=f"{type(err).__name__}: {err}")

    def one(instance: FleetInstance) -> InstanceVerdict:
        observed = look(instance)
        if observed.interrupted:
            sleep(again_after)
            observed = look(instance)
        verdict = judge(expected, observed)
        if on_verdict is not None:
            on_verdict(verdict)
        return verdict

    if not instances:
        return FleetReport(expected, ())
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(instances))), thread_name_prefix="audit") as pool:
        verdicts = tuple(pool.map(one, instances))
    return FleetReport(expected, verdicts)


# --- the gate's and the smoke test's questions --------------------------------------------------


def probe_release(reach: Reach, address: str, *, http_port: int = HTTP_PORT, timeout: float = 5.0,
                  instance_id: str | None = None) -> tuple[str | None, bool | None, str]:
    """What the gate asks one new instance: (version on /version, /health answered 200, detail).
    None where the instance did not answer; never raises."""
    try:
        document, problem = _observe_served(reach, address, http_port, instance_id)
    except Exception as err:  # one unreachable host is an answer, not a crash
        return None, None, f"{type(err).__name__}: {err}"
    version = str(document["version"]) if document and document.get("version") else None
    try:
        health = reach.http_get(address, http_port, "/health", timeout=timeout, instance_id=instance_id)
    except Exception as err:
        return version, None, f"GET /health failed: {err}"
    return version, health.status == 200, f"HTTP {health.status}" + (f"; {problem}" if problem else "")
