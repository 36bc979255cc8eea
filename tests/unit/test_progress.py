"""Long steps talk while they work: plain lines at most 10 s apart without a terminal (CI logs), a
live line on a terminal, progress on stderr with --json; Packer's steps and Ansible's tasks, the
gate's refresh percentage and debootstrap's stage as the steps. Time is a FakeClock: nothing sleeps."""

from __future__ import annotations

import io
import itertools
import json
import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from release import packer
from release.clock import FakeClock
from release.commands.bake import bake_steps
from release.commands.views import event_printer
from release.model import GroupState, InstanceState, RefreshState, Snapshot, Verdict, VerdictKind
from release.rollout import Event, Phase
from release.sandbox.dataplane.baseimage import build_stage, debootstrap_stage
from release.ui import PLAIN_EVERY_S, UI

LINE = re.compile(r"^baking 1\.1\.0: (?P<step>.+) (?P<seconds>\d+) s(?: \((?P<stage>.+) (?P<stage_s>\d+) s\))?$")


class Stamped(io.StringIO):
    """A log file that notes, by the fake clock, when each line arrived."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.lines: list[tuple[datetime, str]] = []
        self._partial = ""

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        self._partial += text
        *whole, self._partial = self._partial.split("\n")
        self.lines += [(self.clock.now(), line) for line in whole]
        return super().write(text)


def gaps(stamps: list[datetime]) -> list[float]:
    return [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]


def run_for(seconds: int, clock: FakeClock, progress_tick: object) -> None:
    for _ in range(seconds):
        clock.advance(1)
        progress_tick()  # type: ignore[operator]  # what the ticker thread does every second


def test_without_a_terminal_a_35_s_step_prints_lines_at_most_10_s_apart_with_step_and_seconds() -> None:
    clock = FakeClock()
    log = Stamped(clock)
    ui = UI(stdout=log, clock=clock, tick=None)
    started = clock.now()
    with ui.progress("baking 1.1.0") as progress:
        progress.update("ansible [app : Install the wheelhouse]")
        run_for(35, clock, progress.tick)
    assert len(log.lines) >= 3
    stamps = [started, *(at for at, _ in log.lines), clock.now()]
    assert max(gaps(stamps)) <= 10
    for at, line in log.lines:
        match = LINE.match(line)
        assert match, line
        assert match["step"] == "ansible [app : Install the wheelhouse]"
        assert int(match["seconds"]) == int((at - started).total_seconds())


def test_any_line_printed_counts_so_the_log_is_not_doubled() -> None:
    clock = FakeClock()
    log = Stamped(clock)
    ui = UI(stdout=log, clock=clock, tick=None)
    with ui.progress("baking 1.1.0") as progress:
        progress.update("waiting")
        for _ in range(20):
            clock.advance(1)
            ui.note("a line of its own every second")
            progress.tick()
    assert [line for _, line in log.lines if line.startswith("baking")] == ["baking 1.1.0: waiting 0 s"]


def test_on_a_terminal_the_same_information_is_live_and_nothing_plain_is_printed() -> None:
    clock = FakeClock()
    out = io.StringIO()
    ui = UI(stdout=out, clock=clock, tick=None, color=True)  # color=True: rich treats it as a terminal
    with ui.progress("baking 1.1.0") as progress:
        progress.stage("packer")
        progress.update("ansible [app : Install the wheelhouse]")
        run_for(35, clock, progress.tick)
        assert progress.status is not None
        assert progress.text() == "baking 1.1.0: ansible [app : Install the wheelhouse] 35 s (packer 35 s)"
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert not [line for line in text.splitlines() if line.startswith("baking")]
    assert "Install the wheelhouse] 35 s" in text  # what the live line showed last


def test_with_json_stdout_is_one_document_and_progress_goes_to_stderr() -> None:
    clock = FakeClock()
    stdout, stderr = Stamped(clock), Stamped(clock)
    ui = UI(json_mode=True, stdout=stdout, stderr=stderr, clock=clock, tick=None)
    with ui.progress("baking 1.1.0") as progress:
        progress.update("packer build")
        run_for(30, clock, progress.tick)
    ui.result({"image_id": "ami-1"})
    assert json.loads(stdout.getvalue()) == {"image_id": "ami-1"}
    assert len([line for _, line in stderr.lines if line.startswith("baking 1.1.0: packer build")]) >= 3


def test_a_command_run_as_a_step_of_another_adds_no_document() -> None:
    """sandbox.up adopts each environment (adopt has a result of its own): --json stays one document."""
    stdout, stderr = io.StringIO(), io.StringIO()
    ui = UI(json_mode=True, stdout=stdout, stderr=stderr, tick=None)
    with ui.step():
        ui.success("adopted ami-0 as release 0.0.0+scp of sandbox")
        ui.result({"record": "adopt"})
    ui.result({"endpoint": "http://127.0.0.1:5000"})
    assert json.loads(stdout.getvalue()) == {"endpoint": "http://127.0.0.1:5000"}
    assert "adopted ami-0" in stderr.getvalue()


def test_the_ticker_ticks_until_stopped() -> None:
    class Stop:
        waits = 0

        def wait(self, timeout: float) -> bool:
            self.waits += 1
            return self.waits > 3

    ticks: list[int] = []

    class Counting:
        def tick(self) -> None:
            ticks.append(1)

        def due_in(self) -> float:
            return 0.3 if ticks else 99.0

    stop = Stop()
    waits: list[float] = []
    wait = stop.wait
    stop.wait = lambda timeout: waits.append(timeout) or wait(timeout)  # type: ignore[method-assign]
    UI._ticking(Counting(), stop, 1.0)  # type: ignore[arg-type]
    assert len(ticks) == 3
    assert waits == [1.0, 0.3, 0.3, 0.3]  # the period, or sooner when a line falls due


def test_a_progress_inside_another_only_renames_it() -> None:
    clock = FakeClock()
    ui = UI(stdout=Stamped(clock), clock=clock, tick=None)
    with ui.progress("outer") as outer:
        with ui.progress("inner") as inner:
            assert inner is outer and outer.title == "inner"
        assert outer.title == "outer"


# Packer 1.6.6's own output, as a bake prints it (the e2e's broken playbook, tasks as the real one has).
PACKER_OUTPUT = [
    (0, "==> amazon-ebs.app: Prevalidating any provided VPC information"),
    (1, "==> amazon-ebs.app: Launching a source AWS instance..."),
    (3, "    amazon-ebs.app: Instance ID: i-eecff4723e918f3fd"),
    (4, "==> amazon-ebs.app: Waiting for instance (i-eecff4723e918f3fd) to become ready..."),
    (20, "==> amazon-ebs.app: Provisioning with Ansible..."),
    (21, "==> amazon-ebs.app: Executing Ansible: ansible-playbook -e packer_build_name=\"app\" -e "
         "packer_builder_type=amazon-ebs --ssh-extra-args '-o IdentitiesOnly=yes' -i /tmp/packer-provisioner-ansible1 "
         "/work/ansible/playbook.yml"),
    (22, "    amazon-ebs.app: PLAY [Bake the web app image] **************************************************"),
    (23, "    amazon-ebs.app: TASK [Gathering Facts] *********************************************************"),
    (26, "    amazon-ebs.app: ok: [default]"),
    (54, "    amazon-ebs.app: TASK [app : Install the wheelhouse] ********************************************"),
    (96, "    amazon-ebs.app: ok: [default]"),
    (97, "    amazon-ebs.app: RUNNING HANDLER [proxy : Reload nginx] *****************************************"),
]


def test_packer_steps_and_ansible_tasks_become_steps() -> None:
    assert packer.step_of(PACKER_OUTPUT[1][1]) == "Launching a source AWS instance"
    assert packer.step_of(PACKER_OUTPUT[2][1]) is None
    assert packer.step_of(PACKER_OUTPUT[5][1]) == "Executing Ansible"
    assert packer.step_of(PACKER_OUTPUT[6][1]) is None  # a play is not a task
    assert packer.step_of(PACKER_OUTPUT[7][1]) == "ansible [Gathering Facts]"
    assert packer.step_of(PACKER_OUTPUT[9][1]) == "ansible [app : Install the wheelhouse]"
    assert packer.step_of(PACKER_OUTPUT[11][1]) == "ansible handler [proxy : Reload nginx]"
    foundation = "    amazon-ebs.foundation: TASK [base : Upgrade packages] ***"
    assert packer.step_of(foundation) == "ansible [base : Upgrade packages]"
    assert packer.step_of("==> amazon-ebs.app: " + "x" * 200) == "x" * 79 + "…"


def test_a_bake_without_a_terminal_names_the_ansible_task_and_packers_time() -> None:
    """The bake's wiring (commands.bake_steps): the Baker's steps, "packer build" starting Packer's
    clock, then Packer's lines through step_of, each at its fake second; the ticker runs between."""
    clock = FakeClock()
    log = Stamped(clock)
    ui = UI(stdout=log, clock=clock, tick=None)
    start = clock.now()
    with ui.progress("baking 1.1.0") as progress:
        on_step = bake_steps(progress)
        on_step("building the app's wheelhouse")
        run_for(4, clock, progress.tick)
        on_step("packer build")
        elapsed = 0
        for at, line in PACKER_OUTPUT:
            run_for(at - elapsed, clock, progress.tick)
            elapsed = at
            step = packer.step_of(line)  # as Baker does with each line
            if step:
                on_step(step)
        run_for(3, clock, progress.tick)
    texts = [line for _, line in log.lines]
    assert texts[texts.index("baking 1.1.0: ansible [app : Install the wheelhouse] 0 s (packer 54 s)"):] == [
        "baking 1.1.0: ansible [app : Install the wheelhouse] 0 s (packer 54 s)",
        "baking 1.1.0: ansible [app : Install the wheelhouse] 8 s (packer 62 s)",
        "baking 1.1.0: ansible [app : Install the wheelhouse] 16 s (packer 70 s)",
        "baking 1.1.0: ansible [app : Install the wheelhouse] 24 s (packer 78 s)",
        "baking 1.1.0: ansible [app : Install the wheelhouse] 32 s (packer 86 s)",
        "baking 1.1.0: ansible [app : Install the wheelhouse] 40 s (packer 94 s)",
        "baking 1.1.0: ansible handler [proxy : Reload nginx] 0 s (packer 97 s)",
    ]
    assert max(gaps([start, *(at for at, _ in log.lines), clock.now()])) <= PLAIN_EVERY_S
    assert "baking 1.1.0: Executing Ansible 0 s (packer 21 s)" in texts  # not its whole command line
    assert progress.text() == "baking 1.1.0: ansible handler [proxy : Reload nginx] 3 s (packer 100 s)"


def _snapshot(at: datetime, percentage: int | None) -> Snapshot:
    instances = (InstanceState("i-1", "ami-new", "2", "InService", "Healthy", "healthy"),
                 InstanceState("i-2", "ami-old", "1", "InService", "Healthy", "healthy"))
    refresh = None if percentage is None else RefreshState("r-1", "InProgress", None, percentage, 2)
    return Snapshot(at, refresh, GroupState("web", 2, 4, 2, "lt-1", "web", "2", instances), {})


def test_the_gate_shows_the_refresh_percentage_and_keeps_talking_between_polls() -> None:
    clock = FakeClock()
    log = Stamped(clock)
    ui = UI(stdout=log, clock=clock, tick=None)
    start = clock.now()
    with ui.progress("releasing 1.1.0 to prod") as progress:
        on_event = event_printer(ui, progress)
        on_event(Event(clock.now(), Phase.REFRESH, "started instance refresh r-1"))
        for poll, percentage in enumerate((None, 0, 50, 50, 100)):
            on_event(Event(clock.now(), Phase.GATING, "waiting", Verdict(VerdictKind.WAIT, "1 of 2 replaced"),
                           _snapshot(clock.now(), percentage)))
            if poll < 4:
                run_for(15, clock, progress.tick)  # a production poll interval: longer than 10 s
    texts = [line for _, line in log.lines]
    assert max(gaps([start, *(at for at, _ in log.lines), clock.now()])) <= 10
    assert any("wait: 1 of 2 replaced | refresh 50 % | in service: 1×ami-new, 1×ami-old" in t for t in texts)
    assert any(re.fullmatch(r"releasing 1\.1\.0 to prod: instance refresh 50 % \(InProgress\) \d+ s \(gating \d+ s\)",
                            t) for t in texts)
    # A new percentage is said once, in the verdict's note, not again as a progress line.
    assert [t for t in texts if "100 %" in t] == [
        "[00:01:00] wait: 1 of 2 replaced | refresh 100 % | in service: 1×ami-new, 1×ami-old"]


def test_a_reason_that_is_the_refresh_itself_is_not_followed_by_its_percentage_again() -> None:
    clock = FakeClock()
    log = Stamped(clock)
    ui = UI(stdout=log, clock=clock, tick=None)
    with ui.progress("releasing 1.1.0 to prod") as progress:
        reason = "instance refresh: InProgress, 50% complete, 2 to update"
        event_printer(ui, progress)(Event(clock.now(), Phase.GATING, "waiting", Verdict(VerdictKind.WAIT, reason),
                                     _snapshot(clock.now(), 50)))
    assert [line for _, line in log.lines] == [f"[00:00:00] wait: {reason} | in service: 1×ami-new, 1×ami-old"]


@pytest.mark.parametrize(("log", "stage"), [
    ("", None),
    ("I: Retrieving InRelease \nI: Checking Release signature\n", "Checking Release signature"),
    ("I: Retrieving Packages \n", "Retrieving Packages"),
    ("I: Checking component main on http://deb.debian.org/debian...\nI: Retrieving libc6 2.36-9+deb12u10\n",
     "Retrieving packages"),
    ("I: Validating adduser 3.134\n", "Validating packages"),
    ("I: Extracting adduser...\n", "Extracting packages"),
    ("I: Unpacking required packages...\n", "Unpacking required packages"),
    ("I: Unpacking libc6:amd64...\n", "Unpacking packages"),
    ("I: Configuring the base system...\nW: a warning\n", "Configuring the base system"),
    ("I: Base system installed successfully.\nuseradd output\n", "Base system installed successfully"),
])
def test_debootstraps_stage_from_its_output(log: str, stage: str | None) -> None:
    assert debootstrap_stage(log) == stage


def test_the_stage_of_the_base_image_build_under_way(tmp_path: Path) -> None:
    assert build_stage(tmp_path) is None
    building = tmp_path / ".building-debian-bookworm-abc-x1"
    building.mkdir()
    (building / "build.log").write_text("")
    assert build_stage(tmp_path) == "starting debootstrap"
    (building / "build.log").write_text("I: Retrieving Packages \n" + "I: Retrieving libc6 2.36\n" * 500)
    assert build_stage(tmp_path) == "Retrieving packages"


def test_elapsed_seconds_are_whole_and_start_when_the_step_changes() -> None:
    clock = FakeClock()
    ui = UI(stdout=Stamped(clock), clock=clock, tick=None)
    with ui.progress("starting the sandbox") as progress:
        assert progress.text() == "starting the sandbox 0 s"
        clock.advance(2.7)
        progress.update("provisioning sandbox in us-east-1")
        clock.advance(5.9)
        assert progress.text() == "starting the sandbox: provisioning sandbox in us-east-1 5 s (8 s in all)"
        progress.update("provisioning sandbox in us-east-1")  # the same step: its clock keeps running
        clock.advance(timedelta(seconds=1).total_seconds())
        assert progress.text() == "starting the sandbox: provisioning sandbox in us-east-1 6 s (9 s in all)"


def test_each_packer_run_of_a_layered_bake_has_its_own_clock() -> None:
    clock = FakeClock()
    ui = UI(stdout=Stamped(clock), clock=clock, tick=None)
    with ui.progress("baking 1.1.0") as progress:
        on_step = bake_steps(progress)
        on_step("packer build")
        on_step("ansible [base : Install the base packages]")
        clock.advance(150)
        on_step("baking 1.1.0 on the foundation ami-1")
        on_step("packer build")
        clock.advance(20)
        on_step("ansible [app : Install the wheelhouse]")
        clock.advance(5)
        assert progress.text() == "baking 1.1.0: ansible [app : Install the wheelhouse] 5 s (packer 25 s)"
        progress.stage("gating", again=False)
        clock.advance(5)
        progress.stage("gating", again=False)
        assert progress.text().endswith("(gating 5 s)")
