"""AMI fixes: tags on register/copy, unique names, deprecation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from aws_sandbox_kit import Kit, unique
from botocore.exceptions import ClientError


def tags_of(kit: Kit, image_id: str, region: str = "us-east-1") -> dict[str, str]:
    image = kit.client("ec2", region).describe_images(ImageIds=[image_id])["Images"][0]
    return {t["Key"]: t["Value"] for t in image.get("Tags", [])}


def register(kit: Kit, name: str, **tags: str) -> str:
    specs = [{"ResourceType": "image", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}] if tags else []
    return str(
        kit.client("ec2").register_image(Name=name, RootDeviceName="/dev/xvda", TagSpecifications=specs)["ImageId"]
    )


def test_register_image_applies_tag_specifications(kit: Kit) -> None:
    image = register(kit, unique("app"), Version="1.4.2", Fingerprint="abc123")
    assert tags_of(kit, image) == {"Version": "1.4.2", "Fingerprint": "abc123"}


def test_register_image_refuses_tags_for_other_resource_types(kit: Kit) -> None:
    name = unique("app")
    with pytest.raises(ClientError) as refused:
        kit.client("ec2").register_image(
            Name=name, TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "a", "Value": "b"}]}]
        )
    assert refused.value.response["Error"]["Code"] == "InvalidParameterValue"
    found = kit.client("ec2").describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])
    assert found["Images"] == []  # nothing was registered


def test_ami_names_are_unique_per_account_and_region(kit: Kit) -> None:
    ec2 = kit.client("ec2")
    name = unique("app")
    first = register(kit, name)
    with pytest.raises(ClientError) as duplicate:
        register(kit, name)
    assert duplicate.value.response["Error"]["Code"] == "InvalidAMIName.Duplicate"
    assert first in duplicate.value.response["Error"]["Message"]

    instance = ec2.run_instances(ImageId=first, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    with pytest.raises(ClientError) as from_instance:
        ec2.create_image(InstanceId=instance, Name=name)
    assert from_instance.value.response["Error"]["Code"] == "InvalidAMIName.Duplicate"
    ec2.terminate_instances(InstanceIds=[instance])

    # Another region is another namespace; the name frees up when the AMI is deregistered.
    kit.client("ec2", "eu-west-1").copy_image(SourceImageId=first, SourceRegion="us-east-1", Name=name)
    ec2.deregister_image(ImageId=first)
    register(kit, name)


def test_copy_image_copies_user_tags_only_when_asked(kit: Kit) -> None:
    source = register(kit, unique("app"), Version="2.0.0", Validated="true")
    west = kit.client("ec2", "eu-west-1")
    with_tags = west.copy_image(SourceImageId=source, SourceRegion="us-east-1", Name=unique("copy"), CopyImageTags=True)
    without = west.copy_image(SourceImageId=source, SourceRegion="us-east-1", Name=unique("copy"))
    assert tags_of(kit, with_tags["ImageId"], "eu-west-1") == {"Version": "2.0.0", "Validated": "true"}
    assert tags_of(kit, without["ImageId"], "eu-west-1") == {}


def test_copy_image_tag_specifications_tag_the_copy_and_its_new_snapshot(kit: Kit) -> None:
    source = register(kit, unique("app"), Version="2.0.0")
    west = kit.client("ec2", "eu-west-1")
    tags = [{"Key": "kiln:version", "Value": "2.0.0"}]
    copy = west.copy_image(SourceImageId=source, SourceRegion="us-east-1", Name=unique("copy"),
                           TagSpecifications=[{"ResourceType": "image", "Tags": tags},
                                              {"ResourceType": "snapshot", "Tags": tags}])["ImageId"]
    assert tags_of(kit, copy, "eu-west-1") == {"kiln:version": "2.0.0"}
    described = west.describe_images(ImageIds=[copy])["Images"][0]
    snapshots = [m["Ebs"]["SnapshotId"] for m in described["BlockDeviceMappings"] if "Ebs" in m]
    assert snapshots
    for snapshot in west.describe_snapshots(SnapshotIds=snapshots)["Snapshots"]:
        assert {t["Key"]: t["Value"] for t in snapshot.get("Tags", [])} == {"kiln:version": "2.0.0"}
    with pytest.raises(ClientError) as wrong:
        west.copy_image(SourceImageId=source, SourceRegion="us-east-1", Name=unique("copy"),
                        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])
    assert wrong.value.response["Error"]["Code"] == "InvalidParameterValue"


def test_image_deprecation_is_reported_and_can_be_cleared(kit: Kit) -> None:
    ec2 = kit.client("ec2")
    image = register(kit, unique("app"))
    at = (datetime.now(UTC) + timedelta(days=30)).replace(second=40, microsecond=0)
    assert ec2.enable_image_deprecation(ImageId=image, DeprecateAt=at)["Return"] is True
    described = ec2.describe_images(ImageIds=[image])["Images"][0]
    rounded = (at + timedelta(seconds=30)).replace(second=0)  # EC2 rounds to the nearest minute
    assert described["DeprecationTime"] == rounded.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    # The owner sees its deprecated AMIs whatever IncludeDeprecated says.
    assert ec2.describe_images(ImageIds=[image], IncludeDeprecated=False)["Images"]

    assert ec2.disable_image_deprecation(ImageId=image)["Return"] is True
    assert "DeprecationTime" not in ec2.describe_images(ImageIds=[image])["Images"][0]


def test_image_deprecation_refuses_the_past_and_unknown_images(kit: Kit) -> None:
    ec2 = kit.client("ec2")
    image = register(kit, unique("app"))
    with pytest.raises(ClientError) as past:
        ec2.enable_image_deprecation(ImageId=image, DeprecateAt=datetime.now(UTC) - timedelta(hours=1))
    assert past.value.response["Error"]["Code"] == "InvalidParameterValue"
    with pytest.raises(ClientError) as unknown:
        ec2.enable_image_deprecation(ImageId="ami-00000000000000000", DeprecateAt=datetime.now(UTC) + timedelta(days=1))
    assert unknown.value.response["Error"]["Code"] == "InvalidAMIID.NotFound"
    public = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    with pytest.raises(ClientError) as not_ours:
        ec2.enable_image_deprecation(ImageId=public, DeprecateAt=datetime.now(UTC) + timedelta(days=1))
    assert not_ours.value.response["Error"]["Code"] == "AuthFailure"


def test_imds_support_is_recorded_reported_and_final(kit: Kit) -> None:
    """EC2: ImdsSupport's only value is v2.0; set on RegisterImage or by ModifyImageAttribute, it
    is reported by DescribeImages and DescribeImageAttribute, and cannot be undone."""
    ec2 = kit.client("ec2")
    plain = register(kit, unique("app"))
    assert "ImdsSupport" not in ec2.describe_images(ImageIds=[plain])["Images"][0]
    assert ec2.describe_image_attribute(ImageId=plain, Attribute="imdsSupport").get("ImdsSupport", {}) == {}

    ec2.modify_image_attribute(ImageId=plain, ImdsSupport={"Value": "v2.0"})
    assert ec2.describe_images(ImageIds=[plain])["Images"][0]["ImdsSupport"] == "v2.0"
    attribute = ec2.describe_image_attribute(ImageId=plain, Attribute="imdsSupport")
    assert attribute["ImdsSupport"] == {"Value": "v2.0"}
    with pytest.raises(ClientError) as undo:
        ec2.modify_image_attribute(ImageId=plain, ImdsSupport={"Value": "v1.0"})
    assert undo.value.response["Error"]["Code"] == "InvalidParameterValue"
    assert ec2.describe_images(ImageIds=[plain])["Images"][0]["ImdsSupport"] == "v2.0"

    registered = str(ec2.register_image(Name=unique("app"), RootDeviceName="/dev/xvda", ImdsSupport="v2.0")["ImageId"])
    assert ec2.describe_images(ImageIds=[registered])["Images"][0]["ImdsSupport"] == "v2.0"
    with pytest.raises(ClientError) as missing:
        ec2.modify_image_attribute(ImageId="ami-00000000000000000", ImdsSupport={"Value": "v2.0"})
    assert missing.value.response["Error"]["Code"] == "InvalidAMIID.NotFound"


def test_an_image_of_an_ebs_backed_instance_is_ebs_backed_with_its_root_device(kit: Kit) -> None:
    """EC2: CreateImage of an instance of an EBS-backed AMI gives an EBS-backed AMI with the same root
    device; Packer's amazon-ebs builds only on such images (the app layer is built on a foundation)."""
    ec2 = kit.client("ec2")
    [base] = [i for i in ec2.describe_images(Owners=["136693071363"])["Images"] if i["RootDeviceType"] == "ebs"][:1]
    instance = ec2.run_instances(ImageId=base["ImageId"], MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    image_id = ec2.create_image(InstanceId=instance, Name=unique("foundation"))["ImageId"]
    ec2.terminate_instances(InstanceIds=[instance])
    image = ec2.describe_images(ImageIds=[image_id])["Images"][0]
    assert (image["RootDeviceType"], image["RootDeviceName"]) == ("ebs", base["RootDeviceName"])
    assert image["BlockDeviceMappings"][0]["DeviceName"] == base["RootDeviceName"]
