"""How fast Kiln reacts to a failing release, over several alarm-triggered rollbacks in the sandbox.

For each run: `inv release` of the other baked version starts (a real subprocess); once its gate
watches a refresh under way, the environment's 5xx alarm is set to ALARM (CloudWatch
SetAlarmState: the failing signal). Measured from that moment:
- reaction: until Kiln issues the rollback (its first `rolling_back` journal entry);
- time to safe: until the fleet is back on the previous version and healthy (the record's end).

Targets (README): reaction within one poll interval; time to safe ≤ 2 × warmup + 10 s at the
sandbox's time scale.

Needs a running sandbox with two baked versions released before, as `./bootstrap demo` leaves it
(1.0.0 live, 1.1.0 baked):

    KILN_SANDBOX_DIR=/var/lib/kiln/sandbox .venv/bin/python bench/rollback_reaction.py [--runs 5]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from packaging.version import Version

from release import config
from release.commands import context as kiln
from release.record import Outcome
from release.ui import UI

ROOT = Path(__file__).resolve().parents[1]
ENV = "sandbox"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--config", default=str(ROOT / "versions.toml"))
    parser.add_argument("--verbose", action="store_true", help="print each release's own output")
    args = parser.parse_args()
    cfg = config.load(Path(args.config))
    ctx = kiln.open_context(cfg, ENV, UI(stdout=io.StringIO(), stderr=io.StringIO()))
    env = ctx.env
    versions = sorted({str(i.version) for i in ctx.cloud.app_images(cfg.app.name)
                       if i.validated and i.version is not None and i.state == "available"
                       and not str(i.version).startswith("0.")}, key=Version)
    if len(versions) < 2:
        print("bench: needs two baked, validated versions in the sandbox (run ./bootstrap demo first)")
        return 2
    alarm = next(a for a in env.alarms if "5xx" in a)
    cloudwatch = ctx.aws.client("cloudwatch")
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    child_env["PATH"] = f"{Path(sys.executable).parent}:{child_env['PATH']}"
    reactions, safes = [], []
    print(f"{args.runs} alarm-triggered rollbacks in {ENV} (poll interval {env.gate.poll_interval} s, warmup "
          f"{env.refresh.instance_warmup} s at time scale {ctx.aws.target.time_scale})")
    for run in range(1, args.runs + 1):
        live = ctx.ledger.live(ENV)
        assert live is not None
        target = next(v for v in reversed(versions) if v != live.version)
        cmd = [str(Path(sys.executable).parent / "inv"), "release", "--env", ENV, "--version", target,
               "--config", args.config]
        if Version(target) < Version(live.version):
            cmd.append("--allow-downgrade")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        signal_at = _when_refresh_under_way(ctx, proc)
        cloudwatch.set_alarm_state(AlarmName=alarm, StateValue="ALARM", StateReason="bench: failing signal")
        out, _ = proc.communicate(timeout=900)
        record = ctx.ledger.history(ENV, limit=1)[0]
        if proc.returncode != 10 or record.outcome is not Outcome.ROLLED_BACK:
            print(f"run {run}: expected a rollback (exit 10), got exit {proc.returncode}, {record.outcome}: "
                  f"{out.strip()[-400:]}")
            return 1
        issued = next(e.at for e in record.journal if e.phase == "rolling_back")
        assert record.ended_at is not None
        reaction = (issued - signal_at).total_seconds()
        safe = (record.ended_at - signal_at).total_seconds()
        if args.verbose:
            print(out)
        reactions.append(reaction)
        safes.append(safe)
        print(f"run {run}: {live.version} -> {target}: reaction {reaction:.1f} s, time to safe {safe:.1f} s")
    warmup = (env.refresh.instance_warmup or 0) * ctx.aws.target.time_scale
    print(f"reaction:     median {statistics.median(reactions):.1f} s, worst {max(reactions):.1f} s "
          f"(target ≤ {env.gate.poll_interval} s, one poll interval)")
    print(f"time to safe: median {statistics.median(safes):.1f} s, worst {max(safes):.1f} s "
          f"(target ≤ {2 * warmup + 10:.0f} s, 2 × warmup + 10 s)")
    return 0


def _when_refresh_under_way(ctx: kiln.CommandContext, proc: subprocess.Popen[str]) -> datetime:
    """Wait until the release's gate watches a refresh that has replaced something; return the time."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench: the release ended before the failing signal (exit {proc.returncode})")
        running = ctx.ledger.in_progress(ENV)
        if running is not None and running.phase == "gating" and running.refresh_id:
            refresh = ctx.cloud.refresh(ctx.env.asg, running.refresh_id)
            if refresh is not None and refresh.percentage_complete > 0:
                return datetime.now(UTC)
        time.sleep(0.2)
    raise SystemExit("bench: the release never got under way")


if __name__ == "__main__":
    sys.exit(main())
