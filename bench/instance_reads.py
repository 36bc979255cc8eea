"""What reading instances costs over SSH and over SSM Run Command (access = "ssm").

Against a running sandbox with real instances (its seed group, 4 instances):

    KILN_SANDBOX_DIR=/var/tmp/kiln-reads inv sandbox.up
    KILN_SANDBOX_DIR=/var/tmp/kiln-reads .venv/bin/python bench/instance_reads.py

It prints, for each way in:
- the gate's probe of one instance (GET /version and /health, audit.probe_release): median and
  worst wall time over `--rounds` rounds of every instance;
- the fleet audit of the whole group (audit.audit, --parallel 4): median wall time;
- with SSM, the AWS calls one probe and one audit make (the sandbox's own request count).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
import urllib.request
from dataclasses import replace
from typing import Any

from release import audit, config
from release.commands import context as kiln
from release.sandbox import lookup
from release.ui import UI


def requests(endpoint: str, method: str = "GET") -> dict[str, Any]:
    with urllib.request.urlopen(urllib.request.Request(f"{endpoint}/_kiln/requests", method=method),
                                timeout=10) as answer:
        return dict(json.loads(answer.read()))


def ssm_calls(endpoint: str) -> dict[str, int]:
    return dict(requests(endpoint)["calls"].get("ssm", {}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    running = lookup.running()
    if running is None:
        raise SystemExit(f"no sandbox runs in {lookup.STATE_DIR} (KILN_SANDBOX_DIR); start one with inv sandbox.up")
    cfg = config.load(config.DEFAULT_PATH)
    ctx = kiln.open_context(cfg, "sandbox", UI(stdout=io.StringIO(), stderr=io.StringIO()))
    group = ctx.cloud.group(ctx.env.asg, ctx.env.target_groups)
    assert group is not None
    instances = audit.in_service(group)
    live = ctx.ledger.live(ctx.env.name)
    if not instances or live is None:
        raise SystemExit("the sandbox's group has no in-service instance or no live release")
    expected = audit.expected_from_live(live.as_live())
    print(f"{len(instances)} in-service instances of {ctx.env.asg}, live release {live.version}")
    for access in ("ssh", "ssm"):
        way = replace(ctx, env=replace(ctx.env, access=access))
        probes: list[float] = []
        audits: list[float] = []
        with kiln.reach_for(way) as reach:
            for _ in range(args.rounds):
                for instance in instances:
                    started = time.perf_counter()
                    version, _, detail = audit.probe_release(reach, instance.private_ip or "",
                                                                   instance_id=instance.instance_id)
                    probes.append(time.perf_counter() - started)
                    if version is None:
                        print(f"  {access}: {instance.instance_id} answered no version ({detail})")
            requests(running.endpoint, "DELETE")
            audit.probe_release(reach, instances[0].private_ip or "", instance_id=instances[0].instance_id)
            per_probe = ssm_calls(running.endpoint)
            for _ in range(args.rounds):
                requests(running.endpoint, "DELETE")
                started = time.perf_counter()
                audit.audit(reach, expected, instances, parallel=4)
                audits.append(time.perf_counter() - started)
            per_audit = ssm_calls(running.endpoint)
        print(f"{access}: gate probe of one instance: median {statistics.median(probes):.2f} s, "
              f"worst {max(probes):.2f} s ({len(probes)} probes); fleet audit of {len(instances)} "
              f"(--parallel 4): median {statistics.median(audits):.2f} s")
        if access == "ssm":
            print(f"ssm: AWS calls per probe {sum(per_probe.values())} ({per_probe}); per audit "
                  f"{sum(per_audit.values())} ({per_audit})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
