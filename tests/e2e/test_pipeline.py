"""The whole pipeline in the sandbox, for real: bake (Packer + Ansible), release, rollback, a
failing version rolled back automatically, drift found by the fleet audit, bad input refused;
then the AMI lifecycle: a rebake when the base image moves, promotion to a second region, cleanup.

Real instances need root on Linux. The tests run in order and share one sandbox (module scope):
each step builds on the fleet the previous one left. Two bakes run in the background while other
tests wait on the sandbox: 1.2.0's beside the releases of 1.1.0, and the one on a new base image
beside the crash matrix; a later test checks what each built.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from packaging.version import Version

from release import config
from release.baker import Baker, BakeResult
from release.clock import SystemClock
from release.commands import bake as baking
from release.commands import context as kiln
from release.commands import deploy
from release.commands import fleet as fleet_audit
from release.commands import images as amis
from release.commands import sandbox as local_cloud
from release.errors import BakeError, DriftDetected, GateFailed, NotFound, SshError, UsageError
from release.hostkeys import parse_console_output
from release.plan import Plan, Request, make_plan
from release.record import Lease, Outcome, ReleaseRecord
from release.sandbox import lookup, stack
from release.ssh import Ssh
from release.ui import UI

pytestmark = [pytest.mark.root, pytest.mark.slow]

ROOT = Path(__file__).parents[2]
ENV = "sandbox"
WEST = "sandbox-west"  # the second sandbox environment, in another region


class Background:
    """Work on a thread of its own while the tests go on; result() waits and re-raises its error."""

    def __init__(self, work: Callable[[], object], out: io.StringIO) -> None:
        self.out = out
        self._outcome: list[object] = []
        self._error: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(work,), daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], object]) -> None:
        try:
            self._outcome.append(work())
        except BaseException as error:  # handed to result(), in the test's thread
            self._error.append(error)

    def wait(self, timeout: float) -> None:
        self._thread.join(timeout)

    def result(self, timeout: float) -> object:
        self.wait(timeout)
        assert not self._thread.is_alive(), f"still running after {timeout:.0f} s:\n{self.out.getvalue()[-4000:]}"
        if self._error:
            print(self.out.getvalue()[-6000:])
            raise self._error[0]
        return self._outcome[0]


class World:
    def __init__(self, state: Path, cfg: config.Config) -> None:
        self.state = state
        self.cfg = cfg
        self.out = io.StringIO()
        self.rebake: Background | None = None  # the bake on a new base image, beside the crash matrix
        self.broken_bake: Background | None = None  # 1.2.0's, beside the releases of 1.1.0 and back
        self.published_base = ""
        self._contexts: dict[str, kiln.CommandContext] = {}

    def ctx(self, cfg: config.Config | None = None, project: Path | None = None, env: str = ENV,
            ui: UI | None = None) -> kiln.CommandContext:
        """A command's context. The plain ones (this world's config, its output) are opened once per
        environment: a context's boto3 clients cost about 0.25 CPU-s, and the tests read the
        cloud hundreds of times while the sandbox's instances need the CPU."""
        if cfg is None and project is None and ui is None:
            if env not in self._contexts:
                self._contexts[env] = kiln.open_context(self.cfg, env, UI(stdout=self.out, stderr=self.out))
            return self._contexts[env]
        return kiln.open_context(cfg or self.cfg, env, ui or UI(stdout=self.out, stderr=self.out), project=project)

    def config_for(self, version: str, *, access: str = "ssh") -> config.Config:
        """versions.toml at `version`; access = "ssm": the sandbox environment reads its instances
        through SSM Run Command instead of SSH."""
        text = (ROOT / "versions.toml").read_text().replace('version = "1.0.0"', f'version = "{version}"')
        if access != "ssh":
            text = text.replace("[environments.sandbox]\n", f'[environments.sandbox]\naccess = "{access}"\n', 1)
        path = self.state / f"versions-{version}{'-' + access if access != 'ssh' else ''}.toml"
        path.write_text(text)
        return config.load(path)

    def aws_state(self) -> tuple[int, int, list[str]]:
        """What a refused command must leave as it was: LT versions, refreshes, instances."""
        ctx = self.ctx()
        group = ctx.cloud.group(ctx.env.asg)
        assert group is not None
        return (len(ctx.cloud.template_versions(ctx.env.launch_template)), len(ctx.cloud.refreshes(ctx.env.asg)),
                sorted(i.instance_id for i in group.instances))

    def wait_until_serving(self, timeout: float = 180.0) -> None:
        """Until every instance of the group is healthy in its target group (instances boot for real)."""
        ctx = self.ctx()
        deadline = time.monotonic() + timeout
        while True:
            group = ctx.cloud.group(ctx.env.asg, ctx.env.target_groups)
            states = [i.target_health for i in group.instances] if group else []
            if len(states) == (group.desired_capacity if group else -1) and set(states) == {"healthy"}:
                return
            assert time.monotonic() < deadline, f"the fleet did not become healthy: {states}"
            time.sleep(1)

    def until_gating(self, proc: subprocess.Popen[str]) -> ReleaseRecord:
        """Until the release `proc` drives reaches its gate; the record as it is then."""
        deadline = time.monotonic() + 120
        ledger = self.ctx().ledger
        while time.monotonic() < deadline and proc.poll() is None:
            running = ledger.in_progress(ENV)
            if running is not None and running.phase == "gating":
                return running
            time.sleep(0.1)
        raise AssertionError("the release never reached its gate")

    def lb_versions(self, count: int = 12, env: str = ENV) -> dict[str, int]:
        ctx = self.ctx(env=env)
        url = ctx.cloud.load_balancer_url(ctx.env.target_groups)  # the DNS name, as on AWS
        assert url is not None
        return deploy.sample_versions(url, count)


@pytest.fixture(scope="module")
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    if os.geteuid() != 0:
        pytest.fail("the sandbox's real instances need root on Linux (./bootstrap test runs as root)")
    state = Path(tempfile.mkdtemp(prefix="kiln-e2e-", dir="/var/tmp"))
    state.chmod(0o755)  # PostgreSQL's user must reach its data dir
    saved = lookup.STATE_DIR
    lookup.STATE_DIR = state
    w = World(state, config.load(ROOT / "versions.toml"))
    try:
        local_cloud.up(w.cfg, UI(stdout=w.out, stderr=w.out), time_scale=0.1, instances=True)
        w.wait_until_serving()
        yield w
    finally:
        for background in (w.broken_bake, w.rebake):  # Packer and its instance go first
            if background is not None:
                background.wait(600)
        if request.session.testsfailed:  # what Kiln and the sandbox said, for the failure above
            print("\n--- Kiln's output (last 6000 characters) ---\n" + w.out.getvalue()[-6000:])
            log = state / "server.log"
            if log.exists():
                print("--- sandbox server log (last 4000 characters) ---\n" + log.read_text()[-4000:])
                if os.environ.get("KILN_TEST_ARTIFACTS"):  # the whole log, where CI keeps artifacts
                    kept = Path(os.environ["KILN_TEST_ARTIFACTS"]) / "e2e-sandbox-server.log"
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(log, kept)
        stack.down(state)
        lookup.STATE_DIR = saved
        leftovers = [line for line in Path("/proc/mounts").read_text().splitlines() if str(state) in line]
        shutil.rmtree(state, ignore_errors=not leftovers)
        assert not leftovers, leftovers


def test_sandbox_starts_with_the_legacy_fleet_adopted_as_release_0(world: World) -> None:
    ctx = world.ctx()
    live = ctx.ledger.live(ENV)
    assert live is not None and live.kind == "adopt" and live.version == stack.LEGACY_VERSION
    assert set(world.lb_versions()) == {stack.LEGACY_VERSION}


def test_ssh_clients_jump_to_instances_through_the_bastion(world: World) -> None:
    ctx = world.ctx()
    name = ctx.env.ssh.bastion_instance
    assert name
    bastion_id, bastion_ip = ctx.cloud.running_instance_named(name)
    group = ctx.cloud.group(ctx.env.asg)
    assert group is not None
    target = group.instances[0]
    assert target.private_ip
    with kiln.ssh_for(ctx) as ssh, ssh.connect(target.private_ip, instance_id=target.instance_id) as conn:
        assert conn.via is not None and conn.via.host.startswith(bastion_id)  # host key vouched by its console
        assert conn.run("hostname").stdout.strip() == "ip-" + target.private_ip.replace(".", "-")
    # OpenSSH's client, the way a person jumps (README).
    options = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
               "-o", "BatchMode=yes", "-i", str(lookup.key_file(world.state))]
    jump = " ".join(["ssh", *options, "-W", "%h:%p", f"admin@{bastion_ip}"])
    out = subprocess.run(["ssh", *options, "-o", f"ProxyCommand={jump}", f"admin@{target.private_ip}", "hostname"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ip-" + target.private_ip.replace(".", "-")


def test_the_fleet_answers_ssh_from_the_bastion_only(world: World) -> None:
    """The fleet's security groups admit SSH only from the bastion's, and the sandbox enforces it
    (docs/dataplane.md, "SSH and security groups"): what a bake's build instance meets too."""
    ctx = world.ctx()
    group = ctx.cloud.group(ctx.env.asg)
    assert group is not None
    target = group.instances[0]
    assert target.private_ip
    direct = replace(ctx.env.ssh, bastion_instance=None)
    with Ssh(direct, key_filename=kiln.sandbox_key(), use_agent=False, console_output=ctx.cloud.console_output) \
            as ssh, pytest.raises(SshError, match="login as admin refused"):
        ssh.connect(target.private_ip, instance_id=target.instance_id)
    with kiln.ssh_for(ctx) as ssh, ssh.connect(target.private_ip, instance_id=target.instance_id) as conn:
        assert conn.via is not None  # through the bastion: admitted
        assert conn.run("hostname").stdout.strip() == "ip-" + target.private_ip.replace(".", "-")
    console = ctx.cloud.console_output(target.instance_id)
    assert re.search(r"SSH login as admin refused by security groups: .* do not admit tcp 22 from this machine "
                     r"\(127\.0\.0\.1, outside every instance\): they admit it only from sg-\w+ "
                     r"\(web-sandbox-bastion\)", console), console[-2000:]


def test_bake_produces_a_validated_tagged_image_without_secrets(world: World) -> None:
    ctx = world.ctx()
    result = baking.bake(ctx, force=False, dry_run=False)
    assert isinstance(result, BakeResult) and result.validated
    ami = ctx.cloud.image(result.image_id)
    assert ami is not None and ami.state == "available" and ami.validated is True
    for tag in ("kiln:version", "kiln:fingerprint", "kiln:git-sha", "kiln:base-ami", "kiln:built-at", "kiln:builder",
                "kiln:inputs"):
        assert ami.tags.get(tag), tag
    assert ami.tags["kiln:version"] == "1.0.0"
    # The first bake bakes the foundation, then the app image on it.
    foundation = ctx.cloud.image(result.foundation_id)
    assert result.foundation_seconds > 0 and foundation is not None and foundation.is_foundation
    assert ami.foundation == foundation.image_id and ami.tags["kiln:layer"] == "app"
    assert foundation.tags["kiln:base-ami"] == ami.tags["kiln:base-ami"] and foundation.version is None
    assert result.image_id not in {i.image_id for i in ctx.cloud.foundation_images(ctx.cfg.app.name)}
    # IMDSv2-only, as the AWS CLI sees it.
    cli_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    cli_env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION=ctx.env.region)
    aws_cli = [str(Path(sys.executable).parent / "aws"), "--endpoint-url", str(ctx.aws.target.endpoint_url)]
    described = subprocess.run([*aws_cli, "ec2", "describe-images", "--image-ids", result.image_id, "--output", "json"],
                               env=cli_env, capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(described.stdout)["Images"][0]["ImdsSupport"] == "v2.0"
    layer = world.state / "dataplane" / "layers" / result.image_id
    assert (layer / "opt/webapp/releases/1.0.0/MANIFEST.sha256").exists()
    assert json.loads((layer / "etc/webapp/build-info.json").read_text())["fingerprint"] == ami.fingerprint
    secret = json.loads(ctx.aws.client("secretsmanager").get_secret_value(SecretId=ctx.env.secret_id)["SecretString"])
    needles = [secret["JWT_SECRET"].encode(), secret["DATABASE_URL"].split("@")[0].split(":")[-1].encode()]
    for path in layer.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            assert not any(n in data for n in needles), f"secret baked into {path}"


def test_the_bake_went_through_the_bastion(world: World) -> None:
    """The build instance is where the fleet is (only the bastion may log in): Packer and Ansible
    reached it through the bastion, and Ansible's jump checked the bastion's key, the one its
    console output vouches for."""
    ctx = world.ctx()
    plan = baking.bake(ctx, force=True, dry_run=True)
    assert not isinstance(plan, BakeResult)
    app_group = ctx.aws.client("ec2").describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["web-sandbox-app"]}])["SecurityGroups"][0]["GroupId"]
    assert plan.variables["security_group_ids"] == [app_group]  # the fleet's network: SSH from the bastion only
    bastion_id, bastion_ip = ctx.cloud.running_instance_named(ctx.env.ssh.bastion_instance or "")
    assert plan.variables["ssh_bastion_host"] == bastion_ip
    log = (ROOT / ".kiln" / "bake" / "packer-app.log").read_text()
    assert "Connected to SSH!" in log
    assert '-o ProxyCommand="ssh -W %h:%p -p 22' in log and f'admin@{bastion_ip}"' in log  # Ansible's jump
    known = Path(str(plan.variables["ssh_bastion_known_hosts"])).read_text().split()
    assert known[0] == bastion_ip
    assert parse_console_output(ctx.cloud.console_output(bastion_id)).accepts(known[1], base64.b64decode(known[2]))


def test_a_bake_that_dials_the_build_instance_directly_fails_saying_why(world: World) -> None:
    ctx = world.ctx()
    baker = Baker(ctx.cfg, ctx.env, ctx.aws, ctx.project, ctx.clock, on_step=lambda s: None,
                  on_line=lambda line: None, bastion_key=kiln.sandbox_key())
    plan = baker.plan(force=True)
    assert not plan.foundation.needed  # the foundation exists: the app layer is the one that fails
    # Without the bastion, and one login attempt instead of Packer's ten (the refusal is the point).
    direct = replace(plan, variables={**{k: v for k, v in plan.variables.items() if not k.startswith("ssh_bastion_")},
                                      "ssh_handshake_attempts": 1})
    failing, ended = plan.fingerprint.value, ("shutting-down", "terminated")
    earlier = set(ctx.cloud.instances_tagged({"kiln:fingerprint": failing}, states=ended))  # the good bake's
    with pytest.raises(BakeError) as failed:
        baker.bake(direct)
    message = str(failed.value)
    assert "packer build failed (exit 1)" in message
    assert "authentication error when trying to connect via SSH" in message
    assert "If it is reachable only through a bastion, name the bastion in [environments.sandbox.ssh]" in message
    # The build instance was there, and its sshd refused Packer: this machine is not the bastion.
    built_on = sorted(set(ctx.cloud.instances_tagged({"kiln:fingerprint": failing}, states=ended)) - earlier)
    assert len(built_on) == 1
    refused = re.findall(r"SSH to (i-\w+) refused: .* from this machine \(127\.0\.0\.1",
                         (world.state / "server.log").read_text())
    assert built_on[0] in refused
    assert ctx.cloud.instances_tagged({"kiln:fingerprint": failing},
                                      states=("pending", "running", "stopping", "stopped")) == []
    images = [i for i in ctx.cloud.app_images(ctx.cfg.app.name) if i.fingerprint == failing]
    assert [i.image_id for i in images] == [i.image_id for i in images if i.validated]  # only the good bake


def test_a_second_bake_with_nothing_changed_is_a_quick_no_op(world: World) -> None:
    started = time.monotonic()
    plan = baking.bake(world.ctx(), force=False, dry_run=False)
    elapsed = time.monotonic() - started
    assert not isinstance(plan, BakeResult) and not plan.needed
    print(f"\nno-op bake: {elapsed:.2f} s")
    assert elapsed < 10  # the target (≤ 1 s) is measured by bench/cli_speed.py


@pytest.mark.parametrize(("path", "foundation_too"), [
    ("app/src/webapp/__init__.py", False),  # one line in the app: only the app layer
    ("ansible/roles/proxy/tasks/main.yml", True),  # the foundation's role: both layers
])
def test_which_layers_a_change_rebakes(world: World, tmp_path: Path, path: str, foundation_too: bool) -> None:
    checkout = baking.bake(world.ctx(), force=False, dry_run=True)
    project = copy_project(tmp_path)
    (project / path).write_text((project / path).read_text() + "\n# one more line\n")
    plan = baking.bake(world.ctx(project=project), force=False, dry_run=True)
    assert not isinstance(plan, BakeResult) and not isinstance(checkout, BakeResult) and plan.needed
    assert plan.foundation.needed is foundation_too
    changed = plan.fingerprint.changed_since(checkout.fingerprint.as_tag())
    assert changed == (["foundation"] if foundation_too else ["app"])


def copy_project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    for name in ("app", "ansible", "packer"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    shutil.copy(ROOT / "constraints.txt", project / "constraints.txt")
    return project


def test_a_broken_playbook_fails_the_bake_naming_the_task_and_leaves_nothing(world: World, tmp_path: Path) -> None:
    project = copy_project(tmp_path)
    playbook = project / "ansible" / "playbook.yml"
    text = playbook.read_text()
    anchor = "  pre_tasks:\n"
    assert anchor in text
    playbook.write_text(text.replace(anchor, anchor + "    - name: Break the bake on purpose\n"
                                                      "      ansible.builtin.command: /bin/false\n"
                                                      "      changed_when: false\n", 1))
    ctx = world.ctx(world.config_for("1.3.0"), project=project)
    ec2 = ctx.aws.client("ec2")
    groups_before = len(ec2.describe_security_groups()["SecurityGroups"])
    keys_before = len(ec2.describe_key_pairs()["KeyPairs"])
    with pytest.raises(BakeError, match=r"at Ansible task \[Break the bake on purpose\]"):
        baking.bake(ctx, force=False, dry_run=False)
    assert ctx.cloud.app_images(ctx.cfg.app.name, "1.3.0") == []
    running = ctx.cloud.instances_tagged({"kiln:version": "1.3.0"}, states=("pending", "running", "stopping",
                                                                             "stopped"))
    assert running == []
    assert len(ec2.describe_security_groups()["SecurityGroups"]) == groups_before
    assert len(ec2.describe_key_pairs()["KeyPairs"]) == keys_before


def test_release_1_0_0_replaces_the_fleet(world: World) -> None:
    before = world.aws_state()
    record = deploy.release(world.ctx(), Version("1.0.0"), dry_run=False, allow_downgrade=False, force=False)
    assert not isinstance(record, Plan) and record.outcome is Outcome.SUCCEEDED
    after = world.aws_state()
    assert after[0] == before[0] + 1 and not set(after[2]) & set(before[2])
    assert set(world.lb_versions()) == {"1.0.0"}


def test_a_new_app_version_is_an_app_only_bake(world: World) -> None:
    cfg = world.config_for("1.1.0")
    first = world.ctx().cloud.app_images(world.cfg.app.name, "1.0.0")[0]
    result = baking.bake(world.ctx(cfg), force=False, dry_run=False)
    assert isinstance(result, BakeResult) and result.validated
    # A new app version is an app-only bake, on the foundation 1.0.0 was baked on.
    assert result.foundation_seconds == 0 and result.foundation_id == first.foundation


def broken_health(project: Path) -> None:
    """A bad release: /health answers 503 whatever the database says."""
    views = project / "app" / "src" / "webapp" / "views.py"
    text = views.read_text()
    real = '@blueprint.get("/health")\ndef health() -> Response:'
    assert real in text
    views.write_text(text.replace(real, '@blueprint.get("/health-unused")\ndef _health() -> Response:') + (
        '\n\n@blueprint.get("/health")\ndef health() -> tuple[dict[str, str], int]:  # a bad release\n'
        '    return {"status": "broken"}, 503\n'))


def test_a_version_whose_health_fails_bakes_in_the_background(world: World, tmp_path: Path) -> None:
    """1.2.0, whose /health never says 200, is baked while the releases below wait on their gates;
    test_a_version_that_fails_health_is_rolled_back_automatically checks its smoke test failed."""
    project = copy_project(tmp_path)
    broken_health(project)
    cfg = world.config_for("1.2.0")
    # Its /health never says 200: the smoke test waits [bake] smoke_ready_timeout for it, not the default 45 s.
    cfg = replace(cfg, bake=replace(cfg.bake, smoke_ready_timeout=10))
    out = io.StringIO()
    world.broken_bake = Background(lambda: baking.bake(world.ctx(cfg, project=project, ui=UI(stdout=out, stderr=out)),
                                                       force=False, dry_run=False), out)


def test_release_1_1_0_then_fleet_verify_then_drift(world: World) -> None:
    cfg = world.config_for("1.1.0")
    result = next(i for i in world.ctx().cloud.app_images(world.cfg.app.name, "1.1.0") if i.validated)
    record = deploy.release(world.ctx(cfg), Version("1.1.0"), dry_run=False, allow_downgrade=False, force=False)
    assert not isinstance(record, Plan) and record.outcome is Outcome.SUCCEEDED
    assert set(world.lb_versions()) == {"1.1.0"}
    ctx = world.ctx()
    group = ctx.cloud.group(ctx.env.asg)
    assert group is not None and {i.image_id for i in group.instances} == {result.image_id}

    try:
        report = fleet_audit.verify(ctx, parallel=4, key=None)
    except DriftDetected:
        print(world.out.getvalue()[-6000:])  # the audit's table and what led to it
        for instance in group.instances:
            print(instance, ctx.cloud.console_output(instance.instance_id)[-1500:])
        raise
    assert report.ok and len(report.verdicts) == 4
    # An scp-style hotfix on one instance.
    victim = group.instances[0].instance_id
    views = next((world.state / "dataplane" / "instances" / victim / "root" / "opt/webapp/releases/1.1.0")
                 .rglob("webapp/views.py"))
    views.write_text(views.read_text() + "\n# hotfix\n")
    with pytest.raises(DriftDetected) as info:
        fleet_audit.verify(world.ctx(), parallel=4, key=None)
    assert victim in str(info.value)
    assert "views.py" in world.out.getvalue()


def test_with_access_ssm_the_audit_finds_the_hand_edit_through_run_command(world: World) -> None:
    """No SSH at all: fleet.verify reads every instance through SSM Run Command, and the hotfix of
    the test before is drift; the AWS CLI sees the commands Kiln sent."""
    ctx = world.ctx(world.config_for("1.1.0", access="ssm"))
    assert ctx.env.access == "ssm"
    start = len(world.out.getvalue())
    with pytest.raises(DriftDetected) as info:
        fleet_audit.verify(ctx, parallel=4, key=None)
    assert "views.py" in world.out.getvalue()[start:] and "i-" in str(info.value)
    listed = subprocess.run([str(Path(sys.executable).parent / "aws"), "ssm", "list-commands", "--region",
                             ctx.env.region, "--output", "json"], env={**os.environ, **ssm_cli_env(world)},
                            capture_output=True, text=True, timeout=60, check=True)
    commands = json.loads(listed.stdout)["Commands"]
    assert commands and all(c["DocumentName"] == "AWS-RunShellScript" for c in commands)
    assert {c["Status"] for c in commands} <= {"Success", "Failed"}


def ssm_cli_env(world: World) -> dict[str, str]:
    info = lookup.running()
    assert info is not None
    return {"AWS_ENDPOINT_URL": info.endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}


def test_rollback_returns_to_1_0_0(world: World) -> None:
    # The gate asks the new instances for /version and /health through SSM Run Command.
    record = deploy.rollback(world.ctx(world.config_for("1.1.0", access="ssm")), to=None, dry_run=False)
    assert not isinstance(record, Plan) and record.outcome is Outcome.SUCCEEDED
    assert record.kind == "rollback" and record.version == "1.0.0"
    assert set(world.lb_versions()) == {"1.0.0"}


def test_bad_input_is_refused_and_changes_nothing(world: World) -> None:
    before = world.aws_state()
    ctx = world.ctx()
    with pytest.raises(UsageError, match=r"no AMI for 9\.9\.9"):
        deploy.release(ctx, Version("9.9.9"), dry_run=False, allow_downgrade=False, force=False)
    with pytest.raises(UsageError, match=r"1\.0\.0 is live in sandbox; 0\.0\.0"):
        deploy.release(ctx, Version(stack.LEGACY_VERSION), dry_run=False, allow_downgrade=False, force=False)
    ctx.ledger.acquire(ENV, Lease("other", "someone else", timedelta(minutes=5)), ctx.clock.now())
    try:
        with pytest.raises(UsageError, match="locked by someone else"):
            deploy.release(world.ctx(), Version("1.1.0"), dry_run=False, allow_downgrade=False, force=False)
    finally:
        ctx.ledger.release_lock(ENV, "other")
    with pytest.raises(UsageError, match="no environment 'nope'"):
        kiln.open_context(world.cfg, "nope", UI(stdout=world.out, stderr=world.out))
    with pytest.raises(NotFound):
        amis.deprecate(world.ctx(), Version("7.7.7"), reason="test")
    assert world.aws_state() == before


def test_a_version_that_fails_health_is_rolled_back_automatically(world: World) -> None:
    assert world.broken_bake is not None, "the bake of 1.2.0 was not started"
    with pytest.raises(BakeError, match="failed its smoke test"):  # the smoke test catches it...
        world.broken_bake.result(timeout=600)
    cfg = world.config_for("1.2.0")
    with pytest.raises(GateFailed) as info:  # ...and releasing it anyway (--force) is rolled back
        deploy.release(world.ctx(cfg), Version("1.2.0"), dry_run=False, allow_downgrade=False, force=True)
    assert info.value.exit_code == 10
    record = world.ctx().ledger.history(ENV, limit=1)[0]
    assert record.outcome is Outcome.ROLLED_BACK and "unhealthy" in (record.reason or "")
    failing = next(e for e in record.journal if e.phase == "rolling_back")
    started = next(e for e in record.journal if e.phase == "gating")
    print(f"\ngate start -> rollback call: {(failing.at - started.at).total_seconds():.1f} s")
    assert set(world.lb_versions()) == {"1.0.0"}
    group = world.ctx().cloud.group(world.ctx().env.asg)
    assert group is not None and all(i.target_health == "healthy" for i in group.instances)


def test_the_report_of_a_release_and_of_a_rollback_in_a_browser(world: World, tmp_path: Path) -> None:
    """`inv report` through the real CLI, of the successful 1.1.0 release and of the 1.2.0 release
    the gate rolled back; headless Chromium renders both (tests/report/browser.py)."""
    spec = importlib.util.spec_from_file_location("report_browser", ROOT / "tests" / "report" / "browser.py")
    assert spec is not None and spec.loader is not None
    browser = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = browser  # its dataclasses look their module up there
    spec.loader.exec_module(browser)
    render_html = browser.render_html

    history = world.ctx().ledger.history(ENV, limit=50)
    rolled_back = next(r for r in history if r.outcome is Outcome.ROLLED_BACK and r.version == "1.2.0")
    released = next(r for r in history if r.outcome is Outcome.SUCCEEDED and r.version == "1.1.0"
                    and r.kind == "release")
    cli = Cli(world)
    artifacts = Path(os.environ.get("KILN_TEST_ARTIFACTS", tmp_path)) / "report"
    artifacts.mkdir(parents=True, exist_ok=True)
    for record, failed in ((released, False), (rolled_back, True)):
        out = tmp_path / f"{record.release_id}.html"
        done = cli.run("report", "--release", record.release_id, "--output", str(out))
        assert done.returncode == 0, done.stderr
        html = out.read_text()
        assert "http://" not in html and "https://" not in html  # self-contained
        dom, png = render_html(out)
        (artifacts / f"e2e-{'rollback' if failed else 'release'}.png").write_bytes(png)
        lanes = dom.count("data-lane=")
        assert lanes >= 4, f"one lane per instance of the group, found {lanes}"
        assert dom.count('class="poll ') >= 2  # the gate's polls, each with its checks
        assert ('id="failure-marker"' in dom) is failed and ('id="rollback-marker"' in dom) is failed
        assert record.release_id in dom and record.image_id in dom
    print(f"\nreport screenshots in {artifacts}")


class Cli:
    """Kiln's real command line, as a user runs it: `inv …` in a subprocess."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.env.update({"KILN_SANDBOX_DIR": str(world.state),
                         "PATH": f"{Path(sys.executable).parent}:" + os.environ["PATH"]})
        self.config = str(world.state / "versions-1.1.0.toml")

    def argv(self, *args: str) -> list[str]:
        return [str(Path(sys.executable).parent / "inv"), *args, "--env", ENV, "--config", self.config]

    def run(self, *args: str, crash_at: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "KILN_CRASH_AT": crash_at or ""}
        return subprocess.run(self.argv(*args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)

    def start(self, *args: str) -> subprocess.Popen[str]:
        """In the background, its output (stdout and stderr together) read by communicate()."""
        return subprocess.Popen(self.argv(*args), cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def run_together(self, *commands: list[str], timeout: float = 120) -> list[subprocess.CompletedProcess[str]]:
        """Several commands at the same moment, each with its own stdout and stderr."""
        procs = [subprocess.Popen(self.argv(*c), cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for c in commands]
        done = []
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
        return done


def test_a_new_base_ami_is_a_new_foundation_and_the_rebake_starts(world: World) -> None:
    """Debian publishes a new base image: the next bake would bake a new foundation and a new app
    image on it. That bake runs in the background while the crash matrix below waits on its gates
    (it touches no group and no release); the test after the crash matrix checks what it built."""
    # access = "ssm": this bake's smoke test reads the fresh instance through SSM Run Command.
    cfg = world.config_for("1.1.0", access="ssm")
    plan = baking.bake(world.ctx(cfg), force=False, dry_run=True)
    assert not isinstance(plan, BakeResult) and not plan.needed
    published = local_cloud.new_base_image(world.cfg, UI(stdout=world.out, stderr=world.out))
    assert set(published) == {"us-east-1", "us-west-2"}  # Debian publishes in every region
    plan = baking.bake(world.ctx(cfg), force=False, dry_run=True)
    assert not isinstance(plan, BakeResult) and plan.needed
    assert plan.base_image.image_id == published["us-east-1"]
    assert plan.foundation.needed and plan.foundation.changed == ("base",) and "foundation" in plan.changed
    world.published_base = published["us-east-1"]
    out = io.StringIO()  # its own output: the crash matrix's commands print meanwhile
    world.rebake = Background(lambda: baking.bake(world.ctx(cfg, ui=UI(stdout=out, stderr=out)), force=False,
                                                  dry_run=False), out)


# Where the real CLI is killed (SIGKILL): one of each kind of step boundary, each followed by both
# ways out. Every checkpoint (12 of them) and both ways out are also driven on fakes in
# tests/unit/test_rollout.py; KILN_CRASH_MATRIX=all runs every checkpoint here too.
CRASH_POINTS = ["template-created", "refresh-started", "gating", "default-set"]
if os.environ.get("KILN_CRASH_MATRIX") == "all":
    CRASH_POINTS = ["locked", "template-created", "template-saved", "refresh-started", "refresh-saved", "gating",
                    "gate-passed", "default-set"]


def test_crash_matrix_kill_at_every_step_then_resume_or_rollback_converges(world: World) -> None:
    """A real `inv release` killed with SIGKILL at each step boundary (and between a mutating call and
    its record); then `inv status` tells the truth, and `inv resume` or `inv rollback` converges:
    one refresh per release, no unrecorded template version, the lock free, the ledger equal to
    the cloud, the load balancer serving what it should."""
    cli = Cli(world)
    live, other = "1.0.0", "1.1.0"
    results = []
    for point in CRASH_POINTS:
        for way_out in ("resume", "rollback"):
            started = time.monotonic()
            args = ["release", "--version", other] + (["--allow-downgrade"] if Version(other) < Version(live) else [])
            crashed = cli.run(*args, crash_at=point)
            assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
            record = world.ctx().ledger.in_progress(ENV)
            assert record is not None, f"{point}: no unfinished release after the crash"
            # At the worst moment, all at once: status, a new release (refused while one is
            # unfinished) and a dry run of the way out (it says what it would do, the wait included).
            status, blocked, dry = cli.run_together(["status"], args, [way_out, "--dry-run"])
            assert status.returncode == 0, status.stderr
            told = status.stdout + status.stderr
            assert f"unfinished release of {other}" in told and f"phase {record.phase}" in told, told
            assert "`inv resume` would" in told and "`inv rollback` would" in told
            assert blocked.returncode == 2 and "unfinished release" in blocked.stderr, blocked.stderr
            assert dry.returncode == 0, dry.stdout + dry.stderr
            assert world.ctx().ledger.history(ENV, limit=1)[0] == record  # dry runs wrote nothing
            lock = world.ctx().ledger.lock(ENV)
            out = cli.run(way_out)  # right away: the dead driver's lease is waited out, not "try again"
            assert out.returncode in (0, 10), f"{point} then {way_out}:\n{out.stdout}{out.stderr}"
            if lock is not None and lock.live(SystemClock().now() + timedelta(seconds=1)):
                assert "waiting up to" in out.stdout + out.stderr, out.stdout + out.stderr
            done = world.ctx().ledger.history(ENV, limit=1)[0]
            assert done.release_id == record.release_id
            if way_out == "resume" and done.outcome is Outcome.ROLLED_BACK:
                # While no driver watched, AWS itself rolled the refresh back (AutoRollback on an
                # alarm): resuming follows what AWS did, and the release ends rolled back.
                assert out.returncode == 10, out.stdout + out.stderr
                assert re.search(r"is Rollback(InProgress|Successful)", done.reason or ""), done
                print(f"\n{point} then resume: AWS had rolled the refresh back itself: {done.reason}")
            elif way_out == "resume":
                assert out.returncode == 0, f"{point} then {way_out}:\n{out.stdout}{out.stderr}"
                assert done.outcome is Outcome.SUCCEEDED, done
                live, other = other, live
            else:
                assert out.returncode == 0, f"{point} then {way_out}:\n{out.stdout}{out.stderr}"
                assert done.outcome is Outcome.ROLLED_BACK, done
            converged(world, done, serving=live)
            results.append((point, way_out, done.outcome.value, round(time.monotonic() - started, 1)))
    print("\ncrash matrix (point, way out, outcome, seconds):")
    for row in results:
        print("  ", *row)


def test_the_rebake_on_the_new_base_ami_built_both_layers(world: World) -> None:
    assert world.rebake is not None, "the rebake was not started"
    result = world.rebake.result(timeout=600)
    assert isinstance(result, BakeResult) and result.validated and result.foundation_seconds > 0
    assert result.smoke[0].name == "ssm" and result.smoke[0].ok, result.smoke
    ami = world.ctx().cloud.image(result.image_id)
    assert ami is not None and ami.version == Version("1.1.0") and ami.tags["kiln:base-ami"] == world.published_base
    foundation = world.ctx().cloud.image(result.foundation_id)
    assert foundation is not None and foundation.is_foundation and ami.foundation == foundation.image_id
    assert foundation.tags["kiln:base-ami"] == world.published_base


def test_a_frozen_driver_is_taken_over_and_stops_at_its_next_fence_when_it_thaws(world: World) -> None:
    """A driver stopped mid-gate (SIGSTOP: a suspended laptop, a paused container) is alive but
    silent: its lease lapses, `inv resume` takes over and finishes the release, and the old
    driver, woken up, stops at its next fence without changing anything (exit 13)."""
    cli = Cli(world)
    live = world.ctx().ledger.live(ENV)
    assert live is not None
    target = "1.1.0" if live.version == "1.0.0" else "1.0.0"
    frozen = cli.start("release", "--version", target, *(["--allow-downgrade"] if target < live.version else []))
    running = world.until_gating(frozen)
    frozen.send_signal(signal.SIGSTOP)
    try:
        resumed = cli.run("resume")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "waiting up to" in resumed.stdout + resumed.stderr  # for the silent driver's lease
    finally:
        frozen.send_signal(signal.SIGCONT)
    said, _ = frozen.communicate(timeout=120)
    assert frozen.returncode == 13 and "no longer holds the lock" in said, said
    record = world.ctx().ledger.history(ENV, limit=1)[0]
    assert record.release_id == running.release_id and record.outcome is Outcome.SUCCEEDED, record
    converged(world, record, serving=target)  # one refresh, the ledger equal to the cloud


def converged(world: World, record: ReleaseRecord, *, serving: str) -> None:
    ctx = world.ctx()
    assert ctx.ledger.lock(ENV) is None, "the lock is still held"
    assert ctx.ledger.in_progress(ENV) is None
    refreshes = ctx.cloud.refreshes(ctx.env.asg)
    assert not [r for r in refreshes if r.status in ("Pending", "InProgress", "RollbackInProgress")]
    if record.template_after is not None:
        assert sum(r.desired_version == str(record.template_after) for r in refreshes) <= 1  # one per release
    created = [v.number for v in ctx.cloud.template_versions(ctx.env.launch_template)
               if f"[{record.release_id}]" in v.description]
    assert created == ([record.template_after] if record.template_after else []), (created, record)
    group = ctx.cloud.group(ctx.env.asg)
    assert group is not None
    current = ctx.cloud.template_version(ctx.env.launch_template, str(group.launch_template_version))
    assert current is not None
    live = ctx.ledger.live(ENV)
    assert live is not None and live.version == serving and current.image_id == live.image_id  # ledger == cloud
    world.wait_until_serving()
    assert set(world.lb_versions()) == {serving}


def test_past_twenty_template_versions_a_failing_release_returns_to_the_groups_real_version(world: World) -> None:
    ctx = world.ctx()
    ec2 = ctx.aws.client("ec2")
    name = ctx.env.launch_template
    while len(ctx.cloud.template_versions(name)) <= 20:  # other hands add versions too
        ec2.create_launch_template_version(LaunchTemplateName=name, SourceVersion="1", LaunchTemplateData={},
                                           VersionDescription="added outside Kiln")
    cli = Cli(world)

    def other(version: str) -> tuple[str, list[str]]:
        target = "1.1.0" if version == "1.0.0" else "1.0.0"
        return target, ["--allow-downgrade"] if target < version else []

    live = ctx.ledger.live(ENV)
    assert live is not None
    target, extra = other(live.version)
    moved = cli.run("release", "--version", target, *extra)  # the group now launches a version past 20
    assert moved.returncode == 0, moved.stdout + moved.stderr
    group = ctx.cloud.group(ctx.env.asg)
    assert group is not None and group.launch_template_version is not None
    before = ctx.cloud.template_version(name, group.launch_template_version)
    assert before is not None and before.number > 20, before
    live = ctx.ledger.live(ENV)
    assert live is not None and before.image_id == live.image_id
    target, extra = other(live.version)
    # The release fails on an alarm once its refresh is under way, as a bad version's 5xx would.
    proc = cli.start("release", "--version", target, *extra)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        running = ctx.ledger.in_progress(ENV)
        refresh = ctx.cloud.refresh(ctx.env.asg, running.refresh_id) if running and running.refresh_id else None
        if refresh is not None and refresh.percentage_complete > 0:
            break
        time.sleep(0.2)
    alarm = next(a for a in ctx.env.alarms if "5xx" in a)
    ctx.aws.client("cloudwatch").set_alarm_state(AlarmName=alarm, StateValue="ALARM", StateReason="a bad version")
    output, _ = proc.communicate(timeout=600)
    out = subprocess.CompletedProcess(proc.args, proc.returncode, output, "")
    assert out.returncode == 10, out.stdout + out.stderr
    record = ctx.ledger.history(ENV, limit=1)[0]
    assert record.outcome is Outcome.ROLLED_BACK and record.template_before == before.number
    converged(world, record, serving=live.version)


def test_with_faults_injected_releases_complete_or_roll_back_cleanly(world: World) -> None:
    """Through `inv sandbox.fault`, as a user rehearsing failures would: throttling on every
    describe call the gate makes, a lost answer to StartInstanceRefresh, a new instance killed."""
    cli = Cli(world)

    def fault(*args: str) -> None:
        done = subprocess.run([str(Path(sys.executable).parent / "inv"), "sandbox.fault", *args], cwd=ROOT,
                              env=cli.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr

    def other() -> tuple[str, list[str]]:
        live = world.ctx().ledger.live(ENV)
        assert live is not None
        target = "1.1.0" if live.version == "1.0.0" else "1.0.0"
        return target, ["--allow-downgrade"] if target < live.version else []

    def start_release(target: str, extra: list[str]) -> subprocess.Popen[str]:
        return cli.start("release", "--version", target, *extra)

    # 1. Once the gate watches, every describe call it makes is throttled for a while: retried, never fatal.
    target, extra = other()
    proc = start_release(target, extra)
    world.until_gating(proc)
    for operation in ("DescribeAutoScalingGroups", "DescribeInstanceRefreshes", "DescribeTargetHealth",
                      "DescribeInstances", "DescribeAlarms"):
        fault("--operation", operation, "--error", "Throttling", "--seconds", "8")
    # Second drivers, at the worst moment (both at once): each sees this one is alive and leaves it be.
    for second in cli.run_together(["resume"], ["rollback"], timeout=60):
        assert second.returncode == 2 and "its driver is alive: it renewed its lease" in second.stderr, (
            second.stdout + second.stderr)
    output, _ = proc.communicate(timeout=600)
    fault("--clear")
    assert proc.returncode == 0, output
    record = world.ctx().ledger.history(ENV, limit=1)[0]
    assert record.outcome is Outcome.SUCCEEDED and "the gate retried Throttling" in record.journal[-1].message
    converged(world, record, serving=target)

    # 2. StartInstanceRefresh reaches AWS but its answer is lost: the retry meets InstanceRefreshInProgress,
    #    and Kiln adopts the refresh that did start (one refresh, not two, not "failed").
    fault("--operation", "StartInstanceRefresh", "--timeout", "12", "--count", "1")
    target, extra = other()
    out = cli.run("release", "--version", target, *extra)
    fault("--clear")
    assert out.returncode == 0, out.stdout + out.stderr
    record = world.ctx().ledger.history(ENV, limit=1)[0]
    assert record.outcome is Outcome.SUCCEEDED
    assert any("adopted" in e.message for e in record.journal), record.journal
    converged(world, record, serving=target)

    # 3. A new instance dies mid-refresh (a host failure): the gate fails and Kiln rolls back.
    live_before = world.ctx().ledger.live(ENV)
    assert live_before is not None
    target, extra = other()
    ctx = world.ctx()
    new_image = next(i.image_id for i in ctx.cloud.app_images(ctx.cfg.app.name, target) if i.validated)
    proc = start_release(target, extra)
    deadline = time.monotonic() + 120
    victim = None
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        group = ctx.cloud.group(ctx.env.asg)
        victim = next((i.instance_id for i in (group.instances if group else ())
                       if i.image_id == new_image and i.lifecycle == "InService"), None)
        time.sleep(0.2)
    assert victim is not None, "no new instance came into service"
    fault("--kill", victim)
    output, _ = proc.communicate(timeout=600)
    record = world.ctx().ledger.history(ENV, limit=1)[0]
    assert proc.returncode in (0, 10), output  # the group may replace it in time; else the gate fails
    if proc.returncode == 10:
        # The gate names the instance, or the alarm its failing health checks raised fires first.
        reason = record.reason or ""
        assert record.outcome is Outcome.ROLLED_BACK and (victim in reason or "unhealthy" in reason), reason
        converged(world, record, serving=live_before.version)
    else:
        assert record.outcome is Outcome.SUCCEEDED
        converged(world, record, serving=target)
    print(f"\nkilled {victim} mid-refresh: {record.outcome.value}: {record.reason or record.journal[-1].message}")


def test_deprecating_a_foundation_flags_the_images_baked_on_it(world: World) -> None:
    ctx = world.ctx()
    app = ctx.cfg.app.name
    one = ctx.cloud.app_images(app, "1.0.0")[0]
    assert one.foundation is not None
    with pytest.raises(NotFound, match="is not a foundation"):
        amis.deprecate_foundation(ctx, one.image_id, reason="wrong image", children=False)
    flagged = amis.deprecate_foundation(ctx, one.foundation, reason="openssl CVE-2026-0001", children=False)
    assert one.image_id in flagged
    below, above = ctx.cloud.image(one.foundation), ctx.cloud.image(one.image_id)
    assert below is not None and below.deprecated(ctx.clock.now())  # at once, for Kiln
    assert above is not None and not above.deprecated(ctx.clock.now())  # flagged, not deprecated
    assert above.tags["kiln:foundation-deprecated"] == "openssl CVE-2026-0001"
    plan = make_plan(ctx.env, Request(Version("1.0.0"), ctx.clock.now(), allow_downgrade=True),
                     deploy.observe_for_plan(ctx, Version("1.0.0")))
    assert any(f"baked on the foundation {one.foundation}, since deprecated" in w for w in plan.warnings)
    # The next bake of this tree would not build on it (the newest foundation is another one anyway).
    assert one.foundation not in {i.image_id for i in ctx.cloud.foundation_images(app)
                                  if not i.deprecated(ctx.clock.now())}


def test_promote_then_release_in_a_second_region_keeps_the_ami_lineage(world: World) -> None:
    east, west = world.ctx(), world.ctx(env=WEST)
    live = east.ledger.live(ENV)
    assert live is not None
    if live.version != "1.1.0":  # the fault test's killed instance may or may not have rolled 1.1.0 back
        done = deploy.release(world.ctx(), Version("1.1.0"), dry_run=False, allow_downgrade=False, force=False)
        assert not isinstance(done, Plan) and done.outcome is Outcome.SUCCEEDED
        live = east.ledger.live(ENV)
        assert live is not None and live.version == "1.1.0"
    assert west.env.region != east.env.region
    with pytest.raises(UsageError, match=r"1\.2\.0 was never released successfully in sandbox"):
        amis.promote(world.ctx(), Version("1.2.0"), to=WEST)
    with pytest.raises(UsageError, match=r"no AMI for 1\.1\.0"):  # not promoted yet: nothing to release there
        deploy.release(world.ctx(env=WEST), Version("1.1.0"), dry_run=False, allow_downgrade=False, force=False)

    image_id = amis.promote(world.ctx(), Version("1.1.0"), to=WEST)
    source, copy = east.cloud.image(live.image_id), west.cloud.image(image_id)
    assert source is not None and copy is not None
    assert copy.region == west.env.region and copy.image_id != source.image_id and copy.validated is True
    assert source.imds_support == copy.imds_support == "v2.0"
    for tag in ("kiln:version", "kiln:fingerprint", "kiln:git-sha", "kiln:base-ami", "kiln:built-at"):
        assert copy.tags[tag] == source.tags[tag], tag
    ec2_west = west.aws.client("ec2")
    mappings = ec2_west.describe_images(ImageIds=[image_id])["Images"][0]["BlockDeviceMappings"]
    snapshots = ec2_west.describe_snapshots(SnapshotIds=[m["Ebs"]["SnapshotId"] for m in mappings if "Ebs" in m])
    for snapshot in snapshots["Snapshots"]:  # its new snapshot says what it is too
        assert {t["Key"]: t["Value"] for t in snapshot["Tags"]}["kiln:version"] == "1.1.0", snapshot
    assert (world.state / "dataplane" / "layers" / live.image_id).exists()  # the copy shares the frozen rootfs
    assert amis.promote(world.ctx(), Version("1.1.0"), to=WEST) == image_id  # again: no second copy
    promoted = west.ledger.events("ami-promoted")
    assert promoted[0]["subject"] == image_id and promoted[0]["source"] == source.image_id

    record = deploy.release(world.ctx(env=WEST), Version("1.1.0"), dry_run=False, allow_downgrade=False,
                              force=False)
    assert not isinstance(record, Plan) and record.outcome is Outcome.SUCCEEDED
    assert record.image_id == image_id and record.fingerprint == source.fingerprint
    assert set(world.lb_versions(env=WEST)) == {"1.1.0"}
    assert set(world.lb_versions()) == {"1.1.0"}


def test_cleanup_deletes_exactly_what_nothing_needs_and_then_nothing(world: World) -> None:
    east, west = world.ctx(), world.ctx(env=WEST)
    app = world.cfg.app.name
    ec2 = east.aws.client("ec2")
    # Four older versions. Baking each for real takes minutes; what the cleanup reads is an AMI's
    # Kiln tags and who refers to it, so these are copies of 1.0.0's image (each with its own
    # snapshot) tagged as the older bakes they stand for, each with its own fingerprint.
    one = east.cloud.app_images(app, "1.0.0")[0]
    older: dict[str, str] = {}
    for n, version in enumerate(("0.6.0", "0.7.0", "0.8.0", "0.9.0")):
        image_id = ec2.copy_image(SourceImageId=one.image_id, SourceRegion=east.env.region, CopyImageTags=True,
                                  Name=f"{app}-{version}-older")["ImageId"]
        ec2.create_tags(Resources=[image_id], Tags=[{"Key": "kiln:version", "Value": version},
                                                    {"Key": "kiln:fingerprint", "Value": f"older{n}" * 8}])
        older[image_id] = version
    legacy_east = east.ledger.history(ENV, limit=200)[-1]  # release 0: the adopted scp-era image
    assert legacy_east.kind == "adopt"
    legacy_west = west.ledger.history(WEST, limit=200)[-1]
    everything = {i.image_id for c in (east, west) for i in c.cloud.app_images(app)}
    versions = {str(i.version) for c in (east, west) for i in c.cloud.app_images(app)}
    assert len(versions) == 8, versions

    foundations = {i.image_id for c in (east, west) for i in c.cloud.foundation_images(app)}
    assert len(foundations) == 2  # the first one, and the one baked on the newer base image

    plan = amis.cleanup(world.ctx(), keep=3, dry_run=True)
    assert {d.image.ami.image_id for d in plan} == everything | foundations  # both regions, every Kiln AMI
    doomed = {d.image.ami.image_id: d for d in plan if d.action.value == "delete"}
    assert set(doomed) == set(older) | {legacy_east.image_id}
    why = {d.image.ami.image_id: "; ".join(d.reasons) for d in plan}
    live_east, live_west = east.ledger.live(ENV), west.ledger.live(WEST)
    assert live_east is not None and live_west is not None
    assert "live in sandbox" in why[live_east.image_id] and "live in sandbox-west" in why[live_west.image_id]
    assert "previous in sandbox-west" in why[legacy_west.image_id]
    assert "one of the newest 3 versions" in why[one.image_id]
    # Both foundations stay: 1.0.0 (kept) was baked on the first, the second is the newest.
    assert f"foundation of kept {one.image_id} (1.0.0)" in why[str(one.foundation)]
    assert all("the newest foundation" in why[f] or "foundation of kept" in why[f] for f in foundations)
    assert {i.image_id for c in (east, west) for i in c.cloud.app_images(app)} == everything  # a dry run
    snapshots = [s for d in doomed.values() for s in d.image.snapshot_ids]
    assert len(snapshots) == len(doomed)

    done = amis.cleanup(world.ctx(), keep=3, dry_run=False)
    assert {d.image.ami.image_id for d in done if d.action.value == "delete"} == set(doomed)
    assert {i.image_id for c in (east, west) for i in c.cloud.app_images(app)} == everything - set(doomed)
    left = {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    assert not left & set(snapshots)
    assert all(s.startswith("snap-") for s in snapshots)
    assert not (world.state / "dataplane" / "layers" / legacy_east.image_id).exists()  # its rootfs is freed
    assert {e["subject"] for e in east.ledger.events("ami-deleted")} >= set(doomed)

    again = amis.cleanup(world.ctx(), keep=3, dry_run=False)
    assert [d for d in again if d.action.value == "delete"] == []
    assert set(world.lb_versions()) == {"1.1.0"} and set(world.lb_versions(env=WEST)) == {"1.1.0"}
