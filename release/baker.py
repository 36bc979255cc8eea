"""`inv bake`: fingerprint the inputs, skip when an AMI with that fingerprint exists, otherwise
build the wheelhouse, run Packer (amazon-ebs + Ansible), read the manifest, tag the AMI with what
went into it, and smoke-test it before anything may release it.

Images come in two layers (see fingerprint.py): a *foundation* (the base image + OS packages,
nginx, the boot script, Python's venv support and a wheelhouse of the app's locked dependencies)
and the *app* image baked on the newest validated foundation with the right fingerprint, adding
only the app's wheel, static files, build info, units and manifest. A bake bakes the foundation
first when its fingerprint has no image, then the app; an app-only change bakes only the app.

Two bakes of the same version with different inputs are two AMIs with the same `kiln:version`
and different `kiln:fingerprint`; `inv release --version` takes the newest validated one
(see plan.choose_ami).

Why one module (~450 lines): the bake plan and its run share the layers' fingerprints and
Packer's variables; the two layers are one loop.
"""

from __future__ import annotations

import fcntl
import getpass
import os
import re
import socket
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from packaging.version import Version

from release import fingerprint as fp
from release import packer
from release.aws import Aws
from release.clock import Clock
from release.cloud import Cloud
from release.config import Config, Environment
from release.errors import BakeError
from release.model import TAG_VALIDATED, TAG_VALIDATION_REASON, AmiRef, Check

TAG_INPUTS = "kiln:inputs"


@dataclass(frozen=True)
class FoundationPlan:
    fingerprint: fp.Fingerprint
    existing: AmiRef | None  # the newest validated foundation with this fingerprint: nothing to bake
    changed: tuple[str, ...]  # inputs that differ from the newest foundation
    variables: dict[str, object]  # Packer's; empty when it is not to be baked

    @property
    def needed(self) -> bool:
        return self.existing is None


@dataclass(frozen=True)
class BakePlan:
    version: str
    fingerprint: fp.Fingerprint
    base_image: AmiRef
    existing: AmiRef | None  # an available AMI with this fingerprint: nothing to bake
    changed: tuple[str, ...]  # inputs that differ from the newest bake of this app
    variables: dict[str, object]  # Packer's; empty when nothing is to be baked
    command: tuple[str, ...]
    foundation: FoundationPlan

    @property
    def needed(self) -> bool:
        return self.existing is None


@dataclass(frozen=True)
class BakeResult:
    plan: BakePlan
    image_id: str
    copies: dict[str, str]  # region -> AMI id, the home region included
    seconds: float
    foundation_id: str = ""  # the foundation the app image was baked on
    foundation_seconds: float = 0.0  # 0 when the foundation existed already
    smoke: tuple[Check, ...] = field(default=())

    @property
    def validated(self) -> bool:
        return bool(self.smoke) and all(c.ok for c in self.smoke)


class Baker:
    """`bastion_key`: the key for the environment's bastion when its [ssh] settings name none (the
    sandbox's key); without either, Packer and Ansible log in to the bastion with ssh-agent."""

    def __init__(self, cfg: Config, env: Environment, aws: Aws, project: Path, clock: Clock,
                 on_step: Callable[[str], None], on_line: Callable[[str], None],
                 bastion_key: Path | None = None) -> None:
        self.cfg = cfg
        self.env = env
        self.aws = aws
        self.cloud = Cloud(aws)
        self.project = project
        self.clock = clock
        self.on_step = on_step
        self.on_line = on_line
        self.bastion_key = bastion_key
        self.work = project / ".kiln" / "bake"

    # ------------------------------------------------------------------ plan (reads only)
    def plan(self, *, force: bool = False) -> BakePlan:
        tools = self._check_tools()
        base = self._base_image()
        cfg = self.cfg
        bake_keys = [cfg.bake.instance_type, str(cfg.bake.volume_size_gb), cfg.base_image.ssh_username]
        agent_keys = [str(v) for v in self._agent_variables("foundation").values()]
        below = fp.foundation(self.project, base_ami=base.image_id, dependencies=app_dependencies(self.project),
                              config_keys=[*bake_keys, *agent_keys], tools=tools)
        above = fp.app(self.project, foundation=below, config_keys=[cfg.app.name, str(cfg.app.version), *bake_keys],
                       tools=tools)
        foundations = self.cloud.foundation_images(cfg.app.name)
        f_existing, f_changed = self._existing(foundations, below)
        existing, changed = self._existing(self.cloud.app_images(cfg.app.name), above)
        if force:
            existing = None
        # Packer's variables look up the bastion and the fleet's network: only a bake needs them, and
        # both layers share them.
        shared = self._variables() if f_existing is None or existing is None else {}
        f_variables = self._layer_variables(shared, "foundation", below, base) if f_existing is None else {}
        variables = {} if existing is not None else {
            **self._layer_variables(shared, "app", above, f_existing or base), "base_ami": base.image_id}
        command = packer.command_line(self.project / "packer", self.work / "bake.pkrvars.json")
        return BakePlan(version=str(cfg.app.version), fingerprint=above, base_image=base, existing=existing,
                        changed=changed, variables=variables, command=tuple(command),
                        foundation=FoundationPlan(below, f_existing, f_changed, f_variables))

    def _existing(self, images: list[AmiRef], print_: fp.Fingerprint) -> tuple[AmiRef | None, tuple[str, ...]]:
        """The newest usable image with this fingerprint, and why a bake is needed when there is none
        (the inputs that differ from the newest image of the layer)."""
        same = [i for i in images if i.fingerprint == print_.value and i.state == "available"
                and i.validated is not False]
        # A deprecated AMI has reached its end of life (deprecate_after_days, ami.deprecate): bake anew.
        existing = next((i for i in same if not i.deprecated(self.clock.now())), None)
        newest = images[0] if images else None
        changed = tuple(print_.changed_since(newest.tags.get(TAG_INPUTS) if newest else None))
        if same and existing is None:
            changed += (f"{same[0].image_id} (these inputs) is deprecated",)
        return existing, changed

    def _check_tools(self) -> list[str]:
        tools = self.cfg.tools
        cache = self.work.parent / "tools.json"  # each binary's answer, until it changes (toolcache)
        packer_version = packer.check_tool("packer", ["version"], packer.parse_version, tools.packer,
                                           config_key="tools.packer", cache=cache)
        ansible_version = packer.check_tool("ansible-playbook", ["--version"], _ansible_version,
                                            tools.ansible_core, config_key="tools.ansible_core", cache=cache)
        return [f"packer {packer_version}", f"ansible-core {ansible_version}"]

    def _base_image(self) -> AmiRef:
        spec = self.cfg.base_image
        image = self.cloud.base_image(owners=spec.owners, name=spec.name, pinned=spec.ami)
        if image is None:
            what = spec.ami or f"{spec.name!r} owned by {', '.join(spec.owners)}"
            hint = ("The sandbox registers its base image at `inv sandbox.up`; is it running?"
                    if self.aws.target.is_sandbox else "Check [base_image] in versions.toml.")
            raise BakeError(f"base image {what} not found in {self.env.region}", hint=hint)
        return image

    def _layer_variables(self, shared: dict[str, object], layer: str, print_: fp.Fingerprint,
                         source: AmiRef) -> dict[str, object]:
        """Packer's variables for one layer, built on `source` (the base image for the foundation; for
        the app its foundation, or the base image as a stand-in until the foundation is baked)."""
        env = self.env
        return {
            **shared,
            "layer": layer,
            "fingerprint": print_.value,
            "wheelhouse": str(self.work / f"wheelhouse-{layer}.tar"),  # one archive: one transfer
            "manifest_path": str(self.work / f"manifest-{layer}.json"),
            "source_ami": source.image_id,  # resolved once, so the fingerprint names exactly what is built on
            # The launch mapping must name the source image's real root device to encrypt it.
            "root_device_name": source.root_device_name or "/dev/xvda",
            # Only the app image is copied and shared; its foundation stays home.
            "ami_regions": list(env.ami_regions) if layer == "app" else [],
            "ami_users": list(env.ami_users) if layer == "app" else [],
            **self._agent_variables(layer),
        }

    def _agent_variables(self, layer: str) -> dict[str, object]:
        """The foundation installs the SSM agent when [bake.ssm_agent] names its package."""
        agent = self.cfg.bake.ssm_agent
        if layer != "foundation" or agent is None:
            return {}
        return {"ssm_agent_url": agent.url, "ssm_agent_sha256": agent.sha256}

    def _variables(self) -> dict[str, object]:
        """Packer's variables both layers share: provenance, the build instance, credentials, the way in."""
        cfg, env = self.cfg, self.env
        variables: dict[str, object] = {
            "app_name": cfg.app.name,
            "app_version": str(cfg.app.version),
            "git_sha": _git_sha(self.project),
            "built_at": self.clock.now().strftime("%Y-%m-%dT%H:%M:%SZ"),
            "builder": os.environ.get("KILN_BUILDER") or f"{getpass.getuser()}@{socket.gethostname()}",
            "region": env.region,
            "instance_type": cfg.bake.instance_type,
            "root_volume_size": cfg.bake.volume_size_gb,
            "ssh_username": cfg.base_image.ssh_username,
        }
        if env.kms_key_id:
            variables["kms_key_id"] = env.kms_key_id
        role = self.aws.role_for_tools()
        if role:
            # Packer assumes the role itself (see aws.Aws.source_credentials), refreshing it as it goes.
            variables.update(assume_role_arn=role, assume_role_session_name=self.aws.target.session_name,
                             assume_role_external_id=self.aws.target.external_id or "",
                             assume_role_duration_seconds=self.aws.target.role_duration)
        if self.aws.target.is_sandbox:
            # The sandbox reports each instance's loopback address as its private IP.
            variables["ec2_endpoint"] = self.aws.target.endpoint_url
            variables["ssh_interface"] = "private_ip"
        variables.update(self._bastion_variables())
        return variables

    def _bastion_variables(self) -> dict[str, object]:
        """With a bastion in the environment's [ssh] settings, the build instance is where the fleet
        is — a subnet of the Auto Scaling group, the launch template's security groups, which admit
        SSH from the bastion — and Packer and Ansible reach its private address through the bastion,
        as the release's checks reach the fleet's instances."""
        ssh = self.env.ssh
        if not (ssh.bastion or ssh.bastion_instance):
            return {}
        address = ssh.bastion or self.cloud.running_instance_named(ssh.bastion_instance or "")[1]
        variables: dict[str, object] = {
            "ssh_interface": "private_ip",
            "ssh_bastion_host": address,
            "ssh_bastion_port": ssh.bastion_port,
            "ssh_bastion_username": ssh.bastion_user or ssh.user,
            # Written by bake() with the bastion's host key, once Kiln has verified it.
            "ssh_bastion_known_hosts": str(self.work / "bastion_known_hosts"),
        }
        key = Path(ssh.bastion_key).expanduser() if ssh.bastion_key else self.bastion_key
        if key is not None:
            variables["ssh_bastion_private_key_file"] = str(key)
        elif os.environ.get("SSH_AUTH_SOCK"):
            variables["ssh_bastion_agent_auth"] = True
        else:
            raise BakeError(f"no key to log in to the bastion {address} with",
                            where=f"[environments.{self.env.name}.ssh]",
                            hint="Name the bastion's private key with bastion_key, or start ssh-agent and add it "
                                 "(ssh-add).")
        subnets, groups = self.cloud.fleet_network(self.env.launch_template, self.env.asg)
        if subnets:
            variables["subnet_id"] = subnets[0]
        if groups:
            variables["security_group_ids"] = list(groups)
        return variables

    # ------------------------------------------------------------------ bake (changes things)
    def bake(self, plan: BakePlan) -> BakeResult:
        with self._one_bake_at_a_time():
            return self._bake(plan)

    @contextmanager
    def _one_bake_at_a_time(self) -> Iterator[None]:
        """The work directory (wheelhouse, variables, manifest, log) serves one bake at a time: a second
        bake in the same checkout would overwrite the first one's files under it."""
        self.work.mkdir(parents=True, exist_ok=True)
        with (self.work / ".lock").open("a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                holder = lock.read().strip() or "another process"
                raise BakeError(f"another bake is running in this checkout ({holder})", where=str(self.work),
                                hint="Wait for it to finish, or bake from another checkout.") from None
            lock.truncate(0)
            lock.write(f"pid {os.getpid()}, since {self.clock.now():%Y-%m-%d %H:%M:%S}")
            lock.flush()
            yield

    def _bake(self, plan: BakePlan) -> BakeResult:
        started = self.clock.now()
        layer_vars = plan.foundation.variables or plan.variables
        if layer_vars.get("ssh_bastion_host"):
            self.on_step(f"logging in to the bastion {layer_vars['ssh_bastion_host']}")
            self._trust_bastion(layer_vars)
        foundation = plan.foundation.existing
        foundation_seconds = 0.0
        if foundation is None:
            self.on_step("building the foundation's wheelhouse (the app's dependencies)")
            self._dependency_wheelhouse(Path(str(plan.foundation.variables["wheelhouse"])))
            self.on_step(f"baking the foundation {plan.foundation.fingerprint.value}")
            copies = self._packer(plan.command, plan.foundation.variables, plan.foundation.fingerprint,
                                  f"foundation of {plan.version}")
            foundation_id = copies[self.env.region]
            # Packer's ansible run is its validation (the playbook checks what it installed).
            self.cloud.tag_image(foundation_id, {TAG_VALIDATED: "true", TAG_VALIDATION_REASON: "packer build passed"})
            foundation_seconds = (self.clock.now() - started).total_seconds()
        else:
            foundation_id = foundation.image_id
        variables = dict(plan.variables, source_ami=foundation_id)
        self.on_step("building the app's wheel")
        self._app_wheelhouse(Path(str(variables["wheelhouse"])))
        self.on_step(f"baking {plan.version} on the foundation {foundation_id}")
        copies = self._packer(plan.command, variables, plan.fingerprint, f"bake {plan.version}")
        seconds = (self.clock.now() - started).total_seconds()
        return BakeResult(plan=plan, image_id=copies[self.env.region], copies=copies, seconds=seconds,
                          foundation_id=foundation_id, foundation_seconds=foundation_seconds)

    def _packer(self, command: tuple[str, ...], variables: dict[str, object], print_: fp.Fingerprint,
                where: str) -> dict[str, str]:
        """One Packer build; the AMI ids by region (the home region included), tagged with their inputs,
        IMDSv2-only, and deprecated in time when [bake] deprecate_after_days says so."""
        started = self.clock.now()
        var_file = self.work / "bake.pkrvars.json"
        var_file.write_text(packer.var_file_text(variables))
        manifest = Path(str(variables["manifest_path"]))
        manifest.unlink(missing_ok=True)
        self.on_step("packer build")
        lines: list[str] = []
        log_path = self.work / f"packer-{variables['layer']}.log"
        log = log_path.open("w")

        def line(text: str) -> None:
            lines.append(text)
            log.write(text + "\n")
            step = packer.step_of(text)
            if step:
                self.on_step(step)
            self.on_line(text)

        with log:
            rc = packer.run(command, env=self._packer_env(), cwd=self.project, on_line=line)
        if rc != 0:
            self._clean_up_build_instances(print_)
            task = packer.failing_task(lines)
            detail = f" at Ansible task [{task}]" if task else ""
            login = self._ssh_hint(variables.get("ssh_bastion_host"), lines)
            raise BakeError(f"packer build failed (exit {rc}){detail}: {packer.first_error(lines)[:300]}",
                            where=where,
                            hint=f"Nothing was registered. {login}Full output: {log_path}. Fix the cause and run "
                                 "`inv bake` again.")
        artifacts = packer.parse_manifest(manifest.read_text(), where=str(manifest))
        copies = {a.region: a.image_id for a in artifacts}
        copies.setdefault(self.env.region, artifacts[0].image_id)
        self.cloud.tag_image(copies[self.env.region], {TAG_INPUTS: print_.as_tag()})
        # What Packer 1.6.6 cannot say in the template (docs/image.md): IMDSv2-only AMIs, and an
        # end of life when [bake] deprecate_after_days asks for one.
        for region, copy_id in copies.items():
            self.cloud.require_imds_v2(copy_id, region)
            if self.cfg.bake.deprecate_after_days:
                self.cloud.deprecate_image(copy_id, started + timedelta(days=self.cfg.bake.deprecate_after_days),
                                           region)
        return copies

    def record_validation(self, image_id: str, checks: tuple[Check, ...]) -> None:
        ok = bool(checks) and all(c.ok for c in checks)
        reason = "; ".join(f"{c.name}: {c.detail}" for c in checks if not c.ok)[:250]
        self.cloud.tag_image(image_id, {TAG_VALIDATED: "true" if ok else "false",
                                        TAG_VALIDATION_REASON: "passed" if ok else reason or "no checks ran"})

    def _dependency_wheelhouse(self, target: Path) -> None:
        """The foundation's: the app's declared dependencies and the boot script's boto3, with
        everything they pull in, pinned by constraints.txt."""
        self._pip_wheel(target, ["-c", str(self.project / "constraints.txt"), *app_dependencies(self.project),
                                 "boto3"])

    def _app_wheelhouse(self, target: Path) -> None:
        """The app layer's: the app's own wheel only (its dependencies are in the foundation)."""
        with tempfile.TemporaryDirectory(prefix="kiln-app-") as scratch:
            # Build from a copy so the source tree never gets build/ or egg-info litter.
            subprocess.run(["cp", "-a", str(self.project / "app"), scratch], check=True)
            self._pip_wheel(target, ["--no-deps", str(Path(scratch) / "app")])

    def _pip_wheel(self, archive: Path, args: list[str]) -> None:
        """Build wheels with pip, into the tar archive the playbook unpacks on the build instance."""
        with tempfile.TemporaryDirectory(prefix="kiln-wheels-") as target:
            cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "-w", target,
                   *args]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise BakeError(f"building the wheelhouse failed: {out.stderr.strip()[-400:]}",
                                where="app/", hint="Check app/pyproject.toml and constraints.txt.")
            archive.parent.mkdir(parents=True, exist_ok=True)
            with tarfile.open(archive, "w") as tar:
                for wheel in sorted(Path(target).glob("*.whl")):
                    tar.add(wheel, arcname=wheel.name)

    def _packer_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"  # ansible-playbook from Kiln's venv
        env["PACKER_NO_COLOR"] = "1"
        env["CHECKPOINT_DISABLE"] = "1"  # Packer must not phone home for version checks
        env["ANSIBLE_HOST_KEY_CHECKING"] = "False"  # Packer's throwaway build instance, key made per build
        env.update(self.aws.source_credentials())
        env["AWS_REGION"] = env["AWS_DEFAULT_REGION"] = self.env.region
        return env

    def _trust_bastion(self, variables: dict[str, object]) -> None:
        """Log in to the bastion as every Kiln connection does — its host key verified strictly, from
        known_hosts or the bastion instance's console output — and write the key it proved to the
        known_hosts file Ansible's jump checks (Packer's own connection checks none). A bastion Kiln
        cannot log in to fails the bake here, before any build instance is launched."""
        from release.hostkeys import host_label
        from release.ssh import Ssh  # paramiko: only when there is a bastion to trust

        with Ssh(self.env.ssh, use_agent=True, console_output=self.cloud.console_output,
                 locate_bastion=self.cloud.running_instance_named, bastion_key=self.bastion_key) as ssh:
            bastion = ssh.bastion()
            assert bastion is not None  # the settings name a bastion
            key = bastion.host_key
        host = host_label(str(variables["ssh_bastion_host"]), int(str(variables["ssh_bastion_port"])))
        Path(str(variables["ssh_bastion_known_hosts"])).write_text(f"{host} {key.get_name()} {key.get_base64()}\n")

    def _ssh_hint(self, bastion: object, lines: list[str]) -> str:
        """What to check when Packer or Ansible could not log in to the build instance."""
        if not packer.ssh_failed(lines):
            return ""
        if bastion:
            return (f"Packer could not log in to the build instance through the bastion {bastion}: check that the "
                    f"security groups of launch template {self.env.launch_template} admit SSH from the bastion. ")
        return ("Packer could not log in to the build instance over SSH. If it is reachable only through a bastion, "
                f"name the bastion in [environments.{self.env.name}.ssh] (bastion or bastion_instance). ")

    def _clean_up_build_instances(self, print_: fp.Fingerprint) -> None:
        """Packer terminates its build instance on failure; make sure nothing was left behind."""
        leftovers = self.cloud.instances_tagged({"kiln:fingerprint": print_.value},
                                                states=("pending", "running", "stopping", "stopped"))
        for instance_id in leftovers:
            self.on_step(f"terminating leftover build instance {instance_id}")
            self.cloud.terminate(instance_id)


def _ansible_version(output: str) -> Version | None:
    # "ansible-playbook [core 2.19.14]"
    match = re.search(r"core (\d+\.\d+\.\d+)", output)
    return Version(match.group(1)) if match else None


def _git_sha(project: Path) -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=project, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "app", "ansible", "packer", "versions.toml"],
                               cwd=project, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def app_dependencies(project: Path) -> list[str]:
    """The app's declared dependencies (app/pyproject.toml): what the foundation's wheelhouse holds."""
    path = project / "app" / "pyproject.toml"
    try:
        return [str(d) for d in tomllib.loads(path.read_text())["project"].get("dependencies", [])]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as err:
        raise BakeError(f"cannot read the app's dependencies: {err}", where=str(path),
                        hint="app/pyproject.toml needs a [project] table with a dependencies list.") from None
