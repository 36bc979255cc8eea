"""Launch template fixes: SourceVersion inheritance and DeleteLaunchTemplateVersions."""

from __future__ import annotations

import pytest
from aws_sandbox_kit import Kit, unique
from botocore.exceptions import ClientError

BASE = {
    "ImageId": "ami-12c6146b",
    "InstanceType": "t3.micro",
    "KeyName": "deploy",
    "SecurityGroupIds": ["sg-0123456789abcdef0"],
    "MetadataOptions": {"HttpTokens": "required"},
}


def template(kit: Kit) -> str:
    created = kit.client("ec2").create_launch_template(LaunchTemplateName=unique("lt"), LaunchTemplateData=BASE)
    return str(created["LaunchTemplate"]["LaunchTemplateId"])


def data(kit: Kit, template_id: str, version: str) -> dict[str, object]:
    versions = kit.client("ec2").describe_launch_template_versions(LaunchTemplateId=template_id, Versions=[version])
    found: dict[str, object] = versions["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    return found


def test_source_version_is_inherited_and_overridden_by_the_given_data(kit: Kit) -> None:
    ec2 = kit.client("ec2")
    template_id = template(kit)
    created = ec2.create_launch_template_version(
        LaunchTemplateId=template_id, SourceVersion="1", LaunchTemplateData={"ImageId": "ami-0000000000000feed"}
    )["LaunchTemplateVersion"]
    assert created["VersionNumber"] == 2
    assert created["LaunchTemplateData"] == {**BASE, "ImageId": "ami-0000000000000feed"}
    assert data(kit, template_id, "2") == {**BASE, "ImageId": "ami-0000000000000feed"}


def test_without_source_version_only_the_given_data(kit: Kit) -> None:
    ec2 = kit.client("ec2")
    template_id = template(kit)
    ec2.create_launch_template_version(LaunchTemplateId=template_id, LaunchTemplateData={"ImageId": "ami-1"})
    assert data(kit, template_id, "2") == {"ImageId": "ami-1"}


def test_source_version_can_be_any_version_and_must_exist(kit: Kit) -> None:
    ec2 = kit.client("ec2")
    template_id = template(kit)
    ec2.create_launch_template_version(LaunchTemplateId=template_id, LaunchTemplateData={"ImageId": "ami-2"})
    ec2.create_launch_template_version(
        LaunchTemplateId=template_id, SourceVersion="2", LaunchTemplateData={"InstanceType": "t3.small"}
    )
    assert data(kit, template_id, "3") == {"ImageId": "ami-2", "InstanceType": "t3.small"}
    with pytest.raises(ClientError) as missing:
        ec2.create_launch_template_version(
            LaunchTemplateId=template_id, SourceVersion="9", LaunchTemplateData={"ImageId": "ami-3"}
        )
    assert missing.value.response["Error"]["Code"] == "InvalidLaunchTemplateId.VersionNotFound"


def test_delete_versions_reports_successes_and_failures(kit: Kit) -> None:
    ec2 = kit.client("ec2")
    template_id = template(kit)
    for image in ("ami-2", "ami-3"):
        ec2.create_launch_template_version(
            LaunchTemplateId=template_id, SourceVersion="1", LaunchTemplateData={"ImageId": image}
        )
    result = ec2.delete_launch_template_versions(LaunchTemplateId=template_id, Versions=["1", "2", "7"])
    assert [v["VersionNumber"] for v in result["SuccessfullyDeletedLaunchTemplateVersions"]] == [2]
    failures = {
        v["VersionNumber"]: v["ResponseError"]["Code"] for v in result["UnsuccessfullyDeletedLaunchTemplateVersions"]
    }
    assert failures == {1: "unexpectedError", 7: "launchTemplateVersionDoesNotExist"}  # 1 is the default

    remaining = ec2.describe_launch_template_versions(LaunchTemplateId=template_id)["LaunchTemplateVersions"]
    assert sorted(v["VersionNumber"] for v in remaining) == [1, 3]
    assert data(kit, template_id, "3")["ImageId"] == "ami-3"  # numbers are stable after a delete
    latest = ec2.create_launch_template_version(LaunchTemplateId=template_id, SourceVersion="3", LaunchTemplateData={})
    assert latest["LaunchTemplateVersion"]["VersionNumber"] == 4  # never reused
    with pytest.raises(ClientError):
        data(kit, template_id, "2")
    ranged = ec2.describe_launch_template_versions(LaunchTemplateId=template_id, MinVersion="3", MaxVersion="4")
    assert [v["VersionNumber"] for v in ranged["LaunchTemplateVersions"]] == [3, 4]


def test_delete_versions_of_an_unknown_template(kit: Kit) -> None:
    result = kit.client("ec2").delete_launch_template_versions(LaunchTemplateName="no-such-template", Versions=["2"])
    assert result["SuccessfullyDeletedLaunchTemplateVersions"] == []
    [failure] = result["UnsuccessfullyDeletedLaunchTemplateVersions"]
    assert failure["ResponseError"]["Code"] == "launchTemplateNameDoesNotExist"
