"""Which AMIs the cleanup keeps and which it deletes, and why. Pure.

A Kiln AMI (tagged kiln:app) is kept when any of these holds, and every reason is reported:
- it is one of the `keep` highest versions of the app (PEP 440 order);
- it is the live or the previous release of an environment (the ledger), so rollback works;
- a launch template version that an Auto Scaling group uses, that is the template's default or
  latest, or that the ledger may return to, launches it;
- a running or stopped instance was launched from it;
- an SSM parameter names it (e.g. an `aws:ec2:image` parameter);
- it is not available yet (pending): a bake or a copy is still under way.
Copies in other regions share the fingerprint, so a reason to keep one copy keeps them all.

A foundation (kiln:layer = foundation) is kept when an app image that is kept was baked on it
(its kiln:foundation tag), when it is the newest foundation of its region (the next app bake
builds on it), or when something above refers to it; otherwise it goes too.
Images without a kiln:app tag are not Kiln's and are never touched.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from packaging.version import Version

from release.model import AmiRef


class Action(StrEnum):
    KEEP = "keep"
    DELETE = "delete"


@dataclass(frozen=True)
class CatalogueImage:
    ami: AmiRef
    snapshot_ids: tuple[str, ...]


@dataclass(frozen=True)
class References:
    """Who still needs which AMI: image id -> human reasons."""

    releases: Mapping[str, tuple[str, ...]]  # "live in prod", "previous in dev"
    templates: Mapping[str, tuple[str, ...]]  # "web-prod v7 (used by web-prod)"
    instances: Mapping[str, tuple[str, ...]]  # instance ids
    parameters: Mapping[str, tuple[str, ...]]  # SSM parameter names


@dataclass(frozen=True)
class Decision:
    image: CatalogueImage
    action: Action
    reasons: tuple[str, ...]


def decide(images: Sequence[CatalogueImage], refs: References, *, keep: int) -> list[Decision]:
    """One decision per image, newest first."""
    if keep < 0:
        raise ValueError("keep must be >= 0")
    kiln = [i for i in images if i.ami.version is not None and not i.ami.is_foundation]
    newest_versions = _newest_versions(kiln, keep)
    reasons: dict[str, list[str]] = defaultdict(list)
    for image in kiln:
        ami = image.ami
        if ami.version in newest_versions:
            reasons[ami.image_id].append(f"one of the newest {keep} versions")
        reasons[ami.image_id] += _referenced(ami, refs)
    # A reason to keep one copy keeps every copy (same fingerprint, other regions).
    by_lineage: dict[str, list[str]] = defaultdict(list)
    for image in kiln:
        by_lineage[_lineage(image.ami)].append(image.ami.image_id)
    decisions = []
    for image in sorted(kiln, key=lambda i: i.ami.created_at, reverse=True):
        own = reasons.get(image.ami.image_id, [])
        shared = [f"copy of {other} ({r})" for other in by_lineage[_lineage(image.ami)]
                  if other != image.ami.image_id for r in reasons.get(other, [])
                  if not r.startswith("copy of")]
        kept_for = tuple(own + shared)
        if kept_for:
            decisions.append(Decision(image, Action.KEEP, kept_for))
        else:
            decisions.append(Decision(image, Action.DELETE, (f"{image.ami.version} is not among the {keep} highest "
                                                             "versions and nothing refers to it",)))
    return decisions + _foundations(images, refs, decisions)


def _foundations(images: Sequence[CatalogueImage], refs: References, apps: Sequence[Decision]) -> list[Decision]:
    built_on: dict[str, list[str]] = defaultdict(list)
    for d in apps:
        if d.action is Action.KEEP and d.image.ami.foundation:
            built_on[d.image.ami.foundation].append(f"{d.image.ami.image_id} ({d.image.ami.version})")
    foundations = sorted((i for i in images if i.ami.is_foundation), key=lambda i: i.ami.created_at, reverse=True)
    newest: dict[str, str] = {}
    for image in foundations:
        newest.setdefault(image.ami.region, image.ami.image_id)
    decisions = []
    for image in foundations:
        ami = image.ami
        reasons = [f"foundation of kept {app}" for app in built_on.get(ami.image_id, [])]
        if newest[ami.region] == ami.image_id:
            reasons.append(f"the newest foundation in {ami.region} (the next app bake builds on it)")
        reasons += _referenced(ami, refs)
        decisions.append(Decision(image, Action.KEEP, tuple(reasons)) if reasons else
                         Decision(image, Action.DELETE, ("a foundation no kept app image was baked on, and not the "
                                                         "newest",)))
    return decisions


def _referenced(ami: AmiRef, refs: References) -> list[str]:
    """Why an AMI must stay whatever its version or layer: it is still being made, or something
    (a release, a launch template, an instance, an SSM parameter) refers to it."""
    reasons = [] if ami.state == "available" else [f"state {ami.state}"]
    for label, table in (("", refs.releases), ("launch template ", refs.templates),
                         ("instance ", refs.instances), ("SSM parameter ", refs.parameters)):
        reasons += [f"{label}{why}" for why in table.get(ami.image_id, ())]
    return reasons


def _lineage(ami: AmiRef) -> str:
    return ami.fingerprint or ami.image_id


def _newest_versions(images: Sequence[CatalogueImage], keep: int) -> set[Version]:
    """The `keep` highest app versions (PEP 440 order), whatever their bake dates."""
    versions = {i.ami.version for i in images if i.ami.version is not None}
    return set(sorted(versions, reverse=True)[:keep])
