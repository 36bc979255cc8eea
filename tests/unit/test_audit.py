"""The fleet audit's pure parts, table-driven: judge(), manifest parsing, the report; audit() with fakes."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import pytest

from release.audit import (
    DEFAULT_SERVICES,
    ExpectedRelease,
    Finding,
    FleetInstance,
    Reading,
    audit,
    compare_files,
    expected_from_live,
    in_service,
    judge,
    parse_sha256sum,
)
from release.errors import EXIT_DRIFT, DriftDetected, SshError
from release.model import Check, GroupState, InstanceState, LiveRelease
from release.smoke import SMOKE_CHECK_OF_FIELD, smoke_checks
from release.ssh import CommandResult, HttpResponse

EXPECTED = ExpectedRelease(version="1.4.2", fingerprint="sha256:f00d", image_id="ami-0new", template_version="7")
INSTANCE = FleetInstance("i-1", "127.100.0.5", "ami-0new", "7")
A, B, C = "a" * 64, "b" * 64, "c" * 64
GOOD = Reading(
    INSTANCE,
    served={"version": "1.4.2", "fingerprint": "sha256:f00d", "git_sha": "3f2c"},
    manifest={"app.py": A, "static/site.css": B},
    on_disk={"app.py": A, "static/site.css": B},
    services={"webapp.service (gunicorn)": True, "nginx": True},
)

# (id, observation, outcome, drifted field names, changed, added, missing, services down)
Paths = tuple[str, ...]
CASES: list[tuple[str, Reading, Finding, set[str], Paths, Paths, Paths, Paths]] = [
    ("all-match", GOOD, Finding.MATCH, set(), (), (), (), ()),
    ("equal-versions-spelled-differently", replace(GOOD, served={"version": "1.4.2.0", "fingerprint": "sha256:f00d"}),
     Finding.MATCH, set(), (), (), (), ()),
    ("other-image", replace(GOOD, instance=replace(INSTANCE, image_id="ami-0old")),
     Finding.DRIFT, {"image_id"}, (), (), (), ()),
    ("other-template-version", replace(GOOD, instance=replace(INSTANCE, template_version="6")),
     Finding.DRIFT, {"template_version"}, (), (), (), ()),
    ("no-template-version", replace(GOOD, instance=replace(INSTANCE, template_version=None)),
     Finding.DRIFT, {"template_version"}, (), (), (), ()),
    ("serves-other-version", replace(GOOD, served={"version": "1.4.1", "fingerprint": "sha256:f00d"}),
     Finding.DRIFT, {"version"}, (), (), (), ()),
    ("serves-other-fingerprint", replace(GOOD, served={"version": "1.4.2", "fingerprint": "sha256:beef"}),
     Finding.DRIFT, {"fingerprint"}, (), (), (), ()),
    ("version-endpoint-broken", replace(GOOD, served=None, served_problem="GET /version answered HTTP 503"),
     Finding.DRIFT, {"/version"}, (), (), (), ()),
    ("file-changed-and-added", replace(GOOD, on_disk={"app.py": C, "static/site.css": B, "hotfix.py": A}),
     Finding.DRIFT, set(), ("app.py",), ("hotfix.py",), (), ()),
    ("file-deleted", replace(GOOD, on_disk={"app.py": A}), Finding.DRIFT, set(), (), (), ("static/site.css",), ()),
    ("manifest-missing", replace(GOOD, manifest=None, manifest_problem="cannot read MANIFEST.sha256"),
     Finding.DRIFT, {"manifest"}, (), (), (), ()),
    ("checksums-failed", replace(GOOD, on_disk=None, disk_problem="sha256sum: x: Permission denied"),
     Finding.DRIFT, {"files"}, (), (), (), ()),
    ("nginx-down", replace(GOOD, services={"webapp.service (gunicorn)": True, "nginx": False}),
     Finding.DRIFT, set(), (), (), (), ("nginx",)),
    ("nothing-observed-is-not-a-match", Reading(INSTANCE),
     Finding.DRIFT, {"/version", "manifest", "services"}, (), (), (), ()),
    ("unreachable", Reading(INSTANCE, unreachable="cannot reach 127.100.0.5:22"),
     Finding.UNREACHABLE, set(), (), (), (), ()),
    ("unreachable-on-the-wrong-image-is-drift",
     Reading(replace(INSTANCE, image_id="ami-0old"), unreachable="cannot reach 127.100.0.5:22"),
     Finding.DRIFT, {"image_id"}, (), (), (), ()),
]  # fmt: skip


@pytest.mark.parametrize(
    ("observed", "outcome", "fields", "changed", "added", "missing", "down"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_judge(observed: Reading, outcome: Finding, fields: set[str], changed: tuple[str, ...],
               added: tuple[str, ...], missing: tuple[str, ...], down: tuple[str, ...]) -> None:  # fmt: skip
    verdict = judge(EXPECTED, observed)
    assert verdict.outcome is outcome
    assert {f.name for f in verdict.fields} == fields
    assert (verdict.changed_files, verdict.added_files, verdict.missing_files) == (changed, added, missing)
    assert verdict.services_down == down
    assert verdict.symbol == {"match": "✔", "drift": "✘", "unreachable": "?"}[outcome.value]
    if outcome is Finding.MATCH:
        assert verdict.details() == []
    else:
        assert verdict.details()  # a drifted or unreachable verdict always says why


def test_judge_names_expected_and_found_values() -> None:
    verdict = judge(EXPECTED, replace(GOOD, served={"version": "1.4.1", "fingerprint": "sha256:f00d"}))
    assert verdict.details() == ["version: expected 1.4.2, found 1.4.1"]


def test_no_expected_fingerprint_or_template_version_means_not_compared() -> None:
    loose = replace(EXPECTED, fingerprint=None, template_version=None)
    observed = replace(GOOD, served={"version": "1.4.2"}, instance=replace(INSTANCE, template_version=None))
    assert judge(loose, observed).outcome is Finding.MATCH


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        (f"{A}  app.py\n{B}  static/site.css\n", {"app.py": A, "static/site.css": B}),
        (f"{A} *bin/tool\n", {"bin/tool": A}),  # binary-mode marker
        (f"{A}  ./app.py\n", {"app.py": A}),
        (f"{A}  name with spaces.txt\n", {"name with spaces.txt": A}),
        (f"\\{A}  new\\nline\\\\x\n", {"new\nline\\x": A}),  # GNU escaping
        (f"\n{A.upper()}  app.py\n\n", {"app.py": A}),
        ("not a checksum line\n", {}),
        ("", {}),
    ],
    ids=["two", "binary", "dot-slash", "spaces", "escaped", "blank-lines-uppercase", "garbage", "empty"],
)
def test_parse_sha256sum(text: str, parsed: dict[str, str]) -> None:
    assert parse_sha256sum(text) == parsed


def test_compare_files_sorts_each_list() -> None:
    manifest = {"b": A, "a": A, "gone": A}
    on_disk = {"b": B, "a": B, "z-new": A, "m-new": A}
    assert compare_files(manifest, on_disk) == (("a", "b"), ("m-new", "z-new"), ("gone",))


# --- audit() with a fake way to reach instances ------------------------------------------------


@dataclass
class FakeHost:
    manifest: str
    disk: str
    version: dict[str, str]
    running: frozenset[str] = frozenset({"gunicorn", "nginx"})


class FakeSession:
    def __init__(self, host: FakeHost) -> None:
        self.host = host

    def run(self, command: str, *, timeout: float | None = None) -> CommandResult:
        if command.startswith("cd "):
            return CommandResult(0, self.host.disk, "")
        if command.startswith("if pgrep"):
            patterns = re.findall(r"pgrep (.*?) >/dev/null", command.replace("[g]unicorn", "gunicorn"))
            answers = ["1" if any(n in p and n in self.host.running for n in ("gunicorn", "nginx")) else "0"
                       for p in patterns]  # fmt: skip
            return CommandResult(0, "\n".join(answers) + "\n", "")
        raise AssertionError(f"unexpected command {command!r}")

    def read_file(self, path: str, *, timeout: float | None = None) -> str:
        assert path == "/opt/webapp/releases/1.4.2/MANIFEST.sha256"
        return self.host.manifest

    def close(self) -> None:
        pass


class FakeReach:
    def __init__(self, hosts: dict[str, FakeHost]) -> None:
        self.hosts = hosts
        self.active = 0
        self.most_active = 0
        self.lock = threading.Lock()

    def connect(self, address: str, *, instance_id: str | None = None) -> Any:
        if address not in self.hosts:
            raise SshError(f"cannot reach {address}:22: Connection refused")
        return FakeSession(self.hosts[address])

    def http_get(self, address: str, port: int, path: str, *, timeout: float | None = None,
                 instance_id: str | None = None) -> HttpResponse:
        assert (port, path) == (80, "/version")
        return HttpResponse(200, json.dumps(self.hosts[address].version).encode())


def _host(disk_extra: str = "", running: frozenset[str] = frozenset({"gunicorn", "nginx"})) -> FakeHost:
    manifest = f"{A}  app.py\n"
    return FakeHost(manifest, manifest + disk_extra, {"version": "1.4.2", "fingerprint": "sha256:f00d"}, running)


def test_audit_reports_each_instance_and_one_unreachable_is_not_fatal() -> None:
    hosts = {"10.0.0.1": _host(), "10.0.0.2": _host(f"{B}  hotfix.py\n"), "10.0.0.4": _host(running=frozenset())}
    reach = FakeReach(hosts)
    instances = [
        FleetInstance("i-1", "10.0.0.1", "ami-0new", "7"),
        FleetInstance("i-2", "10.0.0.2", "ami-0new", "7"),
        FleetInstance("i-3", "10.0.0.3", "ami-0new", "7"),  # nothing listens
        FleetInstance("i-4", "10.0.0.4", "ami-0new", "7"),
        FleetInstance("i-5", None, "ami-0new", "7"),
    ]
    seen: list[str] = []
    report = audit(reach, EXPECTED, instances, parallel=3, on_verdict=lambda v: seen.append(v.instance_id))
    assert [v.instance_id for v in report.verdicts] == ["i-1", "i-2", "i-3", "i-4", "i-5"]  # input order
    assert sorted(seen) == ["i-1", "i-2", "i-3", "i-4", "i-5"]
    by_id = {v.instance_id: v for v in report.verdicts}
    assert by_id["i-1"].outcome is Finding.MATCH
    assert by_id["i-2"].added_files == ("hotfix.py",)
    assert by_id["i-3"].outcome is Finding.UNREACHABLE and "Connection refused" in (by_id["i-3"].reason or "")
    assert by_id["i-4"].services_down == tuple(check.name for check in DEFAULT_SERVICES)
    assert by_id["i-5"].reason == "no private IP address"
    assert not report.ok and report.exit_code == EXIT_DRIFT
    error = report.error()
    assert isinstance(error, DriftDetected) and error.exit_code == EXIT_DRIFT
    assert "2 drifted and 2 unreachable of 5 instances" in str(error)
    assert "i-5 (unreachable: no private IP address)" in str(error)  # the reason, not only the outcome
    assert "i-2 (drift: added: hotfix.py" in str(error) and "\n" not in str(error)
    document = report.to_json()
    assert document["counts"] == {"match": 1, "drift": 2, "unreachable": 2}
    assert document["instances"][1]["added_files"] == ["hotfix.py"]
    _columns, rows = report.table()
    assert len(rows) == 5 and rows[0][:4] == ["✔", "i-1", "10.0.0.1", "match"]
    assert "added: hotfix.py" in rows[1][4]


def test_audit_runs_in_parallel_within_the_bound() -> None:
    class SlowReach(FakeReach):
        barrier = threading.Barrier(2, timeout=5)  # proves two audits really overlap

        def connect(self, address: str, *, instance_id: str | None = None) -> Any:
            with self.lock:
                self.active += 1
                self.most_active = max(self.most_active, self.active)
            try:
                self.barrier.wait()  # returns only when two connects are in flight at once
                return FakeSession(self.hosts[address])
            finally:
                with self.lock:
                    self.active -= 1

    hosts = {f"10.0.0.{n}": _host() for n in range(1, 7)}
    reach = SlowReach(hosts)
    instances = [FleetInstance(f"i-{n}", f"10.0.0.{n}", "ami-0new", "7") for n in range(1, 7)]
    report = audit(reach, EXPECTED, instances, parallel=2)
    assert report.ok and report.exit_code == 0 and report.error() is None
    assert reach.most_active == 2


def test_a_crash_while_observing_one_host_is_reported_for_that_host_only() -> None:
    class Broken(FakeReach):
        def http_get(self, address: str, port: int, path: str, *, timeout: float | None = None,
                 instance_id: str | None = None) -> HttpResponse:
            if address == "10.0.0.2":
                raise RuntimeError("boom")
            return super().http_get(address, port, path, timeout=timeout)

    reach = Broken({"10.0.0.1": _host(), "10.0.0.2": _host()})
    instances = [FleetInstance("i-1", "10.0.0.1", "ami-0new", "7"), FleetInstance("i-2", "10.0.0.2", "ami-0new", "7")]
    report = audit(reach, EXPECTED, instances)
    assert [v.outcome for v in report.verdicts] == [Finding.MATCH, Finding.UNREACHABLE]
    assert report.verdicts[1].reason == "RuntimeError: boom"


def test_empty_fleet_is_ok() -> None:
    assert audit(FakeReach({}), EXPECTED, []).ok


# --- the smoke test's and the gate's questions ---------------------------------------------------


def test_every_drift_field_belongs_to_a_smoke_check() -> None:
    names = {f.name for _, observed, *_ in CASES for f in judge(EXPECTED, observed).fields}
    assert names <= SMOKE_CHECK_OF_FIELD.keys()


HEALTHY = HttpResponse(200, b"ok")


def _checks(observed: Reading, health: HttpResponse | str | None = HEALTHY) -> dict[str, tuple[bool | None, str]]:
    return {c.name: (c.ok, c.detail) for c in smoke_checks(judge(EXPECTED, observed), health)}


def test_smoke_checks_all_pass_for_a_good_instance() -> None:
    checks = _checks(GOOD)
    assert list(checks) == ["ssh", "image", "services", "/version", "files", "/health"]
    assert all(ok for ok, _ in checks.values())


def test_with_ssm_the_way_in_is_named_so() -> None:
    first = smoke_checks(judge(EXPECTED, GOOD), HEALTHY, access="ssm")[0]
    assert (first.name, first.ok, first.detail) == ("ssm", True, "SSM Run Command reached the instance")
    unreachable = smoke_checks(judge(EXPECTED, Reading(INSTANCE, unreachable="Undeliverable")), None, access="ssm")
    assert [(c.name, c.ok) for c in unreachable] == [("ssm", False)]


@pytest.mark.parametrize(
    ("observed", "health", "failing", "detail"),
    [
        (Reading(INSTANCE, unreachable="offered host key SHA256:x is not known"), None, "ssh", "is not known"),
        (replace(GOOD, on_disk={"app.py": C, "static/site.css": B}), HEALTHY, "files", "changed: app.py"),
        (replace(GOOD, served={"version": "1.4.1", "fingerprint": "sha256:f00d"}), HEALTHY,
         "/version", "version: expected 1.4.2, found 1.4.1"),
        (replace(GOOD, services={"webapp.service (gunicorn)": False, "nginx": True}), HEALTHY,
         "services", "not running: webapp.service (gunicorn)"),
        (GOOD, HttpResponse(503, b"database down"), "/health", "HTTP 503"),
        (GOOD, "GET /health failed: timed out", "/health", "timed out"),
        (replace(GOOD, instance=replace(INSTANCE, image_id="ami-0old")), HEALTHY, "image", "ami-0old"),
    ],
    ids=["unreachable", "files", "version", "services", "health-503", "health-error", "image"],
)
def test_smoke_checks_name_the_one_failure(observed: Reading, health: HttpResponse | str | None,
                                           failing: str, detail: str) -> None:  # fmt: skip
    checks = _checks(observed, health)
    assert [name for name, (ok, _) in checks.items() if not ok] == [failing]
    assert detail in checks[failing][1]


def test_inputs_from_the_model() -> None:
    live = LiveRelease(version="1.4.2", image_id="ami-0new", fingerprint="sha256:f00d", template_version=7)
    assert expected_from_live(live) == EXPECTED
    states = (
        InstanceState("i-1", "ami-0new", "7", "InService", "Healthy", "healthy", private_ip="127.100.0.5"),
        InstanceState("i-2", "ami-0new", "7", "Pending", "Healthy", None, private_ip="127.100.0.6"),
        InstanceState("i-3", "ami-0old", "6", "InService", "Healthy", "healthy", private_ip=None),
    )
    group = GroupState("web", 2, 8, 3, "lt-1", "web", "7", states)
    assert in_service(group) == [INSTANCE, FleetInstance("i-3", None, "ami-0old", "6")]


def test_a_session_that_drops_midway_is_audited_once_more_after_a_pause() -> None:
    class DroppingOnce(FakeSession):
        drops: ClassVar[dict[str, int]] = {"10.0.0.1": 1, "10.0.0.2": 2}  # address -> sessions that drop

        def run(self, command: str, *, timeout: float | None = None) -> CommandResult:
            if command.startswith("if pgrep") and self.drops.get(self.address, 0) > 0:
                self.drops[self.address] -= 1
                raise SshError(f"ssh {self.address}: connection lost while running {command[:20]!r}")
            return super().run(command, timeout=timeout)

    class Reach(FakeReach):
        def connect(self, address: str, *, instance_id: str | None = None) -> Any:
            session = DroppingOnce(self.hosts[address])
            session.address = address  # type: ignore[attr-defined]
            return session

    pauses: list[float] = []
    instances = [FleetInstance("i-1", "10.0.0.1", "ami-0new", "7"), FleetInstance("i-2", "10.0.0.2", "ami-0new", "7"),
                 FleetInstance("i-3", "10.0.0.3", "ami-0new", "7")]  # fmt: skip
    report = audit(Reach({"10.0.0.1": _host(), "10.0.0.2": _host(), "10.0.0.3": _host()}), EXPECTED, instances,
                   again_after=2.0, sleep=pauses.append)  # fmt: skip
    outcomes = {v.instance_id: v.outcome for v in report.verdicts}
    assert outcomes == {"i-1": Finding.MATCH, "i-2": Finding.UNREACHABLE, "i-3": Finding.MATCH}
    assert "audit interrupted" in (report.verdicts[1].reason or "")
    assert pauses == [2.0, 2.0]  # one more look for each dropped session, and only one


def test_a_host_that_cannot_be_reached_is_not_looked_at_twice() -> None:
    pauses: list[float] = []
    report = audit(FakeReach({}), EXPECTED, [FleetInstance("i-3", "10.0.0.3", "ami-0new", "7")], sleep=pauses.append)
    assert report.verdicts[0].outcome is Finding.UNREACHABLE and pauses == []


# --- the smoke test's patience, on a fake clock -------------------------------------------------

def smoke_until_green(monkeypatch: pytest.MonkeyPatch, answers: list[tuple[Check, ...]], ready_timeout: float
                      ) -> tuple[tuple[Check, ...], float, int]:
    """Run the smoke test's retry loop against scripted answers (the last one repeats); returns
    its final checks, the seconds it took on the fake clock and how many times it looked."""
    from release import smoke
    from release.clock import FakeClock

    clock, asked = FakeClock(), []

    def answer(*_args: Any, **_kwargs: Any) -> tuple[Check, ...]:
        asked.append(clock.now())
        return answers[min(len(asked) - 1, len(answers) - 1)]

    monkeypatch.setattr(smoke, "smoke_check", answer)
    start = clock.now()
    checks = smoke._checks_until_green(object(), INSTANCE, EXPECTED, clock, lambda _: None,  # type: ignore[arg-type]
                                       access="ssh", ready_timeout=ready_timeout)
    return checks, (clock.now() - start).total_seconds(), len(asked)


GREEN = (Check("ssh", True, "in"), Check("services", True, "running"), Check("/health", True, "HTTP 200"))
BOOTING = (Check("ssh", False, "connection refused"),)
NOT_READY = (Check("ssh", True, "in"), Check("services", True, "running"), Check("/health", False, "HTTP 503"))


def test_the_smoke_test_waits_for_a_booting_instance_then_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    checks, took, asked = smoke_until_green(monkeypatch, [BOOTING] * 5 + [NOT_READY] * 3 + [GREEN], 45)
    assert all(c.ok for c in checks) and asked == 9 and took == 8 * 3  # one look every POLL (3 s)


@pytest.mark.parametrize("ready_timeout", [10, 45])
def test_a_health_that_never_says_200_fails_after_the_ready_timeout(monkeypatch: pytest.MonkeyPatch,
                                                                    ready_timeout: int) -> None:
    checks, took, _ = smoke_until_green(monkeypatch, [BOOTING] * 4 + [NOT_READY], ready_timeout)
    assert [c.name for c in checks if not c.ok] == ["/health"]
    assert 4 * 3 + ready_timeout <= took < 4 * 3 + ready_timeout + 3  # from the first "/health only" look


def test_an_instance_that_never_boots_gets_the_whole_boot_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    from release.smoke import BOOT_TIMEOUT

    checks, took, _ = smoke_until_green(monkeypatch, [BOOTING], 10)
    assert checks == BOOTING and BOOT_TIMEOUT <= took < BOOT_TIMEOUT + 3
