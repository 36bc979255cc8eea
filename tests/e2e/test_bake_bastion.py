"""A bake whose build instance is reachable only through the environment's bastion, for real.

The sandbox's fleet network admits SSH only from the bastion's security group, and the sandbox
enforces it (docs/dataplane.md, "SSH and security groups"). The bake launches its build instance
there, so the same bake fails when Packer dials the instance directly and passes through the
bastion — Packer's own connection and Ansible's alike — smoke test included.

Two real bakes (the failing one gives up after Packer's ten login attempts): about six minutes.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from release import commands, config
from release.bake import Baker, BakeResult
from release.errors import BakeError
from release.sandbox import stack
from release.ssh import Ssh, SshError, parse_console_output
from release.ui import UI

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(1500)]

ROOT = Path(__file__).parents[2]
ENV = "sandbox"


@dataclass
class Sandbox:
    state: Path
    project: Path
    cfg: config.Config
    out: io.StringIO

    def ctx(self) -> commands.Context:
        return commands.open_context(self.cfg, ENV, UI(stdout=self.out, stderr=self.out), project=self.project)


@pytest.fixture(scope="module")
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    if os.geteuid() != 0:
        pytest.fail("the sandbox's real instances need root on Linux (./bootstrap test runs as root)")
    state = Path(tempfile.mkdtemp(prefix="kiln-bastion-", dir="/var/tmp"))
    state.chmod(0o755)  # PostgreSQL's user must reach its data dir
    project = state / "project"  # a checkout of its own: bakes in the main one would wait for each other
    for name in ("app", "ansible", "packer"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    shutil.copy(ROOT / "constraints.txt", project / "constraints.txt")
    loaded = config.load(ROOT / "versions.toml")
    # One sandbox environment is enough here (the second region only slows the start).
    cfg = replace(loaded, environments={n: e for n, e in loaded.environments.items() if n == ENV or not e.sandbox})
    saved = commands.SANDBOX_DIR
    commands.SANDBOX_DIR = state
    box = Sandbox(state, project, cfg, io.StringIO())
    try:
        commands.sandbox_up(cfg, UI(stdout=box.out, stderr=box.out), time_scale=0.1, instances=True)
        yield box
    finally:
        if request.session.testsfailed:
            print("\n--- Kiln's output (last 6000 characters) ---\n" + box.out.getvalue()[-6000:])
            log = state / "server.log"
            if log.exists():
                print("--- sandbox server log (last 4000 characters) ---\n" + log.read_text()[-4000:])
        stack.down(state)
        commands.SANDBOX_DIR = saved
        leftovers = [line for line in Path("/proc/mounts").read_text().splitlines() if str(state) in line]
        shutil.rmtree(state, ignore_errors=not leftovers)
        assert not leftovers, leftovers


def test_the_fleet_answers_ssh_from_the_bastion_only(sandbox: Sandbox) -> None:
    ctx = sandbox.ctx()
    group = ctx.cloud.group(ctx.env.asg)
    assert group is not None
    target = group.instances[0]
    assert target.private_ip
    direct = replace(ctx.env.ssh, bastion_instance=None)
    with Ssh(direct, key_filename=commands.sandbox_key(), use_agent=False, console_output=ctx.cloud.console_output) \
            as ssh, pytest.raises(SshError, match="login as admin refused"):
        ssh.connect(target.private_ip, instance_id=target.instance_id)
    with commands.ssh_for(ctx) as ssh, ssh.connect(target.private_ip, instance_id=target.instance_id) as conn:
        assert conn.via is not None  # through the bastion: admitted
        assert conn.run("hostname").stdout.strip() == "ip-" + target.private_ip.replace(".", "-")
    console = ctx.cloud.console_output(target.instance_id)
    assert re.search(r"SSH login as admin refused by security groups: .* do not admit tcp 22 from this machine "
                     r"\(127\.0\.0\.1, outside every instance\): they admit it only from sg-\w+ "
                     r"\(web-sandbox-bastion\)", console), console[-2000:]


def test_a_bake_that_dials_the_build_instance_directly_fails_saying_why(sandbox: Sandbox) -> None:
    ctx = sandbox.ctx()
    baker = Baker(ctx.cfg, ctx.env, ctx.aws, ctx.project, ctx.clock, on_step=print, on_line=lambda line: None,
                  bastion_key=commands.sandbox_key())
    plan = baker.plan(force=True)
    app_group = ctx.aws.client("ec2").describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["web-sandbox-app"]}])["SecurityGroups"][0]["GroupId"]
    assert plan.variables["security_group_ids"] == [app_group]  # the fleet's network: SSH from the bastion only
    def without_bastion(variables: dict[str, object]) -> dict[str, object]:
        return {k: v for k, v in variables.items() if not k.startswith("ssh_bastion_")}

    direct = replace(plan, variables=without_bastion(plan.variables),
                     foundation=replace(plan.foundation, variables=without_bastion(plan.foundation.variables)))
    # The first layer to bake is the one that fails: the foundation in a new sandbox.
    failing = (plan.foundation.fingerprint if plan.foundation.needed else plan.fingerprint).value
    with pytest.raises(BakeError) as failed:
        baker.bake(direct)
    message = str(failed.value)
    assert "packer build failed (exit 1)" in message
    assert "authentication error when trying to connect via SSH" in message
    assert "If it is reachable only through a bastion, name the bastion in [environments.sandbox.ssh]" in message
    # The build instance was there, and its sshd refused Packer: this machine is not the bastion.
    built_on = ctx.cloud.instances_tagged({"kiln:fingerprint": failing},
                                          states=("shutting-down", "terminated"))
    assert len(built_on) == 1
    refused = re.findall(r"SSH to (i-\w+) refused: .* from this machine \(127\.0\.0\.1",
                         (sandbox.state / "server.log").read_text())
    assert built_on[0] in refused
    images = [*ctx.cloud.app_images(ctx.cfg.app.name), *ctx.cloud.foundation_images(ctx.cfg.app.name)]
    assert [i for i in images if i.fingerprint == failing] == []
    assert ctx.cloud.instances_tagged({"kiln:fingerprint": failing},
                                      states=("pending", "running", "stopping", "stopped")) == []


def test_the_same_bake_through_the_bastion_passes_and_is_validated(sandbox: Sandbox) -> None:
    ctx = sandbox.ctx()
    result = commands.bake(ctx, force=False, dry_run=False, if_changed=False)
    assert isinstance(result, BakeResult) and result.validated  # the smoke test went through the bastion too
    variables = result.plan.variables
    bastion_id, bastion_ip = ctx.cloud.running_instance_named(ctx.env.ssh.bastion_instance or "")
    assert variables["ssh_bastion_host"] == bastion_ip
    log = (sandbox.project / ".kiln" / "bake" / "packer-app.log").read_text()
    assert "Connected to SSH!" in log
    assert '-o ProxyCommand="ssh -W %h:%p -p 22' in log and f'admin@{bastion_ip}"' in log  # Ansible's jump
    # Ansible's jump checked the bastion's key: the one its console output vouches for.
    known = Path(str(variables["ssh_bastion_known_hosts"])).read_text().split()
    assert known[0] == bastion_ip
    trusted = parse_console_output(ctx.cloud.console_output(bastion_id))
    assert trusted.accepts(known[1], base64.b64decode(known[2]))
