"""versions.toml -> frozen dataclasses.

Loading never stops at the first problem: every problem is collected with its `file:key`
and a fix, and raised together as one ConfigError. Pure: no AWS, no subprocess.

Why one module (~500 lines): the whole versions.toml schema, its defaults and every message a
refused key gets, in the one place a user's question leads to.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from release.errors import ConfigError, UsageError

DEFAULT_PATH = Path("versions.toml")

_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
_ACCOUNT = re.compile(r"^\d{12}$")
_AMI = re.compile(r"^ami-[0-9a-f]{8,17}$")
_HTTPS = re.compile(r"^https://\S+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
_ENV_NAME = re.compile(r"^[a-z][a-z0-9-]*$")

T = TypeVar("T")


@dataclass(frozen=True)
class AppConfig:
    name: str
    version: Version


@dataclass(frozen=True)
class BaseImageConfig:
    owners: tuple[str, ...]
    name: str
    ami: str | None  # a pinned AMI id wins over the owners/name filter
    ssh_username: str


@dataclass(frozen=True)
class ToolsConfig:
    packer: SpecifierSet
    ansible_core: SpecifierSet


@dataclass(frozen=True)
class SsmAgentPackage:
    """The AWS SSM agent's Debian package: a pinned version's URL and its SHA-256."""

    url: str
    sha256: str


@dataclass(frozen=True)
class BakeConfig:
    instance_type: str
    volume_size_gb: int
    deprecate_after_days: int | None = None  # EnableImageDeprecation this long after the bake
    # Once the smoke instance runs the right files and services: how long /health may take to say 200.
    smoke_ready_timeout: int = 45
    ssm_agent: SsmAgentPackage | None = None  # installed by the foundation, for access = "ssm"


@dataclass(frozen=True)
class RefreshPreferences:
    """Instance refresh preferences, named after AWS's Preferences (defaults are AWS's)."""

    min_healthy_percentage: int = 90
    max_healthy_percentage: int = 100
    instance_warmup: int | None = None
    checkpoint_percentages: tuple[int, ...] = ()
    checkpoint_delay: int = 3600
    bake_time: int = 0
    skip_matching: bool = False
    auto_rollback: bool = False

    def as_aws(self, alarms: tuple[str, ...]) -> dict[str, Any]:
        """The Preferences argument of StartInstanceRefresh."""
        prefs: dict[str, Any] = {
            "MinHealthyPercentage": self.min_healthy_percentage,
            "MaxHealthyPercentage": self.max_healthy_percentage,
            "SkipMatching": self.skip_matching,
            "AutoRollback": self.auto_rollback,
            "BakeTime": self.bake_time,
        }
        if self.instance_warmup is not None:
            prefs["InstanceWarmup"] = self.instance_warmup
        if self.checkpoint_percentages:
            prefs["CheckpointPercentages"] = list(self.checkpoint_percentages)
            prefs["CheckpointDelay"] = self.checkpoint_delay
        if self.auto_rollback and alarms:
            prefs["AlarmSpecification"] = {"Alarms": list(alarms)}
        return prefs


@dataclass(frozen=True)
class GateSettings:
    timeout: int = 1800  # seconds from refresh start until the gate gives up
    poll_interval: int = 10
    # How long a release's lock outlives its last heartbeat (wall-clock seconds). The driver renews
    # it at every step and every poll; when the process dies, `inv resume`/`inv rollback` may take
    # over once it has lapsed.
    lease: int = 120


@dataclass(frozen=True)
class SshSettings:
    user: str = "admin"
    bastion: str | None = None  # the bastion's host name or address...
    bastion_instance: str | None = None  # ...or the Name tag of the running instance that is the bastion
    bastion_user: str | None = None
    bastion_port: int = 22
    bastion_key: str | None = None  # private key for the bastion (default: the instance key, then ssh-agent)
    known_hosts: str | None = None  # path; default: ~/.ssh/known_hosts
    connect_timeout: int = 10


@dataclass(frozen=True)
class Environment:
    name: str
    region: str
    sandbox: bool
    account_id: str | None
    role_arn: str | None
    profile: str | None
    asg: str
    launch_template: str
    target_groups: tuple[str, ...]
    alarms: tuple[str, ...]
    secret_id: str
    ledger_table: str
    requires: tuple[str, ...]
    ami_regions: tuple[str, ...]
    ami_users: tuple[str, ...]
    kms_key_id: str | None
    refresh: RefreshPreferences
    gate: GateSettings
    ssh: SshSettings
    bake_role_arn: str | None = None  # the role `inv bake` (and Packer) act as; default: role_arn
    external_id: str | None = None  # ExternalId the role's trust policy demands, if any
    role_duration: int = 3600  # seconds per assumed-role session; botocore refreshes before expiry
    # A launch template that lets instances use IMDSv1: "warn" in the plan, or "block" the release.
    imdsv1: str = "block"
    # How Kiln reads things on instances (smoke test, the gate's /version and /health, the fleet
    # audit): "ssh" (through the bastion, strict host keys) or "ssm" (SSM Run Command: no inbound
    # port, no bastion, no host keys; the instance role must allow SSM).
    access: str = "ssh"


ACCESS_MODES = ("ssh", "ssm")


@dataclass(frozen=True)
class Config:
    path: Path
    default_environment: str
    app: AppConfig
    base_image: BaseImageConfig
    tools: ToolsConfig
    bake: BakeConfig
    environments: Mapping[str, Environment] = field(default_factory=dict)

    def environment(self, name: str) -> Environment:
        try:
            return self.environments[name]
        except KeyError:
            known = ", ".join(sorted(self.environments)) or "none"
            raise UsageError(
                f"no environment {name!r} (known: {known})",
                where=f"{self.path}:environments",
                hint=f"Pick one of those, or add [environments.{name}] to {self.path.name}.",
            ) from None

    @property
    def sandbox_environment(self) -> Environment | None:
        """The first environment with sandbox = true: where Kiln goes without AWS credentials."""
        return next((e for e in self.environments.values() if e.sandbox), None)


class _Reader:
    """Reads one TOML table, remembering every problem with its dotted key."""

    def __init__(self, table: Mapping[str, Any], key: str, problems: list[str], file: str) -> None:
        self.table = table
        self.key = key
        self.problems = problems
        self.file = file
        self.seen: set[str] = set()

    def where(self, name: str) -> str:
        return f"{self.file}:{self.key}.{name}" if self.key else f"{self.file}:{name}"

    def problem(self, name: str, text: str) -> None:
        self.problems.append(f"{self.where(name)}: {text}")

    def _get(self, name: str, kind: type[T], kind_name: str, default: T | None, required: bool) -> T | None:
        self.seen.add(name)
        if name not in self.table:
            if required:
                self.problem(name, f"missing; add {name} = <{kind_name}>")
            return default
        value = self.table[name]
        # bool is an int in Python; TOML keeps them apart, so do we.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.problem(name, f"must be {kind_name}, got {_toml_type(value)} {value!r}")
            return default
        return value

    def text(self, name: str, default: str | None = None, *, required: bool = False,
            pattern: re.Pattern[str] | None = None, example: str = "") -> str | None:
        value = self._get(name, str, "a string", default, required)
        if value is not None and pattern is not None and not pattern.match(value):
            hint = f" (e.g. {example!r})" if example else ""
            self.problem(name, f"{value!r} is not valid{hint}")
        return value

    def integer(self, name: str, default: int | None = None, *, required: bool = False,
            low: int | None = None, high: int | None = None) -> int | None:
        value = self._get(name, int, "an integer", default, required)
        out_of_range = value is not None and (
            (low is not None and value < low) or (high is not None and value > high))
        if out_of_range and name in self.table:
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            self.problem(name, f"{value} is out of range; use a value {bounds}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self._get(name, bool, "true or false", default, False)
        return default if value is None else value

    def texts(self, name: str, *, required: bool = False,
                 pattern: re.Pattern[str] | None = None) -> tuple[str, ...]:
        value = self._get(name, list, "a list of strings", None, required)
        if value is None:
            return ()
        if not all(isinstance(v, str) for v in value):
            self.problem(name, "must be a list of strings")
            return ()
        if pattern is not None:
            for item in value:
                if not pattern.match(item):
                    self.problem(name, f"{item!r} is not valid")
        return tuple(value)

    def integers(self, name: str) -> tuple[int, ...]:
        value = self._get(name, list, "a list of integers", None, False)
        if value is None:
            return ()
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            self.problem(name, "must be a list of integers")
            return ()
        return tuple(value)

    def version(self, name: str) -> Version | None:
        text = self.text(name, required=True)
        if text is None:
            return None
        try:
            return Version(text)
        except InvalidVersion:
            self.problem(name, f"{text!r} is not a PEP 440 version; use e.g. \"1.4.2\"")
            return None

    def specifier(self, name: str, default: str) -> SpecifierSet:
        text = self.text(name, default)
        try:
            return SpecifierSet(text or "")
        except InvalidSpecifier:
            self.problem(name, f"{text!r} is not a version specifier; use e.g. \">=1.6,<2\"")
            return SpecifierSet(default)

    @contextmanager
    def sub(self, name: str, *, required: bool = False) -> Iterator[_Reader]:
        """A nested table; yields an empty reader when absent (or malformed)."""
        value = self._get(name, dict, "a table", None, required)
        child = _Reader(value or {}, f"{self.key}.{name}" if self.key else name, self.problems, self.file)
        yield child
        child.finish()

    def finish(self) -> None:
        for name in self.table:
            if name not in self.seen:
                self.problem(name, "unknown key; remove it or check its spelling (see README)")


def _ssm_agent(bake: _Reader) -> SsmAgentPackage | None:
    if "ssm_agent" not in bake.table:  # optional, but both keys when present
        return None
    with bake.sub("ssm_agent") as r:
        url = r.text("url", required=True, pattern=_HTTPS,
                     example="https://s3.amazonaws.com/ec2-downloads-windows/SSMAgent/<version>/debian_amd64/"
                             "amazon-ssm-agent.deb")
        sha256 = r.text("sha256", required=True, pattern=_SHA256, example="64 hex digits: sha256sum of the .deb")
    return SsmAgentPackage(url, sha256) if url and sha256 else None


def _toml_type(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def load(path: Path = DEFAULT_PATH) -> Config:
    """Load and validate versions.toml. Raises ConfigError listing every problem."""
    file = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{file}: not found; run Kiln from the project root or pass --config"],
                          path=file) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([f"{file}: not valid TOML: {err}"], path=file) from None
    return parse(data, file=file)


def parse(data: Mapping[str, Any], *, file: str = "versions.toml") -> Config:
    problems: list[str] = []
    top = _Reader(data, "", problems, file)

    with top.sub("app", required=True) as r:
        app_name = r.text("name", required=True, pattern=_NAME, example="webapp")
        app_version = r.version("version")

    with top.sub("base_image", required=True) as r:
        owners = r.texts("owners")
        image_name = r.text("name")
        ami = r.text("ami", pattern=_AMI, example="ami-0123456789abcdef0")
        if ami is None and not (owners and image_name):
            problems.append(f"{file}:base_image: set either ami = \"ami-…\" or both owners and name")
        ssh_username = r.text("ssh_username", "admin")

    with top.sub("tools") as r:
        tools = ToolsConfig(packer=r.specifier("packer", ">=1.6.6"),
                            ansible_core=r.specifier("ansible_core", ">=2.19"))

    with top.sub("bake") as r:
        bake = BakeConfig(instance_type=r.text("instance_type", "t3.small") or "t3.small",
                          volume_size_gb=r.integer("volume_size_gb", 8, low=1, high=16384) or 8,
                          deprecate_after_days=r.integer("deprecate_after_days", low=1, high=3650),
                          smoke_ready_timeout=r.integer("smoke_ready_timeout", 45, low=5, high=3600) or 45,
                          ssm_agent=_ssm_agent(r))

    environments: dict[str, Environment] = {}
    with top.sub("environments", required=True) as envs:
        for env_name in list(envs.table):
            if not _ENV_NAME.match(env_name):
                envs.problem(env_name, "environment names are lower-case letters, digits and dashes")
            with envs.sub(env_name) as r:
                env = _environment(env_name, r, file, problems)
            if env is not None:
                environments[env_name] = env

    default_env = top.text("default_environment", "sandbox") or "sandbox"
    top.finish()

    if environments and default_env not in environments:
        problems.append(f"{file}:default_environment: {default_env!r} is not one of the environments "
                        f"({', '.join(sorted(environments))})")
    for env in environments.values():
        for needed in env.requires:
            other = environments.get(needed)
            if other is None:
                problems.append(f"{file}:environments.{env.name}.requires: no environment {needed!r}")
            elif other.sandbox != env.sandbox:
                problems.append(f"{file}:environments.{env.name}.requires: {needed!r} is "
                                f"{'a sandbox' if other.sandbox else 'an AWS'} environment and {env.name!r} is not; "
                                "an AMI can only be promoted within one cloud")
    groups: dict[tuple[str, str], str] = {}
    for env in environments.values():
        if env.sandbox:  # one local cloud: two environments in a region cannot share a group
            first = groups.setdefault((env.region, env.asg), env.name)
            if first != env.name:
                problems.append(f"{file}:environments.{env.name}.asg: {env.asg!r} in {env.region} is already "
                                f"sandbox environment {first!r}'s group; give each sandbox environment its own")

    if problems or app_name is None or app_version is None or ssh_username is None:
        raise ConfigError(problems or [f"{file}: incomplete"], path=file)
    return Config(
        path=Path(file),
        default_environment=default_env,
        app=AppConfig(name=app_name, version=app_version),
        base_image=BaseImageConfig(owners=owners, name=image_name or "", ami=ami,
                                   ssh_username=ssh_username),
        tools=tools,
        bake=bake,
        environments=environments,
    )


def _environment(name: str, r: _Reader, file: str, problems: list[str]) -> Environment | None:
    before = len(problems)
    sandbox = r.flag("sandbox", False)
    region = r.text("region", required=True, pattern=_REGION, example="eu-central-1")
    account_id = r.text("account_id", pattern=_ACCOUNT, example="123456789012")
    role_pattern = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$")
    role_arn = r.text("role_arn", pattern=role_pattern, example="arn:aws:iam::123456789012:role/kiln-deployer")
    bake_role_arn = r.text("bake_role_arn", pattern=role_pattern, example="arn:aws:iam::123456789012:role/kiln-bake")
    profile = r.text("profile")
    asg = r.text("asg", required=True, pattern=_NAME)
    launch_template = r.text("launch_template", required=True, pattern=_NAME)
    target_groups = r.texts("target_groups")
    alarms = r.texts("alarms")
    if len(alarms) > 10:
        r.problem("alarms", f"{len(alarms)} alarms; an instance refresh accepts at most 10")
    secret_id = r.text("secret_id", required=True)
    ledger_table = r.text("ledger_table", "kiln-ledger", pattern=_NAME)
    requires = r.texts("requires")
    ami_regions = r.texts("ami_regions", pattern=_REGION)
    ami_users = r.texts("ami_users", pattern=_ACCOUNT)
    kms_key_id = r.text("kms_key_id")
    external_id = r.text("external_id", pattern=re.compile(r"^[\w+=,.@:/-]{2,1224}$"), example="kiln-prod-7f3a")
    role_duration = r.integer("role_duration", 3600, low=900, high=43200) or 3600
    imdsv1 = r.text("imdsv1", "block") or "block"
    if imdsv1 not in ("block", "warn"):
        r.problem("imdsv1", f"{imdsv1!r} is not one of 'block', 'warn'")
    access = r.text("access", "ssh") or "ssh"
    if access not in ACCESS_MODES:
        r.problem("access", f"{access!r} is not one of 'ssh' (through the bastion) or 'ssm' (SSM Run Command)")
    if (external_id or "role_duration" in r.table) and not (role_arn or bake_role_arn):
        r.problem("external_id" if external_id else "role_duration", "only applies with role_arn; set role_arn too")
    for key, arn in (("role_arn", role_arn), ("bake_role_arn", bake_role_arn)):
        if arn and account_id and f"::{account_id}:" not in arn:
            r.problem(key, f"is in another account than account_id {account_id}")

    with r.sub("refresh") as p:
        refresh = _refresh(p)
    with r.sub("gate") as g:
        gate = GateSettings(timeout=g.integer("timeout", 1800, low=30) or 1800,
                            poll_interval=g.integer("poll_interval", 10, low=1, high=300) or 10,
                            lease=g.integer("lease", 120, low=5, high=3600) or 120)
        if gate.poll_interval >= gate.timeout:
            g.problem("poll_interval", "must be shorter than timeout")
        if gate.lease < 3 * gate.poll_interval:
            g.problem("lease", f"must be at least 3 × poll_interval ({3 * gate.poll_interval}) so that "
                               "heartbeats keep a live release's lock")
    with r.sub("ssh") as s:
        ssh = SshSettings(
            user=s.text("user", "admin") or "admin",
            bastion=s.text("bastion"),
            bastion_instance=s.text("bastion_instance"),
            bastion_user=s.text("bastion_user"),
            bastion_port=s.integer("bastion_port", 22, low=1, high=65535) or 22,
            bastion_key=s.text("bastion_key"),
            known_hosts=s.text("known_hosts"),
            connect_timeout=s.integer("connect_timeout", 10, low=1, high=300) or 10,
        )
        if ssh.bastion and ssh.bastion_instance:
            s.problem("bastion_instance", "set either bastion (an address) or bastion_instance (a Name tag), not both")
    if name in requires:
        r.problem("requires", f"{name!r} cannot require itself")
    if len(problems) > before or None in (region, asg, launch_template, secret_id):
        return None
    assert region and asg and launch_template and secret_id  # narrowed by the check above
    return Environment(
        name=name, region=region, sandbox=sandbox, account_id=account_id, role_arn=role_arn,
        profile=profile, asg=asg, launch_template=launch_template, target_groups=target_groups,
        alarms=alarms, secret_id=secret_id, ledger_table=ledger_table or "kiln-ledger",
        requires=requires, ami_regions=ami_regions, ami_users=ami_users, kms_key_id=kms_key_id,
        refresh=refresh, gate=gate, ssh=ssh, bake_role_arn=bake_role_arn, external_id=external_id,
        role_duration=role_duration, imdsv1=imdsv1, access=access,
    )


def _refresh(p: _Reader) -> RefreshPreferences:
    d = RefreshPreferences()
    prefs = RefreshPreferences(
        min_healthy_percentage=_or(p.integer("min_healthy_percentage", low=0, high=100),
                                   d.min_healthy_percentage),
        max_healthy_percentage=_or(p.integer("max_healthy_percentage", low=100, high=200),
                                   d.max_healthy_percentage),
        instance_warmup=p.integer("instance_warmup", low=0, high=3600),
        checkpoint_percentages=p.integers("checkpoint_percentages"),
        checkpoint_delay=_or(p.integer("checkpoint_delay", low=0, high=172800), d.checkpoint_delay),
        bake_time=_or(p.integer("bake_time", low=0, high=172800), d.bake_time),
        skip_matching=p.flag("skip_matching", d.skip_matching),
        auto_rollback=p.flag("auto_rollback", d.auto_rollback),
    )
    # AWS: MaxHealthyPercentage - MinHealthyPercentage must be at most 100.
    if prefs.max_healthy_percentage - prefs.min_healthy_percentage > 100:
        p.problem("max_healthy_percentage",
                  f"max ({prefs.max_healthy_percentage}) - min ({prefs.min_healthy_percentage}) healthy "
                  "percentage is more than 100; AWS rejects that — raise min or lower max")
    points = prefs.checkpoint_percentages
    if points and (list(points) != sorted(set(points)) or points[0] < 1 or points[-1] > 100):
        p.problem("checkpoint_percentages", "must be increasing whole percentages from 1 to 100")
    return prefs


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def select_environment(cfg: Config, name: str | None, *, aws_credentials: bool) -> tuple[Environment, str]:
    """Which environment a command works on, and a note saying why when it was not named.

    --env wins. Without it: the default environment when AWS credentials are configured,
    otherwise the sandbox — so a newcomer with no AWS account lands somewhere safe.
    """
    if name:
        return cfg.environment(name), ""
    if aws_credentials:
        env = cfg.environment(cfg.default_environment)
        return env, f"Using environment {env.name!r} (default_environment in {cfg.path.name})."
    sandbox = cfg.sandbox_environment
    if sandbox is None:
        raise UsageError(
            "no AWS credentials are configured and no environment has sandbox = true",
            where=f"{cfg.path}:environments",
            hint="Configure AWS credentials, pass --env, or add an environment with sandbox = true.")
    return sandbox, f"No AWS credentials configured: using the sandbox (environment {sandbox.name!r})."
