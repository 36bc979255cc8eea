"""The nouns of a release, as frozen dataclasses. Pure: no AWS, no I/O.

aws.py turns AWS responses into these; plan.py and gate.py only ever see these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from packaging.version import Version

# Tags Kiln writes on every AMI (and its snapshots) at bake time.
TAG_APP = "kiln:app"
TAG_VERSION = "kiln:version"
TAG_FINGERPRINT = "kiln:fingerprint"
TAG_GIT_SHA = "kiln:git-sha"  # the commit the image was baked from (Packer tags it)
TAG_VALIDATED = "kiln:validated"  # "true" | "false" after the smoke test
TAG_VALIDATION_REASON = "kiln:validation-reason"
TAG_DEPRECATED_REASON = "kiln:deprecated-reason"
TAG_FOUNDATION_DEPRECATED = "kiln:foundation-deprecated"  # on an app image: why its foundation was
TAG_LAYER = "kiln:layer"  # "foundation" | "app" (images baked before layers have none: app images)
TAG_FOUNDATION = "kiln:foundation"  # on an app image: the foundation AMI it was baked on
LAYER_FOUNDATION = "foundation"


@dataclass(frozen=True)
class AmiRef:
    image_id: str
    name: str
    region: str
    state: str  # available | pending | failed | deregistered ...
    created_at: datetime
    version: Version | None
    fingerprint: str | None
    validated: bool | None  # None: not smoke-tested yet
    deprecation_time: datetime | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    root_device_name: str | None = None
    imds_support: str | None = None  # "v2.0": instances from it require IMDSv2 tokens by default

    @property
    def is_foundation(self) -> bool:
        return self.tags.get(TAG_LAYER) == LAYER_FOUNDATION

    @property
    def foundation(self) -> str | None:
        """The foundation AMI an app image was baked on (None for a foundation, or before layers)."""
        return self.tags.get(TAG_FOUNDATION)

    def deprecated(self, now: datetime) -> bool:
        """Past its deprecation time, or deprecated by hand (`inv ami.deprecate` tags the reason at
        once; EC2's deprecation time, which cannot be in the past, follows within a minute)."""
        by_time = self.deprecation_time is not None and self.deprecation_time <= now
        return by_time or TAG_DEPRECATED_REASON in self.tags


@dataclass(frozen=True)
class TemplateVersion:
    template_id: str
    template_name: str
    number: int
    image_id: str
    is_default: bool
    created_at: datetime | None = None
    description: str = ""
    # MetadataOptions.HttpTokens: "required" (IMDSv2 only), "optional", or None (the AMI decides).
    http_tokens: str | None = None


class Lifecycle(StrEnum):
    PENDING = "Pending"
    IN_SERVICE = "InService"
    TERMINATING = "Terminating"
    STANDBY = "Standby"
    OTHER = "Other"


@dataclass(frozen=True)
class InstanceState:
    instance_id: str
    image_id: str
    launch_template_version: str | None
    lifecycle: str  # AWS LifecycleState verbatim
    asg_health: str  # "Healthy" | "Unhealthy"
    target_health: str | None  # worst elbv2 state across target groups; None without any
    private_ip: str | None = None
    served_version: str | None = None  # what /version on the instance says; None: not probed
    launched_at: datetime | None = None
    health_ok: bool | None = None  # /health on the instance answered 200; None: no answer yet
    health_detail: str = ""


@dataclass(frozen=True)
class GroupState:
    name: str
    min_size: int
    max_size: int
    desired_capacity: int
    launch_template_id: str | None
    launch_template_name: str | None
    launch_template_version: str | None  # as set on the group: "7", "$Latest", "$Default"
    instances: tuple[InstanceState, ...]
    health_check_grace_period: int = 0  # seconds (AWS's), before ELB health counts for a new instance


@dataclass(frozen=True)
class RefreshState:
    refresh_id: str
    status: str  # AWS status verbatim; gate.py maps it, unknown values are errors
    status_reason: str | None
    percentage_complete: int
    instances_to_update: int
    started_at: datetime | None = None
    ended_at: datetime | None = None
    desired_version: str | None = None  # the launch template version of its DesiredConfiguration


@dataclass(frozen=True)
class Snapshot:
    """Everything the gate looks at, observed at one moment."""

    at: datetime
    refresh: RefreshState | None
    group: GroupState
    alarms: Mapping[str, str]  # name -> OK | ALARM | INSUFFICIENT_DATA
    # Versions seen in a burst of requests through the load balancer: version -> count.
    # Empty when not sampled (yet); None when the environment has no load balancer to sample.
    served_through_lb: Mapping[str, int] | None = field(default_factory=dict)
    # Instances on the expected image that were in service earlier in this gate and are now gone
    # or terminating: the group took them out (unhealthy, or replaced by someone else).
    vanished: tuple[str, ...] = ()


class VerdictKind(StrEnum):
    PASS = "pass"
    WAIT = "wait"
    FAIL = "fail"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: not decided yet
    detail: str = ""


@dataclass(frozen=True)
class Verdict:
    kind: VerdictKind
    reason: str
    checks: tuple[Check, ...] = ()

    @property
    def done(self) -> bool:
        return self.kind is not VerdictKind.WAIT


@dataclass(frozen=True)
class CommandInvocation:
    """One SSM Run Command invocation on one instance, as GetCommandInvocation reports it."""

    status: str  # Pending | InProgress | Delayed | Success | Cancelled | TimedOut | Failed | Cancelling
    details: str  # StatusDetails: e.g. Undeliverable, DeliveryTimedOut, ExecutionTimedOut, Terminated
    exit_code: int  # ResponseCode; -1 while it has none
    stdout: str  # StandardOutputContent: AWS keeps the first 24,000 characters
    stderr: str  # StandardErrorContent: the first 8,000 characters

    @property
    def finished(self) -> bool:
        return self.status in ("Success", "Cancelled", "TimedOut", "Failed")


@dataclass(frozen=True)
class LiveRelease:
    """What the ledger says is live in an environment."""

    version: str
    image_id: str
    fingerprint: str | None
    template_version: int | None


@dataclass(frozen=True)
class Lock:
    """An environment's release lock: a lease held by one Kiln process, renewed by its heartbeats."""

    holder: str  # the driving process's unique id: its fencing token
    acquired_at: datetime
    expires_at: datetime  # the lease: past this, the holder is presumed dead
    who: str = ""  # user@host pid N, for people
    release_id: str | None = None
    kind: str | None = None
    version: str | None = None
    phase: str | None = None

    def live(self, now: datetime) -> bool:
        return self.expires_at > now

    def describe(self, now: datetime) -> str:
        what = (f"{self.kind} {self.version} ({self.release_id}), phase {self.phase}" if self.release_id
                else "no release")
        left = (self.expires_at - now).total_seconds()
        lease = f"lease expires in {left:.0f} s" if left > 0 else f"lease lapsed {-left:.0f} s ago"
        return f"{self.who or self.holder}: {what}; {lease} ({self.expires_at:%H:%M:%S} UTC)"
