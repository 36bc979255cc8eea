"""How the release gate scales with the group: AWS calls and wall time per gate poll for groups of
4, 16 and 500 instances, and `inv fleet.verify --parallel` over 16 real instances.

Target: the same number of AWS calls per poll whatever the group's size.

It works on two sandboxes of its own (it resizes their seed group, `web-sandbox`; never point it
at a sandbox you use):

    KILN_SANDBOX_DIR=/var/tmp/kiln-scale inv sandbox.up --no-instances     # control plane only
    KILN_SANDBOX_DIR=/var/tmp/kiln-scale16 inv sandbox.up                   # real instances
    KILN_SANDBOX_DIR=/var/tmp/kiln-scale16 inv bake --env sandbox
    .venv/bin/python bench/gate_scale.py --control /var/tmp/kiln-scale --real /var/tmp/kiln-scale16

A gate poll is one turn of the gate's loop (release/rollout.py, `Releaser._watch`): the lease's
heartbeat (one DynamoDB UpdateItem) and one observation (`Releaser._observe`: the group, its
target health, the launch facts of instances not seen before, the refresh, the alarms). The
instances' own /version and /health are asked through the bastion (SSH), not AWS. The calls are
the sandbox's own count of the requests it received (GET/DELETE /_kiln/requests), so a retry
counts as AWS would count it. The poll's wall time is the observation's (the heartbeat runs beside
it). The first poll of a release also learns every instance's launch facts; it is shown apart.

- `--control`: the group is scaled to 4, 16, then 500 instances (UpdateAutoScalingGroup); at each
  size, once every instance is in service and healthy, a fresh gate polls it `--polls` times.
  There are no machines: instance probes answer nothing at once.
- `--real`: the group is scaled to 16 real instances and, once the alarms no longer see the
  scale-out, `[app] version` (baked beforehand) is released onto it through the same driver as
  `inv release`, its calls counted poll by poll while the gate watches the refresh (the new
  instances' own calls as they boot are counted apart); then the settled group is polled as above,
  and `inv fleet.verify` runs `--verify-runs` times for each `--parallel` value, each time with an
  empty known_hosts file (host keys come from each instance's console output, as on first contact).

At the sandbox's default time scale (0.1) the unhealthy-hosts alarm fires after 18 s of unhealthy
targets, while instances boot in real time: on a 2-core machine busy with other work, 8 instances
booting at once (one batch of the 16) can take longer, and the release is rolled back, as it should
be. The bench then says so and stops; run it again on a quieter machine (or a sandbox started with
a larger `--time-scale`).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from packaging.version import Version

from release import config
from release.aws import Aws
from release.cloud import Cloud
from release.commands import context as kiln
from release.commands import deploy
from release.errors import GateFailed
from release.gate import Expectation
from release.model import Snapshot
from release.plan import Request, make_plan
from release.record import Lease
from release.rollout import Driver, Event, ProbeResult, Probes, Releaser
from release.sandbox import lookup
from release.ui import UI

ROOT = Path(__file__).resolve().parents[1]
INV = str(Path(sys.executable).parent / "inv")
ENV = "sandbox"
SIZES = (4, 16, 500)
REAL_SIZE = 16
# What the gate calls. Real instances call the same sandbox as they boot (Secrets Manager's
# GetSecretValue, for the app's secrets): those calls are counted apart.
GATE_SERVICES = frozenset({"autoscaling", "ec2", "elbv2", "cloudwatch", "dynamodb"})


class Requests:
    """The sandbox's count of the AWS calls it received."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def take(self) -> dict[str, Any]:
        """The calls since the last take, and zero from now on (one step in the sandbox)."""
        request = urllib.request.Request(f"{self.endpoint}/_kiln/requests", method="DELETE")
        with urllib.request.urlopen(request, timeout=30) as response:
            return dict(json.loads(response.read()))

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.endpoint}/_kiln/health", timeout=30) as response:
            return dict(json.loads(response.read()))


def by_operation(counted: dict[str, Any], *, gate: bool = True) -> Counter[str]:
    """The gate's calls by operation (`gate=False`: everyone else's, such as booting instances')."""
    return Counter({op: n for service, ops in counted["calls"].items() for op, n in ops.items()
                    if (service in GATE_SERVICES) == gate})


def context(state_dir: Path) -> kiln.CommandContext:
    lookup.STATE_DIR = state_dir
    cfg = config.load(ROOT / "versions.toml")
    return kiln.open_context(cfg, ENV, UI(stdout=io.StringIO(), stderr=io.StringIO()))


def releaser(ctx: kiln.CommandContext, probes: Probes, *, on_event: Callable[[Event], None] = lambda e: None,
             checkpoint: Callable[[str], None] = lambda name: None) -> Releaser:
    """A driver wired as `inv release` wires it: the gate's own Cloud, with its small retry budget."""
    driver = Driver(holder=uuid.uuid4().hex, who=f"bench pid {os.getpid()}")
    return Releaser(ctx.env, Cloud(Aws(ctx.aws.target, attempts=3)), ctx.ledger, ctx.clock, probes, on_event,
                    actor=kiln.actor(), driver=driver, time_scale=ctx.aws.target.time_scale,
                    checkpoint=checkpoint)


def scale(ctx: kiln.CommandContext, size: int, *, timeout: float) -> float:
    """Resize the group and wait until `size` instances are in service and healthy in the target
    group. Returns the seconds it took."""
    started = time.monotonic()
    ctx.aws.client("autoscaling").update_auto_scaling_group(
        AutoScalingGroupName=ctx.env.asg, MinSize=min(2, size), MaxSize=max(8, size), DesiredCapacity=size)
    cloud = Cloud(ctx.aws)
    while True:
        group = cloud.group(ctx.env.asg, ctx.env.target_groups)
        assert group is not None, f"no group {ctx.env.asg}"
        ready = [i for i in group.instances if i.lifecycle == "InService" and i.target_health == "healthy"]
        if len(ready) == size == len(group.instances):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise SystemExit(f"bench: {ctx.env.asg} did not reach {size} healthy instances in {timeout:.0f} s "
                             f"({len(ready)} of {len(group.instances)})")
        time.sleep(1)


def settle(ctx: kiln.CommandContext, timeout: float) -> float:
    """Wait until the environment's alarms are OK and no datapoint of the scale-out (instances
    failing their health checks while they booted) is left in their evaluation windows, so that a
    release does not inherit them. Returns the seconds waited."""
    started = time.monotonic()
    cloudwatch = ctx.aws.client("cloudwatch")
    alarms = cloudwatch.describe_alarms(AlarmNames=list(ctx.env.alarms))["MetricAlarms"]
    window = max((a.get("EvaluationPeriods", 1) * a.get("Period", 60) for a in alarms), default=0)
    time.sleep(window * ctx.aws.target.time_scale + 1)
    while {a["StateValue"] for a in cloudwatch.describe_alarms(AlarmNames=list(ctx.env.alarms))["MetricAlarms"]} \
            - {"OK"}:
        if time.monotonic() - started > timeout:
            raise SystemExit(f"bench: the alarms of {ENV} did not return to OK in {timeout:.0f} s")
        time.sleep(1)
    return time.monotonic() - started


def polls(ctx: kiln.CommandContext, requests: Requests, probes: Probes, expect: Expectation, count: int,
          refresh_id: str) -> list[tuple[int, float, Counter[str]]]:
    """`count` gate polls by a fresh driver holding the environment's lock: (calls, seconds, by operation) each."""
    gate = releaser(ctx, probes)
    holder, ttl = gate.driver.holder, timedelta(seconds=ctx.env.gate.lease)
    ctx.ledger.acquire(ENV, Lease(holder, gate.driver.who, ttl, kind="bench"), ctx.clock.now(), phase="gating")
    seen: set[str] = set()
    out = []
    try:
        requests.take()
        for _ in range(count):
            ctx.ledger.renew(ENV, holder, ctx.clock.now(), ttl, "gating")  # the heartbeat
            started = time.perf_counter()
            gate._observe(expect, refresh_id, seen)
            seconds = time.perf_counter() - started
            counted = requests.take()
            gate_calls = by_operation(counted)
            out.append((sum(gate_calls.values()), seconds, gate_calls))
    finally:
        ctx.ledger.release_lock(ENV, holder)
        gate.close()
    return out


def newest_refresh(ctx: kiln.CommandContext) -> str:
    refreshes = ctx.cloud.refreshes(ctx.env.asg)
    return refreshes[0].refresh_id if refreshes else "no-refresh-yet"  # asked all the same: one call


def row(label: str, measured: list[tuple[int, float, Counter[str]]]) -> str:
    first, rest = measured[0], measured[1:] or measured[:1]
    calls = [c for c, _, _ in rest]
    seconds = [s for _, s, _ in rest]
    return (f"  {label:<20} {first[0]:>5} {statistics.median(calls):>7g} {max(calls):>5}"
            f"   {first[1]:>6.2f} {statistics.median(seconds):>7.2f} {max(seconds):>6.2f}")


HEADER = (f"  {'':<20} {'AWS calls per poll':^19}   {'poll wall time (s)':^21}\n"
          f"  {'group':<20} {'first':>5} {'median':>7} {'max':>5}   {'first':>6} {'median':>7} {'max':>6}")


def operations(measured: list[tuple[int, float, Counter[str]]]) -> str:
    steady = measured[1:] or measured
    total: Counter[str] = sum((ops for _, _, ops in steady), Counter())
    return ", ".join(f"{op} {n / len(steady):g}" for op, n in sorted(total.items()))


def control_plane(state_dir: Path, count: int, timeout: float) -> list[str]:
    ctx = context(state_dir)
    assert ctx.aws.target.endpoint_url is not None
    requests = Requests(ctx.aws.target.endpoint_url)
    if requests.health()["dataplane"]:
        raise SystemExit(f"bench: the sandbox in {state_dir} runs real instances; --control needs one started "
                         "with `inv sandbox.up --no-instances` (500 real instances would not fit)")
    nothing = Probes(lambda instance: ProbeResult(None, None, "control plane only: no machine"), None)
    lines = []
    try:
        for size in SIZES:
            took = scale(ctx, size, timeout=timeout)
            group = ctx.cloud.group(ctx.env.asg, ctx.env.target_groups)
            assert group is not None
            expect = Expectation(str(ctx.cfg.app.version), group.instances[0].image_id)
            measured = polls(ctx, requests, nothing, expect, count, newest_refresh(ctx))
            lines.append(row(f"{size} (control plane)", measured))
            print(f"{size} instances in service and healthy after {took:.1f} s; per poll after the first: "
                  f"{operations(measured)}", flush=True)
    finally:  # the seed's size again: 500 targets health-checked every second keep the sandbox busy
        ctx.aws.client("autoscaling").update_auto_scaling_group(
            AutoScalingGroupName=ctx.env.asg, MinSize=2, MaxSize=8, DesiredCapacity=4)
    return lines


def real(state_dir: Path, count: int, timeout: float, parallel: list[int],
         runs: int) -> tuple[list[str], list[str]]:
    ctx = context(state_dir)
    assert ctx.aws.target.endpoint_url is not None
    requests = Requests(ctx.aws.target.endpoint_url)
    if not requests.health()["dataplane"]:
        raise SystemExit(f"bench: the sandbox in {state_dir} has no real instances; start it with `inv sandbox.up`")
    version = Version(str(ctx.cfg.app.version))
    if not [i for i in ctx.cloud.app_images(ctx.cfg.app.name, str(version)) if i.validated]:
        raise SystemExit(f"bench: no validated image of {version} in {state_dir}; bake it first: "
                         f"KILN_SANDBOX_DIR={state_dir} inv bake --env {ENV}")
    took = scale(ctx, REAL_SIZE, timeout=timeout)
    waited = settle(ctx, timeout)
    print(f"{REAL_SIZE} real instances in service and healthy after {took:.1f} s; alarms settled {waited:.1f} s "
          "later", flush=True)
    notes = []
    live = ctx.ledger.live(ENV)
    if live is None or live.version != str(version):
        notes.append(release(ctx, requests, version))
    else:
        notes.append(f"{version} is live already: no release measured (start from a fresh sandbox to measure one)")
    live = ctx.ledger.live(ENV)
    assert live is not None
    if live.version != str(version):
        print("\n".join(notes))
        raise SystemExit(f"bench: {version} is not live (see above): fleet.verify would only find the adopted fleet "
                         "differs from any bake; run the bench again (a fresh sandbox, a quieter machine)")
    expect = Expectation(live.version, live.image_id)
    with kiln.ssh_for(ctx) as ssh:
        measured = polls(ctx, requests, deploy.probes_for(ctx, ssh), expect, count, newest_refresh(ctx))
    print(f"{REAL_SIZE} real, settled: per poll after the first: {operations(measured)}", flush=True)
    timed: dict[int, list[float]] = {p: [] for p in parallel}
    for _ in range(runs):  # each value in turn, so that a busier or quieter moment weighs on all alike
        for p in parallel:
            timed[p].append(verify(state_dir, p))
    for p, seconds in timed.items():
        runs_said = ", ".join(f"{t:.1f}" for t in seconds)
        notes.append(f"inv fleet.verify --parallel {p:<2} over {REAL_SIZE} real instances: median "
                     f"{statistics.median(seconds):.1f} s ({runs_said})")
    return [row(f"{REAL_SIZE} real, settled", measured)], notes


def release(ctx: kiln.CommandContext, requests: Requests, version: Version) -> str:
    """Release `version` as `inv release` does, counting the AWS calls of each gate poll while the
    gate watches the refresh (from its first poll to the one that passes)."""
    observed = deploy.observe_for_plan(ctx, version)
    plan = make_plan(ctx.env, Request(version, ctx.clock.now()), observed)
    if not plan.ok:
        raise SystemExit(f"bench: cannot release {version}: {plan.blockers[0]}")
    gating = {"on": False}
    per_poll: list[tuple[int, float, Counter[str]]] = []
    others: Counter[str] = Counter()
    seconds: list[float] = []

    def checkpoint(name: str) -> None:
        if name == "gating":  # after the first poll: count from here
            requests.take()
            gating["on"] = True
        elif name == "gate-passed":
            gating["on"] = False

    def on_event(event: Event) -> None:
        if gating["on"] and event.verdict is not None:
            counted = requests.take()
            gate_calls = by_operation(counted)
            others.update(by_operation(counted, gate=False))
            per_poll.append((sum(gate_calls.values()), seconds[-1] if seconds else 0.0, gate_calls))

    started = time.monotonic()
    with kiln.ssh_for(ctx) as ssh:
        driver = releaser(ctx, deploy.probes_for(ctx, ssh), on_event=on_event, checkpoint=checkpoint)
        observe = driver._observe

        def timed(*args: Any) -> Snapshot:
            began = time.perf_counter()
            try:
                return observe(*args)
            finally:
                seconds.append(time.perf_counter() - began)

        driver._observe = timed  # type: ignore[method-assign,assignment]
        try:
            outcome = str(driver.release(plan).outcome)
        except GateFailed as failed:  # its polls were counted all the same
            outcome = f"failed its gate: {failed}"
        finally:
            driver.close()
    took = time.monotonic() - started
    calls = [c for c, _, _ in per_poll] or [0]
    walls = [s for _, s, _ in per_poll] or [0.0]
    total: Counter[str] = sum((ops for _, _, ops in per_poll), Counter())
    each = ", ".join(f"{op} {n}" for op, n in sorted(total.items()))
    theirs = ", ".join(f"{op} {n}" for op, n in sorted(others.items())) or "none"
    return (f"release of {version} onto {REAL_SIZE} real instances ({outcome}): {took:.1f} s; "
            f"{len(per_poll)} gate polls after the first, calls per poll median {statistics.median(calls):g} "
            f"(min {min(calls)}, max {max(calls)}), poll wall time median {statistics.median(walls):.2f} s "
            f"(max {max(walls):.2f} s); the gate's calls over those polls: {each}; meanwhile the new "
            f"instances' own: {theirs}")


def verify(state_dir: Path, parallel: int) -> float:
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as scratch:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
               "KILN_SANDBOX_DIR": str(state_dir), "KILN_KNOWN_HOSTS": str(Path(scratch) / "known_hosts")}
        started = time.monotonic()
        done = subprocess.run([INV, "fleet.verify", "--env", ENV, "--parallel", str(parallel), "--json"], cwd=ROOT,
                              env=env, capture_output=True, text=True, check=False)
        took = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"bench: inv fleet.verify --parallel {parallel} failed (exit {done.returncode}): "
                         f"{done.stderr.strip()[-800:]}")
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--control", type=Path, help="state dir of a sandbox started with --no-instances")
    parser.add_argument("--real", type=Path,
                        help="state dir of a sandbox with real instances and a baked [app] version")
    parser.add_argument("--polls", type=int, default=10, help="gate polls per group size (default 10)")
    parser.add_argument("--parallel", default="16,8,1", help="fleet.verify --parallel values (default 16,8,1)")
    parser.add_argument("--verify-runs", type=int, default=3, help="fleet.verify runs per --parallel value")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a group may take to reach its size")
    args = parser.parse_args()
    if not args.control and not args.real:
        parser.error("name a sandbox: --control DIR and/or --real DIR")
    rows: list[str] = []
    notes: list[str] = []
    if args.control:
        rows += control_plane(args.control, args.polls, args.timeout)
    if args.real:
        more, notes = real(args.real, args.polls, args.timeout, [int(p) for p in args.parallel.split(",")],
                           args.verify_runs)
        rows += more
    print(f"\nA gate poll: the heartbeat and one observation; {args.polls} polls per group, median and max of "
          "those after the first")
    print(HEADER)
    print("\n".join(rows))
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
