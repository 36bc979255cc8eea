"""The IAM policies in iam/ allow exactly the AWS calls the code makes — derived from the code.

Every call on a boto3 client (and every paginator) in release/ (the sandbox aside) and in the
image's boot script is found by reading the source's syntax tree; its client is known from the
receiver. The `Kiln*` statements of iam/kiln-deployer.json must list exactly those actions (no
more: least privilege; no fewer: the code would be denied), and iam/instance.json must allow
the boot script's calls. A call on a client this test cannot place fails the test, so new code
cannot slip past it.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import botocore.session
import pytest
from botocore import xform_name

ROOT = Path(__file__).parents[2]
BOOT_SCRIPT = ROOT / "ansible" / "roles" / "boot" / "files" / "webapp-boot"

# How the code names its clients: receiver source pattern -> botocore service name.
RECEIVERS = [
    (r"^self\._ec2\(\)$", "ec2"),
    (r"^self\._asg\(\)$|client\(['\"]autoscaling['\"]", "autoscaling"),
    (r"^elb$|client\(['\"]elbv2['\"]\)", "elbv2"),
    (r"client\(['\"]cloudwatch['\"]\)", "cloudwatch"),
    (r"^self\.db$", "dynamodb"),
    (r"^sts$", "sts"),
    (r"^ssm$", "ssm"),
    (r"^client$", "secretsmanager"),  # the boot script's one Secrets Manager client
]
IAM_PREFIX = {"elbv2": "elasticloadbalancing"}
_session = botocore.session.get_session()
_OPERATIONS = {
    service: {xform_name(op): op for op in _session.get_service_model(service).operation_names}
    for _, service in RECEIVERS
}


def calls_in(source: str, filename: str) -> set[str]:
    """IAM actions for every client call in one file."""
    actions = set()
    for node in ast.walk(ast.parse(source, filename)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        receiver = ast.unparse(node.func.value)
        name = node.func.attr
        if name == "get_paginator" and node.args and isinstance(node.args[0], ast.Constant):
            name = str(node.args[0].value)
        service = next((s for pattern, s in RECEIVERS if re.search(pattern, receiver)), None)
        if service is None:
            continue
        operation = _OPERATIONS[service].get(name)
        if operation is None:
            if name not in ("exceptions", "get_paginator", "paginate", "meta"):
                raise AssertionError(f"{filename}: {receiver}.{name}() is not a {service} operation")
            continue
        actions.add(f"{IAM_PREFIX.get(service, service)}:{operation}")
    return actions


def code_actions() -> set[str]:
    actions: set[str] = set()
    for path in sorted((ROOT / "release").rglob("*.py")):
        if "sandbox" not in path.relative_to(ROOT / "release").parts:
            actions |= calls_in(path.read_text(), str(path))
    return actions


def policy_actions(path: Path, sid_prefix: str = "") -> set[str]:
    statements = json.loads(path.read_text())["Statement"]
    return {a for s in statements if s.get("Sid", "").startswith(sid_prefix) for a in s["Action"]}


def test_the_scan_finds_the_calls_it_must() -> None:
    actions = code_actions()
    # A few that must be there, so a broken scanner cannot pass by finding nothing.
    assert {"autoscaling:StartInstanceRefresh", "ec2:CreateLaunchTemplateVersion", "dynamodb:PutItem",
            "ec2:DescribeLaunchTemplateVersions"} <= actions


def test_deployer_policy_allows_exactly_the_calls_kiln_makes() -> None:
    allowed = policy_actions(ROOT / "iam" / "kiln-deployer.json", "Kiln")
    needed = code_actions()
    assert sorted(needed - allowed) == [], "the code calls APIs the policy does not allow"
    assert sorted(allowed - needed) == [], "the policy allows APIs the code never calls"


def test_instance_policy_allows_the_boot_scripts_calls() -> None:
    needed = calls_in(BOOT_SCRIPT.read_text(), str(BOOT_SCRIPT))
    assert needed == {"secretsmanager:GetSecretValue", "sts:AssumeRole"}
    assert needed <= policy_actions(ROOT / "iam" / "instance.json")


def test_an_unplaced_operation_fails_the_scan() -> None:
    with pytest.raises(AssertionError, match="not a ec2 operation"):
        calls_in("self._ec2().describe_everything()", "new.py")
    assert calls_in("self._ec2().delete_snapshot(SnapshotId='x')", "new.py") == {"ec2:DeleteSnapshot"}
