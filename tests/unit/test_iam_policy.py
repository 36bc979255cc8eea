"""The IAM policies in iam/ allow exactly what Kiln's commands need, derived from the code.

tests/unit/awscalls.py reads every AWS call in release/ (the sandbox aside) from the syntax tree
and follows Kiln's objects from each command in tasks.py to the calls it reaches. Each command
runs under one role: `inv bake` under the bake role (iam/bake.json), every other command under
the deploy role (iam/deploy.json). A policy must allow exactly its commands' actions, plus the
actions AWS checks on their behalf (DEPENDENT), plus, for the bake role, what Packer documents it
needs (PACKER_NEEDS, less what Kiln's template never makes it do) — no more: least privilege; no
fewer: the command would be denied. Every statement of every policy counts, and every policy is
linted with parliament.
"""

from __future__ import annotations

import ast
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from parliament import analyze_policy_string, iam_definition

from .awscalls import ROOT, Scan, ScanError, tasks

IAM = ROOT / "iam"
POLICIES = {"deploy": IAM / "deploy.json", "bake": IAM / "bake.json"}
BOOT_SCRIPT = ROOT / "ansible" / "roles" / "boot" / "files" / "webapp-boot"

# Which role runs each command. Commands in the `sandbox` namespace talk to the sandbox only.
SANDBOX_NAMESPACES = {"sandbox"}
TASK_ROLES = {
    "show_config": "deploy", "bake": "bake", "release": "deploy", "resume": "deploy", "rollback": "deploy",
    "status": "deploy", "history": "deploy", "report": "deploy", "adopt": "deploy", "ami_cleanup": "deploy",
    "ami_deprecate": "deploy", "ami_promote": "deploy", "fleet_verify": "deploy",
}

# Calls no policy needs to allow.
NO_PERMISSION = {
    "sts:GetCallerIdentity": "AWS: no permission is required to perform this operation (the account guard)",
}

# What AWS checks besides the action itself. EBS encryption with a customer-managed key:
# https://docs.aws.amazon.com/ebs/latest/userguide/ebs-encryption-requirements.html#ebs-encryption-permissions
EBS_KMS = {"kms:CreateGrant", "kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext",
           "kms:ReEncryptFrom", "kms:ReEncryptTo"}
DEPENDENT = {
    # Auto Scaling refuses a refresh to a launch template its caller may not launch from ("You are
    # not authorized to use launch template"): RunInstances on what the template names, and
    # PassRole for its instance profile.
    "autoscaling:StartInstanceRefresh": {"ec2:RunInstances", "iam:PassRole"},
    # The instance profile (the smoke test's launch template), tags on create (TagSpecifications,
    # the template's too), and volumes encrypted with a customer-managed key.
    "ec2:RunInstances": {"iam:PassRole", "ec2:CreateTags"} | EBS_KMS,
    # CopyImageTags (ec2:CreateTags on create), and re-keying with `kms_key_id`.
    "ec2:CopyImage": {"ec2:CreateTags"} | EBS_KMS,
}

# What Packer's amazon-ebs builder needs, as Packer 1.6.6 documents it ("IAM Task or Instance Role",
# https://github.com/hashicorp/packer/blob/v1.6.6/website/content/docs/builders/amazon/index.mdx),
# the spelling `CreateKeypair` there aside.
PACKER_DOCUMENTED = {
    "ec2:AttachVolume", "ec2:AuthorizeSecurityGroupIngress", "ec2:CopyImage", "ec2:CreateImage",
    "ec2:CreateKeyPair", "ec2:CreateSecurityGroup", "ec2:CreateSnapshot", "ec2:CreateTags", "ec2:CreateVolume",
    "ec2:DeleteKeyPair", "ec2:DeleteSecurityGroup", "ec2:DeleteSnapshot", "ec2:DeleteVolume", "ec2:DeregisterImage",
    "ec2:DescribeImageAttribute", "ec2:DescribeImages", "ec2:DescribeInstances", "ec2:DescribeInstanceStatus",
    "ec2:DescribeRegions", "ec2:DescribeSecurityGroups", "ec2:DescribeSnapshots", "ec2:DescribeSubnets",
    "ec2:DescribeTags", "ec2:DescribeVolumes", "ec2:DetachVolume", "ec2:GetPasswordData",
    "ec2:ModifyImageAttribute", "ec2:ModifyInstanceAttribute", "ec2:ModifySnapshotAttribute", "ec2:RegisterImage",
    "ec2:RunInstances", "ec2:StopInstances", "ec2:TerminateInstances",
}
# ...less what packer/app.pkr.hcl never makes it do (read in Packer 1.6.6's builder/amazon/ebs
# steps); iam/README.md says the same.
PACKER_NOT_USED = {
    "ec2:AttachVolume": "amazon-chroot/ebssurrogate/ebsvolume only; amazon-ebs never calls it",
    "ec2:DetachVolume": "amazon-chroot/ebssurrogate/ebsvolume only",
    "ec2:CreateVolume": "amazon-chroot/ebssurrogate/ebsvolume only (RunInstances makes the build volumes)",
    "ec2:CreateSnapshot": "amazon-chroot/ebssurrogate only (CreateImage snapshots the volumes)",
    "ec2:RegisterImage": "amazon-chroot/ebssurrogate only (amazon-ebs uses CreateImage)",
    "ec2:GetPasswordData": "Windows (WinRM) builds only",
    "ec2:ModifyInstanceAttribute": "only with sriov_support or ena_support set, which the template does not",
    "ec2:ModifySnapshotAttribute": "only with snapshot_users or snapshot_groups set, which the template does not",
    "ec2:DeregisterImage": "only with force_deregister (not set) or to clean up a failed build's AMI, which is "
                           "untagged then and so cannot be told apart from any other AMI: not granted",
    "ec2:DeleteSnapshot": "likewise, with force_delete_snapshot (not set) or a failed build's snapshots",
}
PACKER_NEEDS = PACKER_DOCUMENTED - PACKER_NOT_USED.keys()

# Write actions a statement allows with no condition on every resource of a type: each is reviewed.
UNSCOPED_WRITES = {
    ("bake", "ec2:RunInstances"): "the base image, key pair, subnet, groups and volumes of a launch carry no Kiln "
                                  "tag; the instance itself is conditioned on its request tags",
    ("bake", "ec2:CreateImage"): "the AMI and snapshots being created; the instance is conditioned on its tags",
    ("bake", "ec2:CopyImage"): "Packer copies to ami_regions before it tags the AMI",
    ("bake", "ec2:ModifyImageAttribute"): "Packer sets the description and ami_users before it tags the AMI",
    ("bake", "ec2:AuthorizeSecurityGroupIngress"): "Packer 1.6.6's temporary group is untagged",
    ("bake", "ec2:CreateSecurityGroup"): "Packer 1.6.6's temporary group is untagged",
    ("bake", "ec2:DeleteSecurityGroup"): "Packer 1.6.6's temporary group is untagged",
    ("deploy", "ec2:CopyImage"): "`inv ami.promote` copies the AMI that passed; the source is Kiln's, the copy new",
}

# Parliament's findings that stand, each with why.
ALLOWED_FINDINGS: list[dict[str, Any]] = [
    {"files": {"bake.json", "deploy.json"}, "issue": "RESOURCE_MISMATCH", "actions": {"ec2:RunInstances"},
     "why": "parliament wants every resource type RunInstances requires in each statement; AWS authorizes each "
            "resource of a launch against all statements, and scoping instances, templates and the rest by "
            "different conditions needs one statement each (the EC2 User Guide's own examples split it so)"},
    {"files": {"bake.json", "deploy.json"}, "issue": "RESOURCE_MISMATCH", "actions": {"ssm:SendCommand"},
     "why": "likewise: SendCommand is authorized on the instance (scoped by its tag) and on the document "
            "(AWS-RunShellScript only), one statement each"},
    {"files": {"bake.json"}, "issue": "RESOURCE_MISMATCH", "actions": {"ec2:CreateImage"},
     "why": "likewise: the build instance (by its tags) and the new AMI and snapshots are separate statements"},
    {"files": {"bake.json", "deploy.json"}, "issue": "PERMISSIONS_MANAGEMENT_ACTIONS",
     "actions": {"iam:passrole", "kms:creategrant"},
     "why": "PassRole of the instance role to EC2 only (its launch template's profile); CreateGrant on the "
            "configured keys only, and only for AWS resources (EBS)"},
    {"files": {"deploy.json"}, "issue": "PERMISSIONS_MANAGEMENT_ACTIONS",
     "actions": {"iam:passrole", "kms:creategrant", "ec2:modifysnapshotattribute"},
     "why": "`inv ami.promote` to another account shares the AMI's snapshots with it (CopyImage reads them); "
            "only on snapshots tagged kiln:app"},
    {"files": {"bake.json", "deploy.json"}, "issue": "PRIVILEGE_ESCALATION", "actions": {"iam:passrole",
                                                                                          "ec2:runinstances"},
     "why": "the only role either can pass is the instance role, which the fleet runs with anyway"},
    {"files": {"instance.json"}, "issue": "CREDENTIALS_EXPOSURE", "actions": {"sts:assumerole"},
     "why": "the boot script assumes the one secrets-reader role to read the app's secret"},
]

# Stand-ins for the values iam/kiln.cfn.yaml fills in, for the linter.
SAMPLE_VALUES = {
    "${AWS::AccountId}": "123456789012",
    "${InstanceRoleName}": "kiln-instance",
    "${LedgerTableName}": "kiln-ledger",
    "${KmsKeyArns}": "arn:aws:kms:eu-central-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
}


@cache
def scan() -> Scan:
    return Scan()


def policy(role: str) -> dict[str, Any]:
    return json.loads(POLICIES[role].read_text())


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def allowed_actions(document: dict[str, Any]) -> set[str]:
    """Every action any Allow statement grants (every statement, whatever its Sid)."""
    return {a for s in document["Statement"] if s["Effect"] == "Allow" for a in as_list(s["Action"])}


def statements_with(document: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in document["Statement"] if action in as_list(s["Action"])]


def roles_tasks() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for qualname, namespace in tasks(scan()).items():
        if namespace not in SANDBOX_NAMESPACES:
            out.setdefault(TASK_ROLES[qualname.removeprefix("tasks.")], set()).add(qualname)
    return out


def with_dependents(actions: set[str]) -> set[str]:
    out = set(actions)
    while True:
        more = {d for a in out for d in DEPENDENT.get(a, ())} - out
        if not more:
            return out
        out |= more


def needed(role: str) -> set[str]:
    found = scan().actions(roles_tasks()[role])
    actions = set(found) - NO_PERMISSION.keys()
    if role == "bake":
        actions |= PACKER_NEEDS
    return with_dependents(actions)


@cache
def _privileges() -> dict[str, dict[str, Any]]:
    return {f"{s['prefix']}:{p['privilege']}".lower(): p for s in iam_definition for p in s["privileges"]}


# ------------------------------------------------------------------------------------------ the scan


def test_the_scan_classifies_every_client_and_call() -> None:
    scan().check()


def test_the_scan_finds_the_calls_it_must() -> None:
    # A few that must be there, so a broken scanner cannot pass by finding nothing.
    release = scan().actions({"tasks.release"})
    assert {"autoscaling:StartInstanceRefresh", "ec2:CreateLaunchTemplateVersion", "dynamodb:PutItem",
            "dynamodb:ConditionCheckItem", "ec2:DescribeLaunchTemplateVersions",
            "sts:GetCallerIdentity"} <= set(release)
    assert {"ec2:RunInstances", "ec2:TerminateInstances", "ec2:CreateTags"} <= set(scan().actions({"tasks.bake"}))


def test_every_command_runs_under_a_named_role() -> None:
    commands = {q.removeprefix("tasks.") for q, ns in tasks(scan()).items() if ns not in SANDBOX_NAMESPACES}
    assert sorted(commands - TASK_ROLES.keys()) == [], "a new command: say which role runs it (TASK_ROLES)"
    assert sorted(TASK_ROLES.keys() - commands) == [], "TASK_ROLES names a command tasks.py no longer has"


def test_every_aws_call_is_reached_by_a_command() -> None:
    """A function that calls AWS and that no command reaches is an edge the scan missed (a callback
    it cannot type, say) — or dead code. Either way its calls would be in no policy."""
    s = scan()
    reached = s.reachable(set(tasks(s)))
    unreached = sorted(f"{c.where} {c.function}: {c.action}" for name, calls in s.calls.items()
                       if name not in reached for c in calls)
    assert unreached == []


def test_an_unclassified_client_fails_the_scan() -> None:
    s = Scan()
    s.add_source("release.extra", '''
class Thing:
    def __init__(self, aws, service):
        self.c = aws.client(service)
        self.s3 = aws.client("s3")

    def go(self, mystery):
        self.s3.put_object(Bucket="b", Key="k")
        self.s3.describe_everything()
        mystery.describe_instances()
        self.s3.get_waiter("object_exists")
''')
    assert {c.action for c in s.calls["release.extra.Thing.go"]} == {"s3:PutObject"}
    errors = "\n".join(s.errors)
    assert "aws.client(service) makes a client whose service the scan cannot tell" in errors
    assert "self.s3.describe_everything() is not a s3 operation" in errors
    assert "mystery.describe_instances() looks like an AWS call" in errors
    assert "waiters call operations the scan cannot see" in errors
    with pytest.raises(ScanError, match=r"release/extra\.py:\d+"):
        s.check()


def test_the_scan_follows_typed_clients_and_objects() -> None:
    s = Scan()
    s.add_source("release.extra", '''
from typing import TYPE_CHECKING
from release.aws import Aws
from release.cloud import Cloud
if TYPE_CHECKING:
    from types_boto3_ec2 import EC2Client

class Holder:
    ec2: EC2Client

    @property
    def cloud(self) -> Cloud:
        return Cloud(self.aws)

    def tag(self) -> None:
        self.ec2.create_tags(Resources=[], Tags=[])
        self.cloud.delete_image("ami-1", ())
        db = self.aws.client("dynamodb")
        db.transact_write_items(TransactItems=[{"Put": {}}, {"Delete": {}}])
''')
    s.check()
    direct = {c.action for c in s.calls["release.extra.Holder.tag"]}
    assert direct == {"ec2:CreateTags", "dynamodb:PutItem", "dynamodb:DeleteItem"}
    assert {"ec2:DeregisterImage", "ec2:DeleteSnapshot"} <= set(s.actions({"release.extra.Holder.tag"}))


def test_the_scan_follows_imports_inside_functions() -> None:
    """tasks.py imports the command layer inside each task (so that loading it stays cheap)."""
    s = Scan()
    s.add_source("release.extra", '''
def lazy(aws) -> None:
    from release import aws as kiln_aws
    from release.cloud import Cloud

    Cloud(aws).delete_image("ami-1", ())
    kiln_aws.Cloud(aws).delete_image("ami-2", ())
''')
    s.check()
    assert {"ec2:DeregisterImage", "ec2:DeleteSnapshot"} <= set(s.actions({"release.extra.lazy"}))


# ------------------------------------------------------------------------------------------ policies


@pytest.mark.parametrize("role", sorted(POLICIES))
def test_the_policy_allows_exactly_what_the_role_needs(role: str) -> None:
    allowed, wanted = allowed_actions(policy(role)), needed(role)
    calls = scan().actions(roles_tasks()[role])
    missing = sorted(f"{a} (" + ", ".join(sorted({c.where for c in calls.get(a, ())})[:3]) + ")"
                     for a in wanted - allowed)
    assert missing == [], f"{role}: the code (or what AWS checks for it) needs actions the policy does not allow"
    assert sorted(allowed - wanted) == [], f"{role}: the policy allows actions nothing needs"


@pytest.mark.parametrize("role", sorted(POLICIES))
def test_every_action_is_a_real_iam_action(role: str) -> None:
    unknown = sorted(a for a in needed(role) | allowed_actions(policy(role)) if a.lower() not in _privileges())
    assert unknown == []


@pytest.mark.parametrize("path", sorted(IAM.glob("*.json")), ids=lambda p: p.name)
def test_every_statement_is_plain(path: Path) -> None:
    """Named, allowing, listing its actions and resources: no NotAction, NotResource or wildcards."""
    document = json.loads(path.read_text())
    sids = [s.get("Sid") for s in document["Statement"]]
    assert all(sids) and len(set(sids)) == len(sids), "every statement has its own Sid"
    for s in document["Statement"]:
        assert set(s) <= {"Sid", "Effect", "Action", "Resource", "Condition"}, s["Sid"]
        assert s["Effect"] == "Allow", s["Sid"]
        assert all("*" not in a for a in as_list(s["Action"])), s["Sid"]
        assert as_list(s["Action"]) == sorted(as_list(s["Action"])), f"{s['Sid']}: keep actions sorted"


@pytest.mark.parametrize("role", sorted(POLICIES))
def test_iam_readme_explains_every_statement(role: str) -> None:
    readme = (IAM / "README.md").read_text()
    unexplained = [s["Sid"] for s in policy(role)["Statement"] if f"`{s['Sid']}`" not in readme]
    assert unexplained == [], "say in iam/README.md why each statement exists"


@pytest.mark.parametrize("role", sorted(POLICIES))
def test_unscoped_writes_are_the_reviewed_ones(role: str) -> None:
    """A write action with no condition, on every resource of its types, is either listed in
    UNSCOPED_WRITES with its reason or a finding."""
    unscoped = set()
    for s in policy(role)["Statement"]:
        resources = as_list(s["Resource"])
        everywhere = all(r == "*" or r.endswith(("/*", ":*")) for r in resources)
        if "Condition" in s or not everywhere:
            continue
        for action in as_list(s["Action"]):
            level = _privileges()[action.lower()]["access_level"]
            if level not in ("List", "Read"):
                unscoped.add(action)
    reviewed = {a for r, a in UNSCOPED_WRITES if r == role}
    assert sorted(unscoped) == sorted(reviewed)


@pytest.mark.parametrize("role", sorted(POLICIES))
def test_tags_only_on_create_or_with_kiln_image_keys(role: str) -> None:
    """CreateTags on an existing resource could give it `kiln:managed` and defeat the tag
    conditions: it is allowed only on create (ec2:CreateAction), or on images and snapshots with
    exactly the keys Kiln writes there."""
    for s in statements_with(policy(role), "ec2:CreateTags"):
        condition = s.get("Condition", {})
        on_create = condition.get("StringEquals", {}).get("ec2:CreateAction")
        keys = condition.get("ForAllValues:StringEquals", {}).get("aws:TagKeys")
        assert on_create or keys, f"{role} {s['Sid']}: CreateTags without a condition"
        if keys:
            assert all(r.split(":")[-1].split("/")[0] in ("image", "snapshot") for r in as_list(s["Resource"]))
            assert sorted(keys) == sorted(image_tag_keys(role)), f"{role} {s['Sid']}: the keys Kiln writes"
            assert "kiln:managed" not in keys


def image_tag_keys(role: str) -> set[str]:
    """The tag keys the role writes on existing AMIs and snapshots: Kiln's tag_image() calls in
    the role's commands (their dict literals' keys), and, when baking, Packer's AMI and snapshot
    tags (the provenance maps in packer/app.pkr.hcl, and Name)."""
    s = scan()
    keys: set[str] = set()
    for name in s.reachable(roles_tasks()[role]):
        function = s.functions.get(name)
        if function is None:
            continue
        for node in ast.walk(function.node):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "tag_image":
                tags = node.args[1] if len(node.args) > 1 else None
                assert isinstance(tags, ast.Dict), f"{function.where}: tag_image() with tags the test cannot read"
                keys |= {_constant(s, function.module.name, k) for k in tags.keys if k is not None}
    if role == "bake":
        hcl = (ROOT / "packer" / "app.pkr.hcl").read_text()
        # The provenance: the tags every layer carries (common) merged with its layer's own (layer_tags).
        maps = re.search(r"\n  common = \{(.*?)\n  provenance = merge\(local\.common, "
                         r"local\.layer_tags\[var\.layer\]\)", hcl, re.S)
        assert maps, "packer/app.pkr.hcl: the provenance tags maps (common, layer_tags)"
        keys |= set(re.findall(r'"(kiln:[a-z-]+)"\s*=', maps.group(1))) | {"Name"}
        assert re.search(r"\btags\s*=\s*merge\(local\.provenance, \{ Name = ", hcl)
        assert re.search(r"\bsnapshot_tags\s*=\s*merge\(local\.provenance, \{ Name = ", hcl)
    return keys


def _constant(s: Scan, module_name: str, node: ast.expr) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    assert isinstance(node, ast.Name), ast.unparse(node)
    module = s.modules[module_name]
    for statement in module.tree.body:
        if isinstance(statement, ast.Assign) and any(isinstance(t, ast.Name) and t.id == node.id
                                                      for t in statement.targets):
            assert isinstance(statement.value, ast.Constant)
            return str(statement.value.value)
    target = module.imports[node.id]
    source, _, name = target.rpartition(".")
    return _constant(s, source, ast.Name(id=name))


def test_build_and_smoke_instances_are_launched_as_they_are_terminated() -> None:
    """The bake role launches instances only with the names Packer's run_tags and the smoke test
    give them, and stops or terminates only instances named so."""
    bake = policy("bake")
    hcl = (ROOT / "packer" / "app.pkr.hcl").read_text()
    assert re.search(r'\brun_tags\s*=\s*merge\(local\.provenance, \{ Name = "kiln-bake-\$', hcl)
    assert re.search(r'\brun_volume_tags\s*=\s*merge\(local\.provenance, \{ Name = "kiln-bake-\$', hcl)
    smoke = (ROOT / "release" / "smoke.py").read_text()
    assert 'name = f"kiln-smoke-' in smoke and '{"Name": name, "kiln:smoke": fingerprint}' in smoke

    launches = [s for s in statements_with(bake, "ec2:RunInstances")
                if any(":instance/" in r for r in as_list(s["Resource"]))]
    assert sorted(s["Condition"]["StringLike"]["aws:RequestTag/Name"] for s in launches) == ["kiln-bake-*",
                                                                                           "kiln-smoke-*"]
    assert all(s["Condition"]["Null"] for s in launches)
    for action, names in (("ec2:StopInstances", ["kiln-bake-*"]), ("ec2:CreateImage", ["kiln-bake-*"]),
                          ("ec2:TerminateInstances", ["kiln-bake-*", "kiln-smoke-*"]),
                          ("ec2:DeleteVolume", ["kiln-bake-*"])):
        for s in statements_with(bake, action):
            if any(":instance/" in r or ":volume/" in r for r in as_list(s["Resource"])):
                assert as_list(s["Condition"]["StringLike"]["aws:ResourceTag/Name"]) == names, s["Sid"]
    assert "ec2:TerminateInstances" not in allowed_actions(policy("deploy"))


def test_the_deploy_role_launches_only_through_kiln_templates() -> None:
    """Auto Scaling checks RunInstances for the refresh's template: only through a launch
    template, and only templates tagged kiln:managed."""
    for s in statements_with(policy("deploy"), "ec2:RunInstances"):
        condition = s["Condition"]
        if as_list(s["Resource"]) == ["arn:aws:ec2:*:${AWS::AccountId}:launch-template/*"]:
            assert condition == {"StringEquals": {"aws:ResourceTag/kiln:managed": "true"}}
        else:
            assert not any(":launch-template/" in r for r in as_list(s["Resource"]))
            assert condition == {"ArnLike": {"ec2:LaunchTemplate": "arn:aws:ec2:*:${AWS::AccountId}:launch-template/*"}}


@pytest.mark.parametrize("role", sorted(POLICIES))
def test_pass_role_and_kms_are_scoped(role: str) -> None:
    document = policy(role)
    for s in statements_with(document, "iam:PassRole"):
        assert s["Resource"] == "arn:aws:iam::${AWS::AccountId}:role/${InstanceRoleName}"
        assert s["Condition"] == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}
    kms = [s for s in document["Statement"] if any(a.startswith("kms:") for a in as_list(s["Action"]))]
    assert {a for s in kms for a in as_list(s["Action"])} == EBS_KMS
    for s in kms:
        assert s["Resource"] == "${KmsKeyArns}"
        assert s["Condition"] in ({"StringLike": {"kms:ViaService": "ec2.*.amazonaws.com"}},
                                  {"Bool": {"kms:GrantIsForAWSResource": "true"}})


def test_the_deploy_role_changes_only_kiln_images_groups_and_templates() -> None:
    for s in policy("deploy")["Statement"]:
        actions = set(as_list(s["Action"]))
        if actions & {"ec2:DeregisterImage", "ec2:DeleteSnapshot", "ec2:EnableImageDeprecation",
                      "ec2:ModifyImageAttribute"}:
            assert s["Condition"] == {"Null": {"aws:ResourceTag/kiln:app": "false"}}, s["Sid"]
        if actions & {"autoscaling:StartInstanceRefresh", "ec2:CreateLaunchTemplateVersion",
                      "ec2:ModifyLaunchTemplate"}:
            assert s["Condition"] == {"StringEquals": {"aws:ResourceTag/kiln:managed": "true"}}, s["Sid"]


def test_the_instance_policy_allows_the_boot_scripts_calls() -> None:
    s = Scan()
    s.add_source("webapp_boot", BOOT_SCRIPT.read_text())
    s.check()
    needed_by_boot = {c.action for name, calls in s.calls.items() if name.startswith("webapp_boot.") for c in calls}
    assert needed_by_boot == {"secretsmanager:GetSecretValue", "sts:AssumeRole"}
    assert needed_by_boot == allowed_actions(json.loads((IAM / "instance.json").read_text())) & needed_by_boot


# ------------------------------------------------------------------------------------------ the linter


def rendered(path: Path) -> str:
    text = path.read_text()
    for placeholder, value in SAMPLE_VALUES.items():
        text = text.replace(placeholder, value)
    assert "${" not in text, f"{path.name}: a placeholder without a sample value"
    return text


def findings(path: Path) -> list[tuple[str, set[str], str]]:
    """(issue, actions, detail) for each of parliament's findings, its community auditors included."""
    out = []
    for community in (False, True):
        for f in analyze_policy_string(rendered(path), str(path), include_community_auditors=community).findings:
            detail = f.detail if isinstance(f.detail, list) else []
            actions = {d["action"] if isinstance(d, dict) else str(d) for d in detail}
            actions |= set(f.location.get("actions", ()))
            out.append((f.issue, actions, f"{f.issue} {f.detail} {f.location}"))
    return out


@pytest.mark.parametrize("path", sorted(IAM.glob("*.json")), ids=lambda p: p.name)
def test_each_policy_fits_in_a_role(path: Path) -> None:
    """IAM allows a role 10,240 characters of inline policy (whitespace aside); leave room for
    five KMS keys."""
    keys = ",".join([json.dumps(SAMPLE_VALUES["${KmsKeyArns}"])] * 5)
    text = rendered(path).replace(json.dumps(SAMPLE_VALUES["${KmsKeyArns}"]), f"[{keys}]")
    assert len(json.dumps(json.loads(text), separators=(",", ":"))) <= 10_240


@pytest.mark.parametrize("path", sorted(IAM.glob("*.json")), ids=lambda p: p.name)
def test_parliament_finds_nothing_unexplained(path: Path) -> None:
    unexplained = [detail for issue, actions, detail in findings(path)
                   if not any(path.name in a["files"] and issue == a["issue"] and actions and actions <= a["actions"]
                              for a in ALLOWED_FINDINGS)]
    assert unexplained == []


def test_every_allowed_finding_still_occurs() -> None:
    found = {(path.name, issue, frozenset(actions)) for path in IAM.glob("*.json")
             for issue, actions, _ in findings(path)}
    stale = [(a["issue"], sorted(a["files"])) for a in ALLOWED_FINDINGS
             if not any(name in a["files"] and issue == a["issue"] and actions <= a["actions"]
                        for name, issue, actions in found)]
    assert stale == []
