"""StartInstanceRefresh input, validated the way AWS validates it.

`Preferences` and `DesiredConfiguration` arrive exactly as boto3's `start_instance_refresh`
takes them (AWS names and nesting). `parse_preferences` checks them against the API reference
(RefreshPreferences, DesiredConfiguration, StartInstanceRefresh) and returns a frozen
`Preferences` with AWS's defaults filled in:

- MinHealthyPercentage 0–100, default 90 (no instance maintenance policy in the sandbox).
- MaxHealthyPercentage 100–200; needs MinHealthyPercentage; Max − Min ≤ 100. When omitted the
  group may not grow above its desired capacity (100 %), and AWS terminates and launches at the
  same time; when set, AWS launches before terminating if the two bounds leave no room.
- InstanceWarmup ≥ 0; when unset, the group's DefaultInstanceWarmup or else its
  HealthCheckGracePeriod (the sandbox has no DefaultInstanceWarmup, so the grace period).
- CheckpointPercentages: each 1–100, strictly ascending (so unique, last ≤ 100).
  CheckpointDelay 0–172800 s, only with CheckpointPercentages; default 3600 s.
- BakeTime 0–172800 s, default 0.
- SkipMatching default false, AutoRollback default false (AutoRollback needs a
  DesiredConfiguration).
- AlarmSpecification.Alarms: at most 10 names.
- ScaleInProtectedInstances Refresh | Ignore | Wait (default Wait);
  StandbyInstances Terminate | Ignore | Wait (default Wait).
- Strategy Rolling (the sandbox has no mixed instances policies, so no ReplaceRootVolume).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

MAX_DURATION = 172_800  # CheckpointDelay and BakeTime: two days
DEFAULT_MIN_HEALTHY = 90
DEFAULT_MAX_HEALTHY = 100
DEFAULT_CHECKPOINT_DELAY = 3600
MAX_ALARMS = 10

KNOWN_PREFERENCES = frozenset(
    {
        "MinHealthyPercentage",
        "MaxHealthyPercentage",
        "InstanceWarmup",
        "CheckpointPercentages",
        "CheckpointDelay",
        "SkipMatching",
        "AutoRollback",
        "ScaleInProtectedInstances",
        "StandbyInstances",
        "AlarmSpecification",
        "BakeTime",
    }
)
SCALE_IN_PROTECTED_CHOICES = ("Refresh", "Ignore", "Wait")
STANDBY_CHOICES = ("Terminate", "Ignore", "Wait")
STRATEGIES = ("Rolling", "ReplaceRootVolume")


class InvalidRequest(ValueError):
    """A StartInstanceRefresh parameter AWS would reject with ValidationError."""


@dataclass(frozen=True)
class Preferences:
    min_healthy: int
    max_healthy: int
    max_healthy_given: bool  # AWS launches before terminating only when MaxHealthy was set
    instance_warmup: int | None  # None: use the group's health check grace period
    checkpoints: tuple[int, ...]
    checkpoint_delay: int
    skip_matching: bool
    auto_rollback: bool
    scale_in_protected: str
    standby: str
    alarms: tuple[str, ...]
    bake_time: int

    def as_aws(self) -> dict[str, Any]:
        """The Preferences member of DescribeInstanceRefreshes: given values plus defaults,
        shaped like AWS's own example output."""
        out: dict[str, Any] = {"MinHealthyPercentage": self.min_healthy}
        if self.max_healthy_given:
            out["MaxHealthyPercentage"] = self.max_healthy
        if self.instance_warmup is not None:
            out["InstanceWarmup"] = self.instance_warmup
        if self.checkpoints:
            out["CheckpointPercentages"] = list(self.checkpoints)
            out["CheckpointDelay"] = self.checkpoint_delay
        out["SkipMatching"] = self.skip_matching
        out["AutoRollback"] = self.auto_rollback
        out["ScaleInProtectedInstances"] = self.scale_in_protected
        out["StandbyInstances"] = self.standby
        if self.alarms:
            out["AlarmSpecification"] = {"Alarms": list(self.alarms)}
        if self.bake_time:
            out["BakeTime"] = self.bake_time
        return out


@dataclass(frozen=True)
class TemplateRef:
    """DesiredConfiguration.LaunchTemplate as given: exactly one of id or name, and a version."""

    template: str  # the id (lt-…) or the name
    by_id: bool
    version: str  # "3", "$Latest" or "$Default" (AWS's default)

    def as_aws(self) -> dict[str, Any]:
        key = "LaunchTemplateId" if self.by_id else "LaunchTemplateName"
        return {"LaunchTemplate": {key: self.template, "Version": self.version}}


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise InvalidRequest(
            f"1 validation error detected: Value '{strategy}' at 'strategy' failed to satisfy "
            f"constraint: Member must satisfy enum value set: [{', '.join(STRATEGIES)}]"
        )
    if strategy == "ReplaceRootVolume":
        raise InvalidRequest(
            "The ReplaceRootVolume strategy requires a mixed instances policy, "
            "which the sandbox does not support. Use the Rolling strategy."
        )


def parse_desired_configuration(raw: Mapping[str, Any] | None) -> TemplateRef | None:
    if raw is None:
        return None
    if "MixedInstancesPolicy" in raw:
        raise InvalidRequest("The sandbox does not support a MixedInstancesPolicy in DesiredConfiguration.")
    unknown = set(raw) - {"LaunchTemplate"}
    if unknown:
        raise InvalidRequest(f"Unknown DesiredConfiguration parameter(s): {', '.join(sorted(unknown))}.")
    spec = raw.get("LaunchTemplate")
    if not spec:
        raise InvalidRequest("A DesiredConfiguration must specify either a LaunchTemplate or a MixedInstancesPolicy.")
    template_id, name = spec.get("LaunchTemplateId"), spec.get("LaunchTemplateName")
    if bool(template_id) == bool(name):
        raise InvalidRequest("Valid requests must contain either LaunchTemplateId or LaunchTemplateName, but not both.")
    version = str(spec.get("Version") or "$Default")
    return TemplateRef(template=str(template_id or name), by_id=bool(template_id), version=version)


def parse_preferences(raw: Mapping[str, Any] | None, *, has_desired_configuration: bool) -> Preferences:
    raw = raw or {}
    unknown = set(raw) - KNOWN_PREFERENCES
    if unknown:
        raise InvalidRequest(f"Unknown Preferences parameter(s): {', '.join(sorted(unknown))}.")

    min_healthy = _int(raw, "MinHealthyPercentage", DEFAULT_MIN_HEALTHY, low=0, high=100)
    max_healthy_given = "MaxHealthyPercentage" in raw
    max_healthy = _int(raw, "MaxHealthyPercentage", DEFAULT_MAX_HEALTHY, low=100, high=200)
    if max_healthy_given:
        if "MinHealthyPercentage" not in raw:
            raise InvalidRequest("You must specify MinHealthyPercentage when you specify MaxHealthyPercentage.")
        if max_healthy - min_healthy > 100:
            raise InvalidRequest(
                "The difference between MaxHealthyPercentage and MinHealthyPercentage cannot be greater than 100."
            )

    warmup = _int(raw, "InstanceWarmup", None, low=0, high=None)

    checkpoints = tuple(_int_list(raw, "CheckpointPercentages", low=1, high=100))
    if any(later <= earlier for earlier, later in pairwise(checkpoints)):
        raise InvalidRequest("CheckpointPercentages must be unique and in ascending order.")
    if "CheckpointDelay" in raw and not checkpoints:
        raise InvalidRequest("You must specify CheckpointPercentages when you specify CheckpointDelay.")
    delay = _int(raw, "CheckpointDelay", DEFAULT_CHECKPOINT_DELAY, low=0, high=MAX_DURATION)

    alarms = _alarms(raw.get("AlarmSpecification"))
    auto_rollback = _bool(raw, "AutoRollback")
    if auto_rollback and not has_desired_configuration:
        raise InvalidRequest("AutoRollback is only supported when a DesiredConfiguration is specified.")

    return Preferences(
        min_healthy=min_healthy,
        max_healthy=max_healthy,
        max_healthy_given=max_healthy_given,
        instance_warmup=warmup,
        checkpoints=checkpoints,
        checkpoint_delay=delay,
        skip_matching=_bool(raw, "SkipMatching"),
        auto_rollback=auto_rollback,
        scale_in_protected=_choice(raw, "ScaleInProtectedInstances", SCALE_IN_PROTECTED_CHOICES),
        standby=_choice(raw, "StandbyInstances", STANDBY_CHOICES),
        alarms=alarms,
        bake_time=_int(raw, "BakeTime", 0, low=0, high=MAX_DURATION),
    )


def _int(raw: Mapping[str, Any], key: str, default: int | None, *, low: int, high: int | None) -> Any:
    if key not in raw or raw[key] is None:
        return default
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{key} must be an integer, got {value!r}.")
    if value < low or (high is not None and value > high):
        bound = f"greater than or equal to {low}" if high is None else f"between {low} and {high}"
        raise InvalidRequest(
            f"1 validation error detected: Value '{value}' at 'preferences.{_camel(key)}' failed to "
            f"satisfy constraint: Member must have value {bound}"
        )
    return value


def _int_list(raw: Mapping[str, Any], key: str, *, low: int, high: int) -> list[int]:
    values = raw.get(key) or []
    if not isinstance(values, list | tuple):
        raise InvalidRequest(f"{key} must be a list of integers.")
    return [_int({key: v}, key, None, low=low, high=high) for v in values]


def _bool(raw: Mapping[str, Any], key: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise InvalidRequest(f"{key} must be true or false, got {value!r}.")
    return value


def _choice(raw: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = raw.get(key, "Wait")
    if value not in choices:
        raise InvalidRequest(
            f"1 validation error detected: Value '{value}' at 'preferences.{_camel(key)}' failed to "
            f"satisfy constraint: Member must satisfy enum value set: [{', '.join(choices)}]"
        )
    return str(value)


def _alarms(spec: Any) -> tuple[str, ...]:
    if spec is None:
        return ()
    alarms = spec.get("Alarms") if isinstance(spec, Mapping) else None
    if not isinstance(alarms, list | tuple) or not all(isinstance(a, str) and a for a in alarms):
        raise InvalidRequest("AlarmSpecification.Alarms must be a list of alarm names.")
    if len(alarms) > MAX_ALARMS:
        raise InvalidRequest(f"You can specify up to {MAX_ALARMS} alarms in AlarmSpecification.")
    return tuple(alarms)


def _camel(key: str) -> str:
    return key[0].lower() + key[1:]
