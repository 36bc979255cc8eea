"""iam/kiln.cfn.yaml: cfn-lint finds nothing unexplained, its roles' policies are exactly the
documents in iam/, its ledger table has the key release/ledger.py uses, and its GitHub trust lets
in exactly the scheduled bake workflow."""

from __future__ import annotations

import ast
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint_file
from cfnlint.decode import decode_str

from release.ledger import KEY_SCHEMA

ROOT = Path(__file__).parents[2]
TEMPLATE = ROOT / "iam" / "kiln.cfn.yaml"
WORKFLOW = ROOT / ".github" / "workflows" / "bake.yml"
# Each role's inline policy, and the document it must be.
POLICY_FILES = {"DeployRole": "deploy.json", "BakeRole": "bake.json", "InstanceRole": "instance.json"}
# The template's parameters the documents in iam/ name as ${Name}.
LIST_PARAMETERS = {"KmsKeyArns"}

# cfn-lint's findings that stand (informational rules included), each with why.
ALLOWED_LINT = {
    "I3042": "ARNs name the `aws` partition, as the documents in iam/ do: Kiln targets the commercial "
             "partition (arn:aws), and ${AWS::Partition} would make every ARN in iam/ a placeholder",
}


def template() -> dict[str, Any]:
    decoded, matches = decode_str(TEMPLATE.read_text())
    assert not matches, matches
    assert decoded is not None
    return dict(decoded)


def resources() -> dict[str, Any]:
    return dict(template()["Resources"])


def plain(node: Any, where: str) -> Any:
    """The template's policy as the document in iam/ reads: !Sub strings as they are, !Ref of a
    list parameter as "${Name}", and `!If [HasKmsKeys, statement, AWS::NoValue]` as the statement
    (the documents list the KMS statements the stack has once it is given keys)."""
    if isinstance(node, dict):
        if set(node) == {"Fn::Sub"} and isinstance(node["Fn::Sub"], str):
            return node["Fn::Sub"]
        if set(node) == {"Ref"} and node["Ref"] in LIST_PARAMETERS:
            return "${" + node["Ref"] + "}"
        if set(node) == {"Fn::If"}:
            condition, then, otherwise = node["Fn::If"]
            assert (condition, otherwise) == ("HasKmsKeys", {"Ref": "AWS::NoValue"}), where
            return plain(then, where)
        assert not any(k.startswith("Fn::") or k == "Ref" for k in node), f"{where}: {node}"
        return {k: plain(v, f"{where}.{k}") for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(node)]
    return node


def test_cfn_lint_finds_nothing_unexplained() -> None:
    matches = lint_file(TEMPLATE, config=ManualArgs(include_checks=["I"]))
    unexplained = [f"{m.rule.id} {m.message} (line {m.linenumber})" for m in matches
                   if m.rule.id not in ALLOWED_LINT]
    assert unexplained == []
    assert sorted(ALLOWED_LINT.keys() - {m.rule.id for m in matches}) == [], "an allowed finding no longer occurs"


def test_cfn_lint_default_rules_find_nothing() -> None:
    assert [f"{m.rule.id} {m.message}" for m in lint_file(TEMPLATE)] == []


@pytest.mark.parametrize("role", sorted(POLICY_FILES))
def test_the_roles_policies_are_the_documents_in_iam(role: str) -> None:
    policies = resources()[role]["Properties"]["Policies"]
    assert len(policies) == 1, "one inline policy per role: the document in iam/"
    in_template = plain(policies[0]["PolicyDocument"], role)
    document = json.loads((ROOT / "iam" / POLICY_FILES[role]).read_text())
    assert in_template == document, f"iam/kiln.cfn.yaml {role} and iam/{POLICY_FILES[role]} differ"


def test_kms_statements_exist_only_with_keys() -> None:
    """Without KmsKeyArns the stack grants no KMS permission at all."""
    for role in ("DeployRole", "BakeRole"):
        for statement in resources()[role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]:
            conditional = "Fn::If" in statement
            names_kms = "KmsKeyArns" in json.dumps(statement)
            assert conditional == names_kms, f"{role}: {statement}"


def test_the_placeholders_are_the_templates_parameters() -> None:
    parameters = set(template()["Parameters"])
    for name in ("deploy.json", "bake.json", "instance.json"):
        text = (ROOT / "iam" / name).read_text()
        used = set(re.findall(r"\$\{([A-Za-z:]+)\}", text))
        assert used - {"AWS::AccountId"} <= parameters, name


def test_the_ledger_table_has_the_key_kiln_uses() -> None:
    table = resources()["LedgerTable"]
    props = table["Properties"]
    assert {k["AttributeName"]: k["KeyType"] for k in props["KeySchema"]} == KEY_SCHEMA
    assert [k["KeyType"] for k in props["KeySchema"]] == ["HASH", "RANGE"]
    assert {a["AttributeName"]: a["AttributeType"] for a in props["AttributeDefinitions"]} == \
        dict.fromkeys(KEY_SCHEMA, "S")
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["SSESpecification"]["SSEEnabled"] is True
    assert props["TableName"] == {"Ref": "LedgerTableName"}
    assert table["DeletionPolicy"] == table["UpdateReplacePolicy"] == "Retain"
    assert template()["Parameters"]["LedgerTableName"]["Default"] == "kiln-ledger"


def test_the_ledger_code_and_the_sandbox_use_that_key() -> None:
    """KEY_SCHEMA is what release/ledger.py writes and queries, and what the sandbox creates."""
    hash_key = next(k for k, kind in KEY_SCHEMA.items() if kind == "HASH")
    ledger = ast.parse((ROOT / "release" / "ledger.py").read_text())
    lock_key = next(n for n in ast.walk(ledger) if isinstance(n, ast.FunctionDef) and n.name == "_lock_key")
    returned = next(n.value for n in ast.walk(lock_key) if isinstance(n, ast.Return))
    assert isinstance(returned, ast.Dict)
    assert {ast.literal_eval(k) for k in returned.keys if k is not None} == set(KEY_SCHEMA)
    conditions = [ast.literal_eval(k.value) for n in ast.walk(ledger) if isinstance(n, ast.Call)
                  for k in n.keywords if k.arg == "KeyConditionExpression"]
    assert conditions and all(c.startswith(f"{hash_key} = ") for c in conditions)

    provision = ast.parse((ROOT / "release" / "sandbox" / "provision.py").read_text())
    create = next(n for n in ast.walk(provision) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                  and n.func.attr == "create_table")
    schema = next(ast.literal_eval(k.value) for k in create.keywords if k.arg == "KeySchema")
    assert {k["AttributeName"]: k["KeyType"] for k in schema} == KEY_SCHEMA


def test_the_scheduled_bake_and_nothing_else_may_use_the_github_trust() -> None:
    trust = resources()["BakeRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    github = next(s["Fn::If"][1] for s in trust if "Fn::If" in s)
    assert github["Action"] == "sts:AssumeRoleWithWebIdentity"
    subject = {"Fn::Sub": "repo:${GitHubRepository}:ref:refs/heads/${GitHubBranch}"}
    assert github["Condition"] == {"StringEquals": {"token.actions.githubusercontent.com:aud": "sts.amazonaws.com",
                                                    "token.actions.githubusercontent.com:sub": subject}}
    provider = resources()["GitHubOidcProvider"]
    assert provider["Condition"] == "CreateOidcProvider"
    assert provider["Properties"]["Url"] == "https://token.actions.githubusercontent.com"
    assert provider["Properties"]["ClientIdList"] == ["sts.amazonaws.com"]
    # The workflow's token says refs/heads/<branch> only while its job names no GitHub environment.
    workflow = WORKFLOW.read_text()
    assert "id-token: write" in workflow
    assert "role-to-assume: ${{ vars.KILN_BAKE_ROLE_ARN }}" in workflow
    assert not re.search(r"^    environment:", workflow, re.M), "a job environment changes the token's subject"


def test_the_outputs_are_what_versions_toml_needs() -> None:
    outputs = template()["Outputs"]
    assert {"DeployRoleArn", "BakeRoleArn", "LedgerTableName", "InstanceProfileName", "AccountId",
            "Region"} <= set(outputs)
    # versions.toml's example environments name the deploy role by the template's default name.
    default = template()["Parameters"]["DeployRoleName"]["Default"]
    config = tomllib.loads((ROOT / "versions.toml").read_text())
    arns = [e["role_arn"] for e in config["environments"].values() if "role_arn" in e]
    assert arns and all(arn.endswith(f":role/{default}") for arn in arns)
