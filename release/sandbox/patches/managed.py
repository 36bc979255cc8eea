"""Which instances Systems Manager manages: EC2 state, the instance profile's role, the agent.

On AWS an instance is a managed node once its SSM agent has registered (ssm:UpdateInstanceInformation,
with the credentials of the instance profile's role). The sandbox has no agent process; it decides
the same question from the same inputs, read from moto's state at the moment it is asked:
- the instance exists in the region and is not shutting-down or terminated;
- its instance profile (associated at launch, directly or through its launch template, or later
  with AssociateIamInstanceProfile) has a role whose policies allow `ssm:UpdateInstanceInformation`
  on the instance: the AWS managed policy `AmazonSSMManagedInstanceCore` attached, or any inline or
  attached policy with such a statement. IAM's evaluation logic: an explicit Deny wins, an Allow is
  needed; Action/NotAction and Resource/NotResource with `*`/`?` wildcards are honoured; statement
  Conditions are treated as met, and permissions boundaries are not applied (the sandbox does not
  model IAM authorisation anywhere else either);
- and, for delivery, its agent is online: with a data plane, the machine has booted (every unit
  started) and its init still runs. Without one there is no agent at all.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from release.sandbox.engines.ssm import Node

log = logging.getLogger("kiln.sandbox.ssm")

REGISTER_ACTION = "ssm:UpdateInstanceInformation"
SSM_CORE_POLICY_ARN = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _matches(patterns: Iterable[str], value: str, *, case_sensitive: bool) -> bool:
    if case_sensitive:
        return any(fnmatch.fnmatchcase(value, p) for p in patterns)
    return any(fnmatch.fnmatchcase(value.lower(), p.lower()) for p in patterns)


def _applies(statement: Mapping[str, Any], action: str, resource: str) -> bool:
    if "Action" in statement:
        acts = _matches(_as_list(statement["Action"]), action, case_sensitive=False)
    else:
        acts = not _matches(_as_list(statement.get("NotAction")), action, case_sensitive=False)
    if "Resource" in statement:
        on = _matches(_as_list(statement["Resource"]), resource, case_sensitive=True)
    else:
        on = not _matches(_as_list(statement.get("NotResource")), resource, case_sensitive=True)
    return acts and on


def allows(documents: Iterable[Mapping[str, Any] | str], action: str, resource: str) -> bool:
    """Do these identity policy documents allow `action` on `resource` (no explicit Deny)?"""
    allowed = False
    for document in documents:
        parsed = json.loads(document) if isinstance(document, str) else document
        statements = parsed.get("Statement", [])
        for statement in [statements] if isinstance(statements, dict) else statements:
            if not _applies(statement, action, resource):
                continue
            if statement.get("Effect") == "Deny":
                return False
            if statement.get("Effect") == "Allow":
                allowed = True
    return allowed


def role_documents(role: Any) -> list[Mapping[str, Any] | str]:
    """A moto role's inline policies and the default versions of its attached managed policies."""
    documents: list[Mapping[str, Any] | str] = list(role.policies.values())
    for policy in role.managed_policies.values():
        documents += [v.document for v in policy.versions if v.is_default]
    return documents


def instance_role(ec2_backend: Any, instance_id: str) -> Any | None:
    """The role of the instance profile associated with the instance (moto), if any."""
    association = ec2_backend.iam_instance_profile_associations.get(instance_id)
    profile = getattr(association, "iam_instance_profile", None)
    roles = list(getattr(profile, "roles", None) or [])
    return roles[0] if roles else None


class MotoNodes:
    """ssm.Nodes over moto's EC2 and IAM state of one account and region, and the data plane."""

    def __init__(self, account_id: str, region: str, dataplane: Any | None) -> None:
        self.account_id = account_id
        self.region = region
        self.dataplane = dataplane

    def node(self, instance_id: str) -> Node:
        from moto.ec2.models import ec2_backends

        backend: Any = ec2_backends[self.account_id][self.region]
        instance = backend.get_instance_by_id(instance_id) if hasattr(backend, "get_instance_by_id") else None
        if instance is None:
            return Node(None)
        state = str(instance.state)
        role = instance_role(backend, instance_id)
        resource = f"arn:aws:ec2:{self.region}:{self.account_id}:instance/{instance_id}"
        managed = role is not None and allows(role_documents(role), REGISTER_ACTION, resource)
        return Node(state, managed, state == "running" and self._online(instance_id))

    def _online(self, instance_id: str) -> bool:
        online = getattr(self.dataplane, "agent_online", None)
        return bool(callable(online) and online(instance_id))
