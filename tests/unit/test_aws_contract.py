"""Contract tests of the boto3 adapter (release/aws.py, release/cloud.py and release/ledger.py through them): every
AWS call it makes, checked against the service models botocore ships, without AWS and without a
network.

Each client Aws hands out gets a botocore Stubber, which
- checks every request against the service model (names, types, required members) and against
  the exact parameters the test expects,
- checks every canned answer against the model too, so the answers are ones AWS can give,
- turns a canned error into the exception botocore raises for that error code.

Each test asserts what Kiln makes of the answer (release.model types, AwsError, NotFound,
LockHeld, LeaseLost, …), and that every canned answer was asked for. Multi-page answers cover
each call Kiln pages. The last tests check that every AWS call in aws.py, cloud.py and ledger.py, and every
method that makes one, has a contract test here.
"""

from __future__ import annotations

import ast
import base64
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
from botocore import xform_name
from botocore.stub import ANY, Stubber
from packaging.version import Version

from release.aws import Aws, Target
from release.cloud import Cloud
from release.config import RefreshPreferences
from release.errors import AwsError, LeaseLost, LockHeld, NotFound
from release.ledger import Ledger
from release.model import TAG_APP, TAG_FINGERPRINT, TAG_VALIDATED, TAG_VERSION, AmiRef, Lock, RefreshState
from release.record import Lease, Outcome, ReleaseRecord, dump

REGION = "us-east-1"
ROOT = Path(__file__).parents[2]
# The services Kiln's adapter uses (botocore's names).
SERVICES = ("autoscaling", "cloudwatch", "dynamodb", "ec2", "elbv2", "secretsmanager", "ssm", "sts")
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


class Stubs:
    """A Stubber on each client `aws` hands out. Clients are cached per (service, region, once),
    so the stubbed client is the one Cloud and Ledger use. Every client of the target's region is
    stubbed from the start, so an unexpected call fails at once instead of reaching for a network."""

    def __init__(self, aws: Aws) -> None:
        self.aws = aws
        self._stubbers: dict[tuple[str, str, bool], Stubber] = {}
        for service in SERVICES:
            self(service)
        self("autoscaling", once=True)

    def __call__(self, service: str, region: str | None = None, *, once: bool = False) -> Stubber:
        key = (service, region or self.aws.target.region, once)
        if key not in self._stubbers:
            stubber = Stubber(self.aws.client(service, region, once=once))
            stubber.activate()
            self._stubbers[key] = stubber
        return self._stubbers[key]

    def assert_done(self) -> None:
        for stubber in self._stubbers.values():
            stubber.deactivate()
        for stubber in self._stubbers.values():
            stubber.assert_no_pending_responses()


@pytest.fixture(scope="module")
def aws() -> Aws:
    """One Aws for the module (its clients take a while to make); each test stubs them afresh.

    The sandbox's shape: an endpoint (a closed loopback port) and fake keys, so nothing needs
    credentials. One attempt per call: a canned error is Kiln's to handle, not botocore's to retry."""
    return Aws(Target(region=REGION, endpoint_url="http://127.0.0.1:1"), attempts=1)


@pytest.fixture
def stubs(aws: Aws) -> Iterator[Stubs]:
    stubs = Stubs(aws)
    yield stubs
    stubs.assert_done()


@pytest.fixture
def cloud(aws: Aws, stubs: Stubs) -> Cloud:
    return Cloud(aws)


def paged(stubber: Stubber, method: str, params: dict[str, Any], answers: list[dict[str, Any]], *,
          token: tuple[str, str] = ("NextToken", "NextToken"),
          marker: Callable[[int], Any] = lambda n: f"page-{n}") -> None:
    """Queue a multi-page answer: page n+1 is asked for with the marker page n returned
    (`token`: the request's and the answer's name for it)."""
    asked, answered = token
    for n, answer in enumerate(answers, start=1):
        last = n == len(answers)
        stubber.add_response(method, answer if last else {**answer, answered: marker(n + 1)},
                             params if n == 1 else {**params, asked: marker(n)})


def image(image_id: str, *, version: str | None = None, created: str = "2025-01-01T00:00:00.000Z",
          snapshots: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    tags = [{"Key": TAG_APP, "Value": "webapp"}]
    if version:
        tags.append({"Key": TAG_VERSION, "Value": version})
    return {"ImageId": image_id, "Name": f"webapp-{version or 'base'}", "State": "available", "CreationDate": created,
            "Tags": tags, "RootDeviceName": "/dev/xvda",
            "BlockDeviceMappings": [{"DeviceName": f"/dev/xvd{chr(97 + n)}", "Ebs": {"SnapshotId": s}}
                                    for n, s in enumerate(snapshots)], **extra}


def template_version(number: int, image_id: str, *, name: str = "webapp", default: bool = False,
                     description: str = "", tokens: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"ImageId": image_id}
    if tokens:
        data["MetadataOptions"] = {"HttpTokens": tokens}
    return {"LaunchTemplateId": "lt-0123", "LaunchTemplateName": name, "VersionNumber": number,
            "VersionDescription": description, "CreateTime": T0, "DefaultVersion": default,
            "LaunchTemplateData": data}


def asg(name: str = "webapp", *, instances: list[dict[str, Any]] | None = None,
        **extra: Any) -> dict[str, Any]:
    return {"AutoScalingGroupName": name, "MinSize": 2, "MaxSize": 4, "DesiredCapacity": 2, "DefaultCooldown": 300,
            "AvailabilityZones": ["us-east-1a"], "HealthCheckType": "ELB", "CreatedTime": T0,
            "Instances": instances or [], **extra}


def asg_instance(instance_id: str, version: str = "7", lifecycle: str = "InService") -> dict[str, Any]:
    return {"InstanceId": instance_id, "AvailabilityZone": "us-east-1a", "LifecycleState": lifecycle,
            "HealthStatus": "Healthy", "ProtectedFromScaleIn": False,
            "LaunchTemplate": {"LaunchTemplateId": "lt-0123", "LaunchTemplateName": "webapp", "Version": version}}


def reservation(*instances: dict[str, Any]) -> dict[str, Any]:
    return {"ReservationId": "r-1", "Instances": list(instances)}


def ec2_instance(instance_id: str, image_id: str = "ami-new", state: str = "running", **extra: Any) -> dict[str, Any]:
    return {"InstanceId": instance_id, "ImageId": image_id, "State": {"Name": state, "Code": 16},
            "LaunchTime": T0, **extra}


def refresh_answer(refresh_id: str, status: str, version: str = "8", **extra: Any) -> dict[str, Any]:
    return {"InstanceRefreshId": refresh_id, "AutoScalingGroupName": "webapp", "Status": status,
            "StatusReason": f"{status} reason", "StartTime": T0, "PercentageComplete": 50, "InstancesToUpdate": 1,
            "DesiredConfiguration": {"LaunchTemplate": {"LaunchTemplateName": "webapp", "Version": version}}, **extra}


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------

APP_FILTERS = [{"Name": "tag:" + TAG_APP, "Values": ["webapp"]}]


def test_app_images_pages_through_every_image_newest_first(cloud: Cloud, stubs: Stubs) -> None:
    validated = image("ami-2", version="1.1.0", created="2025-02-01T00:00:00.000Z",
                      DeprecationTime="2026-02-01T00:00:00.000Z", ImdsSupport="v2.0")
    validated["Tags"] += [{"Key": TAG_VALIDATED, "Value": "true"}, {"Key": TAG_FINGERPRINT, "Value": "fp2"}]
    paged(stubs("ec2"), "describe_images", {"Owners": ["self"], "Filters": APP_FILTERS, "IncludeDeprecated": True},
          [{"Images": [image("ami-1", version="1.0.0")]}, {"Images": [validated]},
           {"Images": [image("ami-3", version="not a version", created="2025-01-15T00:00:00.000Z")]}])

    refs = cloud.app_images("webapp")

    assert [r.image_id for r in refs] == ["ami-2", "ami-3", "ami-1"]
    newest = refs[0]
    assert (newest.version, newest.validated, newest.fingerprint, newest.region) == (
        Version("1.1.0"), True, "fp2", REGION)
    assert newest.created_at == datetime(2025, 2, 1, tzinfo=UTC)
    assert newest.deprecation_time == datetime(2026, 2, 1, tzinfo=UTC)
    assert newest.imds_support == "v2.0"
    assert (refs[1].version, refs[1].validated) == (None, None)


def test_app_images_of_one_version_filters_on_its_tag(cloud: Cloud, stubs: Stubs) -> None:
    filters = [*APP_FILTERS, {"Name": "tag:" + TAG_VERSION, "Values": ["1.0.0"]}]
    stubs("ec2").add_response("describe_images", {"Images": []},
                              {"Owners": ["self"], "Filters": filters, "IncludeDeprecated": True})
    assert cloud.app_images("webapp", "1.0.0") == []


def test_foundations_are_not_app_images_and_are_listed_apart(cloud: Cloud, stubs: Stubs) -> None:
    below = image("ami-f", created="2025-01-01T00:00:00.000Z")
    below["Tags"] += [{"Key": "kiln:layer", "Value": "foundation"}]
    above = image("ami-a", version="1.0.0", created="2025-01-02T00:00:00.000Z")
    above["Tags"] += [{"Key": "kiln:layer", "Value": "app"}, {"Key": "kiln:foundation", "Value": "ami-f"}]
    stubs("ec2").add_response("describe_images", {"Images": [below, above]},
                              {"Owners": ["self"], "Filters": APP_FILTERS, "IncludeDeprecated": True})
    [app] = cloud.app_images("webapp")
    assert (app.image_id, app.foundation, app.is_foundation) == ("ami-a", "ami-f", False)
    filters = [*APP_FILTERS, {"Name": "tag:kiln:layer", "Values": ["foundation"]}]
    stubs("ec2").add_response("describe_images", {"Images": [below]},
                              {"Owners": ["self"], "Filters": filters, "IncludeDeprecated": True})
    [foundation] = cloud.foundation_images("webapp")
    assert foundation.image_id == "ami-f" and foundation.is_foundation and foundation.version is None


def test_catalogue_lists_each_image_with_its_snapshots(cloud: Cloud, stubs: Stubs) -> None:
    paged(stubs("ec2"), "describe_images", {"Owners": ["self"], "Filters": APP_FILTERS, "IncludeDeprecated": True},
          [{"Images": [image("ami-1", version="1.0.0", snapshots=("snap-1", "snap-2"))]},
           {"Images": [image("ami-2", version="1.1.0")]}])
    found = cloud.catalogue("webapp")
    assert [(ref.image_id, snaps) for ref, snaps in found] == [("ami-1", ("snap-1", "snap-2")), ("ami-2", ())]


def test_image_found(cloud: Cloud, stubs: Stubs) -> None:
    stubs("ec2").add_response("describe_images", {"Images": [image("ami-1", version="1.0.0")]},
                              {"ImageIds": ["ami-1"], "IncludeDeprecated": True})
    ref = cloud.image("ami-1")
    assert ref is not None and (ref.image_id, ref.version, ref.root_device_name) == ("ami-1", Version("1.0.0"),
                                                                                      "/dev/xvda")


@pytest.mark.parametrize("code", ["InvalidAMIID.NotFound", "InvalidAMIID.Malformed", "InvalidAMIID.Unavailable"])
def test_an_image_ec2_does_not_know_is_none(cloud: Cloud, stubs: Stubs, code: str) -> None:
    stubs("ec2").add_client_error("describe_images", code, "The image id '[ami-1]' does not exist",
                                  expected_params={"ImageIds": ["ami-1"], "IncludeDeprecated": True})
    assert cloud.image("ami-1") is None


def test_an_image_ec2_answers_without_is_none(cloud: Cloud, stubs: Stubs) -> None:
    stubs("ec2").add_response("describe_images", {"Images": []}, {"ImageIds": ["ami-1"], "IncludeDeprecated": True})
    assert cloud.image("ami-1") is None


def test_a_denied_image_lookup_is_an_aws_error_naming_the_permission(cloud: Cloud, stubs: Stubs) -> None:
    stubs("ec2").add_client_error("describe_images", "UnauthorizedOperation", "You are not authorized",
                                  http_status_code=403,
                                  expected_params={"ImageIds": ["ami-1"], "IncludeDeprecated": True})
    with pytest.raises(AwsError) as caught:
        cloud.image("ami-1")
    err = caught.value
    assert (err.operation, err.resource, err.code, err.status, err.transient) == (
        "DescribeImages", "ami-1", "UnauthorizedOperation", 403, False)
    assert "iam/" in str(err)


def test_base_image_is_the_newest_available_match(cloud: Cloud, stubs: Stubs) -> None:
    stubs("ec2").add_response(
        "describe_images",
        {"Images": [image("ami-b", created="2025-02-01T00:00:00.000Z"),
                    image("ami-c", created="2025-03-01T00:00:00.000Z"),
                    image("ami-a", created="2025-01-01T00:00:00.000Z")]},
        {"Owners": ["136693071363"], "Filters": [{"Name": "name", "Values": ["debian-12-amd64-*"]},
                                                 {"Name": "state", "Values": ["available"]}]})
    ref = cloud.base_image(owners=("136693071363",), name="debian-12-amd64-*", pinned=None)
    assert ref is not None and ref.image_id == "ami-c"


def test_base_image_with_no_match_is_none(cloud: Cloud, stubs: Stubs) -> None:
    stubs("ec2").add_response("describe_images", {"Images": []}, {"Owners": ["self", "amazon"], "Filters": ANY})
    assert cloud.base_image(owners=("self", "amazon"), name="x", pinned=None) is None


def test_a_pinned_base_image_is_looked_up_by_id(cloud: Cloud, stubs: Stubs) -> None:
    stubs("ec2").add_response("describe_images", {"Images": [image("ami-pin")]},
                              {"ImageIds": ["ami-pin"], "IncludeDeprecated": True})
    ref = cloud.base_image(owners=("self",), name="ignored", pinned="ami-pin")
    assert ref is not None and ref.image_id == "ami-pin"


def test_tag_image_tags_the_image_and_its_snapshots(cloud: Cloud, stubs: Stubs) -> None:
    ec2 = stubs("ec2")
    ec2.add_response("describe_images", {"Images": [image("ami-1", snapshots=("snap-1",))]},
                     {"ImageIds": ["ami-1"], "IncludeDeprecated": True})
    ec2.add_response("create_tags", {}, {"Resources": ["ami-1", "snap-1"],
                                         "Tags": [{"Key": TAG_VALIDATED, "Value": "true"}]})
    cloud.tag_image("ami-1", {TAG_VALIDATED: "true"})


def test_snapshots_of_a_vanished_image_are_none(cloud: Cloud, stubs: Stubs) -> None:
    stubs("ec2").add_response("describe_images", {"Images": []}, {"ImageIds": ["ami-1"], "IncludeDeprecated": True})
    assert cloud.snapshots_of("ami-1") == ()


def test_delete_image_deregisters_then_deletes_its_snapshots(cloud: Cloud, stubs: Stubs) -> None:
    ec2 = stubs("ec2")
    ec2.add_response("deregister_image", {}, {"ImageId": "ami-1"})
    ec2.add_response("delete_snapshot", {}, {"SnapshotId": "snap-1"})
    ec2.add_response("delete_snapshot", {}, {"SnapshotId": "snap-2"})
    cloud.delete_image("ami-1", ("snap-1", "snap-2"))


def test_a_snapshot_in_use_stops_the_deletion_with_its_name(cloud: Cloud, stubs: Stubs) -> None:
    ec2 = stubs("ec2")
    ec2.add_response("deregister_image", {}, {"ImageId": "ami-1"})
    ec2.add_client_error("delete_snapshot", "InvalidSnapshot.InUse", "in use", expected_params={"SnapshotId": "snap-1"})
    with pytest.raises(AwsError) as caught:
        cloud.delete_image("ami-1", ("snap-1", "snap-2"))
    assert (caught.value.operation, caught.value.resource) == ("DeleteSnapshot", "snap-1")


def test_deprecate_image(cloud: Cloud, stubs: Stubs) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    stubs("ec2").add_response("enable_image_deprecation", {"Return": True}, {"ImageId": "ami-1", "DeprecateAt": at})
    stubs("ec2", "eu-west-1").add_response("enable_image_deprecation", {"Return": True},
                                           {"ImageId": "ami-2", "DeprecateAt": at})
    cloud.deprecate_image("ami-1", at)
    cloud.deprecate_image("ami-2", at, "eu-west-1")


def test_require_imds_v2_marks_the_image(cloud: Cloud, stubs: Stubs) -> None:
    stubs("ec2").add_response("modify_image_attribute", {},
                              {"ImageId": "ami-1", "ImdsSupport": {"Value": "v2.0"}})
    stubs("ec2", "eu-west-1").add_response("modify_image_attribute", {},
                                           {"ImageId": "ami-2", "ImdsSupport": {"Value": "v2.0"}})
    cloud.require_imds_v2("ami-1")
    cloud.require_imds_v2("ami-2", "eu-west-1")


@pytest.mark.parametrize("kms", [None, "arn:aws:kms:us-east-1:111122223333:key/k"])
def test_copy_image_brings_its_tags_and_is_encrypted_with_a_named_key(cloud: Cloud, stubs: Stubs,
                                                                      kms: str | None) -> None:
    tags = [{"Key": "kiln:app", "Value": "webapp"}, {"Key": "kiln:version", "Value": "1.0.0"}]
    params: dict[str, Any] = {"SourceRegion": "eu-west-1", "SourceImageId": "ami-src", "Name": "webapp-1.0.0",
                              # the image and its snapshots, explicitly: also right for a copy by another account
                              "TagSpecifications": [{"ResourceType": "image", "Tags": tags},
                                                    {"ResourceType": "snapshot", "Tags": tags}]}
    if kms:
        params.update(Encrypted=True, KmsKeyId=kms)
    stubs("ec2").add_response("copy_image", {"ImageId": "ami-copy"}, params)
    source = AmiRef(image_id="ami-src", name="webapp-1.0.0", region="eu-west-1", state="available", created_at=T0,
                    version=Version("1.0.0"), fingerprint="fp", validated=True,
                    tags={"kiln:version": "1.0.0", "aws:ec2launchtemplate:id": "lt-1", "kiln:app": "webapp"})
    assert cloud.copy_image(source, kms) == "ami-copy"


def test_share_image_lets_the_other_account_launch_and_copy_it(cloud: Cloud, stubs: Stubs) -> None:
    ec2 = stubs("ec2")
    ec2.add_response("describe_images", {"Images": [{"ImageId": "ami-1", "BlockDeviceMappings": [
        {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": "snap-1"}}, {"DeviceName": "/dev/xvdb", "Ebs": {}},
        {"DeviceName": "/dev/xvdc", "VirtualName": "ephemeral0"}]}]},
        {"ImageIds": ["ami-1"], "IncludeDeprecated": True})
    ec2.add_response("modify_image_attribute", {},
                     {"ImageId": "ami-1", "LaunchPermission": {"Add": [{"UserId": "111122223333"}]}})
    ec2.add_response("modify_snapshot_attribute", {},  # CopyImage by that account reads the snapshots
                     {"SnapshotId": "snap-1", "Attribute": "createVolumePermission", "OperationType": "add",
                      "UserIds": ["111122223333"]})
    assert cloud.share_image("ami-1", "111122223333") == ["snap-1"]


def test_caller_account(cloud: Cloud, stubs: Stubs) -> None:
    stubs("sts").add_response("get_caller_identity", {"Account": "111122223333", "UserId": "AIDA",
                                                      "Arn": "arn:aws:iam::111122223333:user/ci"}, {})
    assert cloud.caller_account() == "111122223333"


ROLE = "arn:aws:iam::333333333333:role/kiln-deploy"
ROLE_TARGET = Target(region=REGION, role_arn=ROLE, session_name="kiln-ana", external_id="kiln-prod-7f3a",
                     role_duration=7200)


@pytest.fixture
def base_sts(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stubber]:
    """The STS client of the credentials a role is assumed from (keys in the environment). Aws
    makes that session itself: every boto3 session's "sts" client is this stubbed one."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIABASEEXAMPLE00001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "base-secret")
    sts = boto3.Session(region_name=REGION, aws_access_key_id="stub", aws_secret_access_key="stub").client(
        "sts", endpoint_url="http://127.0.0.1:1")
    original = boto3.Session.client

    def client(self: boto3.Session, service_name: str, *args: Any, **kwargs: Any) -> Any:
        return sts if service_name == "sts" else original(self, service_name, *args, **kwargs)

    monkeypatch.setattr(boto3.Session, "client", client)
    with Stubber(sts) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


def signed_in(aws: Aws) -> tuple[str, str, str | None]:
    """The credentials Aws's session signs with, fetched now (as its first real call would)."""
    credentials = aws._session.get_credentials()
    assert credentials is not None
    frozen = credentials.get_frozen_credentials()
    return frozen.access_key, frozen.secret_key, frozen.token


def test_role_assumption_asks_sts_for_the_role_as_configured(base_sts: Stubber) -> None:
    base_sts.add_response("get_caller_identity", {"Account": "333333333333", "UserId": "AIDAANA",
                                                  "Arn": "arn:aws:iam::333333333333:user/ana"}, {})
    base_sts.add_response(
        "assume_role",
        {"Credentials": {"AccessKeyId": "ASIAROLEEXAMPLE00001", "SecretAccessKey": "role-secret",
                         "SessionToken": "token", "Expiration": datetime.now(UTC) + timedelta(hours=2)},
         "AssumedRoleUser": {"AssumedRoleId": "AROA:kiln-ana", "Arn": f"{ROLE}/kiln-ana"}},
        {"RoleArn": ROLE, "RoleSessionName": "kiln-ana", "DurationSeconds": 7200, "ExternalId": "kiln-prod-7f3a"})
    assert signed_in(Aws(ROLE_TARGET)) == ("ASIAROLEEXAMPLE00001", "role-secret", "token")


def test_credentials_that_already_act_as_the_role_are_used_as_they_are(base_sts: Stubber) -> None:
    # A CI job signed in as the role through OIDC: a role cannot assume itself, so none is assumed.
    base_sts.add_response("get_caller_identity", {"Account": "333333333333", "UserId": "AROA:gh-run-1",
                                                  "Arn": "arn:aws:sts::333333333333:assumed-role/kiln-deploy/gh-1"},
                          {})
    assert signed_in(Aws(ROLE_TARGET)) == ("AKIABASEEXAMPLE00001", "base-secret", None)


def test_expired_credentials_say_how_to_refresh_them(cloud: Cloud, stubs: Stubs) -> None:
    stubs("sts").add_client_error("get_caller_identity", "ExpiredToken", "The security token included in the "
                                  "request is expired", http_status_code=403, expected_params={})
    with pytest.raises(AwsError, match="aws sso login") as caught:
        cloud.caller_account()
    assert (caught.value.code, caught.value.exit_code) == ("ExpiredToken", 4)


def test_image_references_pages_through_groups_templates_instances_and_parameters(cloud: Cloud,
                                                                                  stubs: Stubs) -> None:
    asg_, ec2, ssm = stubs("autoscaling"), stubs("ec2"), stubs("ssm")
    paged(asg_, "describe_auto_scaling_groups", {},
          [{"AutoScalingGroups": [asg("a", LaunchTemplate={"LaunchTemplateName": "webapp", "Version": "3"})]},
           {"AutoScalingGroups": [asg("b", LaunchTemplate={"LaunchTemplateName": "other", "Version": "$Latest"}),
                                  asg("c")]}])
    paged(ec2, "describe_launch_templates", {},
          [{"LaunchTemplates": [{"LaunchTemplateName": "webapp", "LaunchTemplateId": "lt-1",
                                 "DefaultVersionNumber": 4, "LatestVersionNumber": 5}]},
           {"LaunchTemplates": [{"LaunchTemplateName": "other", "LaunchTemplateId": "lt-2",
                                 "DefaultVersionNumber": 1, "LatestVersionNumber": 2}]}])
    paged(ec2, "describe_launch_template_versions", {"LaunchTemplateName": "webapp"},
          [{"LaunchTemplateVersions": [template_version(n, f"ami-{n}") for n in (1, 2, 3)]},
           {"LaunchTemplateVersions": [template_version(n, f"ami-{n}") for n in (4, 5)]}])
    ec2.add_response("describe_launch_template_versions",
                     {"LaunchTemplateVersions": [template_version(n, f"ami-o{n}", name="other") for n in (1, 2)]},
                     {"LaunchTemplateName": "other"})
    paged(ec2, "describe_instances",
          {"Filters": [{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}]},
          [{"Reservations": [reservation(ec2_instance("i-1", "ami-3"))]},
           {"Reservations": [reservation(ec2_instance("i-2", "ami-3"), ec2_instance("i-3", "ami-x"))]}])
    names = [f"/p/{n:02}" for n in range(11)]
    paged(ssm, "describe_parameters", {},
          [{"Parameters": [{"Name": n} for n in names[:6]]}, {"Parameters": [{"Name": n} for n in names[6:]]}])
    ssm.add_response("get_parameters", {"Parameters": [{"Name": "/p/00", "Type": "String", "Value": "ami-5"},
                                                       {"Name": "/p/01", "Type": "String", "Value": "hello"}]},
                     {"Names": names[:10]})  # GetParameters takes at most 10 names
    ssm.add_response("get_parameters", {"Parameters": [{"Name": "/p/10", "Type": "String", "Value": "ami-5"}]},
                     {"Names": names[10:]})

    templates, instances, parameters = cloud.image_references()

    assert templates == {"ami-3": ["webapp v3 (used by an Auto Scaling group)"], "ami-4": ["webapp v4 (default)"],
                         "ami-5": ["webapp v5 (latest)"], "ami-o1": ["other v1 (default)"],
                         "ami-o2": ["other v2 (used by an Auto Scaling group)"]}
    assert instances == {"ami-3": ["i-1", "i-2"], "ami-x": ["i-3"]}
    assert parameters == {"ami-5": ["/p/00", "/p/10"]}


# ---------------------------------------------------------------------------------------------
# Instances
# ---------------------------------------------------------------------------------------------


def test_instances_tagged_pages_through_every_match(cloud: Cloud, stubs: Stubs) -> None:
    paged(stubs("ec2"), "describe_instances",
          {"Filters": [{"Name": "tag:kiln:fingerprint", "Values": ["fp"]},
                       {"Name": "instance-state-name", "Values": ["pending", "running"]}]},
          [{"Reservations": [reservation(ec2_instance("i-1"))]}, {"Reservations": []},
           {"Reservations": [reservation(ec2_instance("i-2"), ec2_instance("i-3"))]}])
    assert cloud.instances_tagged({"kiln:fingerprint": "fp"}, states=("pending", "running")) == ["i-1", "i-2", "i-3"]


RUNNING_NAMED = {"Filters": [{"Name": "tag:Name", "Values": ["bastion"]},
                             {"Name": "instance-state-name", "Values": ["running"]}]}


def test_running_instance_named_prefers_the_public_address(cloud: Cloud, stubs: Stubs) -> None:
    paged(stubs("ec2"), "describe_instances", RUNNING_NAMED,
          [{"Reservations": []},
           {"Reservations": [reservation(ec2_instance("i-b", PublicIpAddress="203.0.113.9",
                                                      PrivateIpAddress="10.0.0.9"))]}])
    assert cloud.running_instance_named("bastion") == ("i-b", "203.0.113.9")


def test_running_instance_named_falls_back_to_the_private_address(cloud: Cloud, stubs: Stubs) -> None:
    stubs("ec2").add_response("describe_instances",
                              {"Reservations": [reservation(ec2_instance("i-b", PrivateIpAddress="10.0.0.9"))]},
                              RUNNING_NAMED)
    assert cloud.running_instance_named("bastion") == ("i-b", "10.0.0.9")


@pytest.mark.parametrize(("found", "message"), [
    ([], "no running instances named 'bastion'"),
    ([ec2_instance("i-1", PrivateIpAddress="10.0.0.1"), ec2_instance("i-2", PrivateIpAddress="10.0.0.2")],
     "2 running instances named 'bastion'"),
])
def test_no_or_several_running_instances_named_is_not_found(cloud: Cloud, stubs: Stubs,
                                                            found: list[dict[str, Any]], message: str) -> None:
    stubs("ec2").add_response("describe_instances", {"Reservations": [reservation(*found)] if found else []},
                              RUNNING_NAMED)
    with pytest.raises(NotFound, match=message):
        cloud.running_instance_named("bastion")


def test_launch_from_template_uses_the_default_version_with_another_image(cloud: Cloud, stubs: Stubs) -> None:
    stubs("ec2").add_response(
        "run_instances", {"Instances": [ec2_instance("i-smoke", "ami-1", "pending")]},
        {"LaunchTemplate": {"LaunchTemplateName": "webapp", "Version": "$Default"}, "ImageId": "ami-1",
         "KeyName": "kiln-smoke", "MinCount": 1, "MaxCount": 1,
         "TagSpecifications": [{"ResourceType": "instance", "Tags": [{"Key": "kiln:smoke", "Value": "1.0.0"}]}]})
    assert cloud.launch_from_template("webapp", "ami-1", "kiln-smoke", {"kiln:smoke": "1.0.0"}) == "i-smoke"


def test_fleet_network_is_the_groups_subnets_and_the_templates_security_groups(cloud: Cloud,
                                                                               stubs: Stubs) -> None:
    stubs("autoscaling").add_response(
        "describe_auto_scaling_groups", {"AutoScalingGroups": [asg(VPCZoneIdentifier="subnet-1, subnet-2")]},
        {"AutoScalingGroupNames": ["webapp"]})
    version = template_version(7, "ami-7", default=True)
    version["LaunchTemplateData"].update(SecurityGroupIds=["sg-1"], NetworkInterfaces=[
        {"DeviceIndex": 0, "Groups": ["sg-1", "sg-2"]}])
    stubs("ec2").add_response("describe_launch_template_versions", {"LaunchTemplateVersions": [version]},
                              {"LaunchTemplateName": "webapp", "Versions": ["$Default"]})
    assert cloud.fleet_network("webapp", "webapp") == (("subnet-1", "subnet-2"), ("sg-1", "sg-2"))


def test_fleet_network_of_a_missing_group_and_template_is_empty(cloud: Cloud, stubs: Stubs) -> None:
    stubs("autoscaling").add_response("describe_auto_scaling_groups", {"AutoScalingGroups": []},
                                      {"AutoScalingGroupNames": ["webapp"]})
    stubs("ec2").add_client_error("describe_launch_template_versions", "InvalidLaunchTemplateName.NotFoundException",
                                  "does not exist",
                                  expected_params={"LaunchTemplateName": "webapp", "Versions": ["$Default"]})
    assert cloud.fleet_network("webapp", "webapp") == ((), ())


def test_instance_state_and_private_address(cloud: Cloud, stubs: Stubs) -> None:
    stubs("ec2").add_response("describe_instances",
                              {"Reservations": [reservation(ec2_instance("i-1", PrivateIpAddress="10.0.0.5"))]},
                              {"InstanceIds": ["i-1"]})
    assert cloud.instance("i-1") == ("running", "10.0.0.5")


def test_an_instance_ec2_does_not_show_yet_is_pending(cloud: Cloud, stubs: Stubs) -> None:
    # EC2 is eventually consistent: right after RunInstances, DescribeInstances may not know the
    # instance yet. The smoke test asks again instead of failing the bake.
    stubs("ec2").add_client_error("describe_instances", "InvalidInstanceID.NotFound",
                                  "The instance ID 'i-1' does not exist", expected_params={"InstanceIds": ["i-1"]})
    stubs("ec2").add_response("describe_instances", {"Reservations": []}, {"InstanceIds": ["i-1"]})
    assert cloud.instance("i-1") == ("pending", None)
    assert cloud.instance("i-1") == ("pending", None)


def test_terminate(cloud: Cloud, stubs: Stubs) -> None:
    stubs("ec2").add_response("terminate_instances", {"TerminatingInstances": []}, {"InstanceIds": ["i-1"]})
    cloud.terminate("i-1")


def test_key_pairs_are_imported_and_deleted(cloud: Cloud, stubs: Stubs) -> None:
    ec2 = stubs("ec2")
    ec2.add_response("import_key_pair", {"KeyName": "kiln-smoke", "KeyPairId": "key-1"},
                     {"KeyName": "kiln-smoke", "PublicKeyMaterial": b"ssh-ed25519 AAAA kiln"})
    ec2.add_response("delete_key_pair", {"Return": True}, {"KeyName": "kiln-smoke"})
    cloud.import_key_pair("kiln-smoke", "ssh-ed25519 AAAA kiln")
    cloud.delete_key_pair("kiln-smoke")


def test_console_output_is_decoded(cloud: Cloud, stubs: Stubs) -> None:
    ec2 = stubs("ec2")
    wire = base64.b64encode(b"ssh-ed25519 AAAA root@i-1").decode()  # EC2 sends it base64; botocore decodes it
    ec2.add_response("get_console_output", {"InstanceId": "i-1", "Output": wire}, {"InstanceId": "i-1"})
    ec2.add_response("get_console_output", {"InstanceId": "i-1"}, {"InstanceId": "i-1"})
    assert cloud.console_output("i-1") == "ssh-ed25519 AAAA root@i-1"
    assert cloud.console_output("i-1") == ""  # none yet


CMD = "0b1f3c5e-7a9d-4e2b-8c6f-1a2b3c4d5e6f"


def test_send_shell_command_runs_the_shell_document_on_one_instance(cloud: Cloud, stubs: Stubs) -> None:
    stubs("ssm").add_response(
        "send_command", {"Command": {"CommandId": CMD}},
        {"InstanceIds": ["i-1"], "DocumentName": "AWS-RunShellScript", "Comment": "kiln: cat",
         "Parameters": {"commands": ["cat /etc/hostname"], "executionTimeout": ["10"]}, "TimeoutSeconds": 30})
    assert cloud.send_shell_command("i-1", ["cat /etc/hostname"], timeout_s=10, comment="kiln: cat") == CMD


def test_command_invocation_reads_status_code_and_output(cloud: Cloud, stubs: Stubs) -> None:
    ssm = stubs("ssm")
    ssm.add_client_error("get_command_invocation", "InvocationDoesNotExist", http_status_code=400,
                         expected_params={"CommandId": CMD, "InstanceId": "i-1"})
    ssm.add_response("get_command_invocation",
                     {"CommandId": CMD, "InstanceId": "i-1", "Status": "InProgress", "StatusDetails": "InProgress",
                      "ResponseCode": -1}, {"CommandId": CMD, "InstanceId": "i-1"})
    ssm.add_response("get_command_invocation",
                     {"CommandId": CMD, "InstanceId": "i-1", "Status": "Failed", "StatusDetails": "Failed",
                      "ResponseCode": 2, "StandardOutputContent": "out", "StandardErrorContent": "no such file"},
                     {"CommandId": CMD, "InstanceId": "i-1"})
    assert cloud.command_invocation(CMD, "i-1") is None  # just sent: SSM does not know it yet
    running = cloud.command_invocation(CMD, "i-1")
    assert running is not None and not running.finished
    done = cloud.command_invocation(CMD, "i-1")
    assert done is not None and done.finished and (done.exit_code, done.stdout, done.stderr) == (2, "out",
                                                                                                "no such file")


# ---------------------------------------------------------------------------------------------
# Launch templates
# ---------------------------------------------------------------------------------------------


def test_template_versions_pages_through_every_version_oldest_first(cloud: Cloud, stubs: Stubs) -> None:
    paged(stubs("ec2"), "describe_launch_template_versions", {"LaunchTemplateName": "webapp"},
          [{"LaunchTemplateVersions": [template_version(3, "ami-3", tokens="required"),
                                       template_version(2, "ami-2", default=True)]},
           {"LaunchTemplateVersions": [template_version(1, "ami-1", description="kiln release 1.0.0 [r1]")]}])
    versions = cloud.template_versions("webapp")
    assert [(v.number, v.image_id, v.is_default, v.http_tokens) for v in versions] == [
        (1, "ami-1", False, None), (2, "ami-2", True, None), (3, "ami-3", False, "required")]
    assert (versions[0].template_id, versions[0].description, versions[0].created_at) == (
        "lt-0123", "kiln release 1.0.0 [r1]", T0)


@pytest.mark.parametrize("code", ["InvalidLaunchTemplateName.NotFoundException", "InvalidLaunchTemplateId.NotFound"])
def test_template_versions_of_a_missing_template_are_none(cloud: Cloud, stubs: Stubs, code: str) -> None:
    stubs("ec2").add_client_error("describe_launch_template_versions", code, "does not exist",
                                  expected_params={"LaunchTemplateName": "webapp"})
    assert cloud.template_versions("webapp") == []


def test_template_versions_throttled_is_a_transient_aws_error(cloud: Cloud, stubs: Stubs) -> None:
    stubs("ec2").add_client_error("describe_launch_template_versions", "RequestLimitExceeded", "Request limit "
                                  "exceeded.", http_status_code=503, expected_params={"LaunchTemplateName": "webapp"})
    with pytest.raises(AwsError) as caught:
        cloud.template_versions("webapp")
    assert (caught.value.code, caught.value.transient) == ("RequestLimitExceeded", True)


def test_template_version_resolves_an_alias(cloud: Cloud, stubs: Stubs) -> None:
    stubs("ec2").add_response("describe_launch_template_versions",
                              {"LaunchTemplateVersions": [template_version(7, "ami-7", default=True)]},
                              {"LaunchTemplateName": "webapp", "Versions": ["$Default"]})
    version = cloud.template_version("webapp", "$Default")
    assert version is not None and (version.number, version.image_id, version.is_default) == (7, "ami-7", True)


@pytest.mark.parametrize("code", ["InvalidLaunchTemplateName.NotFoundException", "InvalidLaunchTemplateId.NotFound",
                                  "InvalidLaunchTemplateId.VersionNotFound"])
def test_a_missing_template_version_is_none(cloud: Cloud, stubs: Stubs, code: str) -> None:
    stubs("ec2").add_client_error("describe_launch_template_versions", code, "does not exist",
                                  expected_params={"LaunchTemplateName": "webapp", "Versions": ["9"]})
    assert cloud.template_version("webapp", "9") is None


def test_a_template_version_lookup_denied_is_an_aws_error(cloud: Cloud, stubs: Stubs) -> None:
    stubs("ec2").add_client_error("describe_launch_template_versions", "UnauthorizedOperation", "denied",
                                  http_status_code=403,
                                  expected_params={"LaunchTemplateName": "webapp", "Versions": ["9"]})
    with pytest.raises(AwsError, match="UnauthorizedOperation"):
        cloud.template_version("webapp", "9")


def test_find_template_version_pages_until_the_marked_version(cloud: Cloud, stubs: Stubs) -> None:
    paged(stubs("ec2"), "describe_launch_template_versions", {"LaunchTemplateName": "webapp", "MinVersion": "7"},
          [{"LaunchTemplateVersions": [template_version(7, "ami-7", description="kiln release 1 [abc]"),
                                       template_version(8, "ami-8", description="someone else")]},
           {"LaunchTemplateVersions": [template_version(9, "ami-9", description="kiln release 2 [abc]")]}])
    found = cloud.find_template_version("webapp", 7, "[abc]")
    assert found is not None and found.number == 9  # v7 carries the marker but is not newer than 7


def test_find_template_version_without_a_match_is_none(cloud: Cloud, stubs: Stubs) -> None:
    paged(stubs("ec2"), "describe_launch_template_versions", {"LaunchTemplateName": "webapp", "MinVersion": "7"},
          [{"LaunchTemplateVersions": [template_version(7, "ami-7")]}, {"LaunchTemplateVersions": []}])
    assert cloud.find_template_version("webapp", 7, "[abc]") is None


def test_create_template_version_inherits_from_the_source_and_is_idempotent(cloud: Cloud, stubs: Stubs) -> None:
    stubs("ec2").add_response(
        "create_launch_template_version", {"LaunchTemplateVersion": template_version(8, "ami-new")},
        {"LaunchTemplateName": "webapp", "SourceVersion": "7", "VersionDescription": "d" * 255,
         "LaunchTemplateData": {"ImageId": "ami-new"}, "ClientToken": "t" * 128})
    assert cloud.create_template_version("webapp", 7, "ami-new", "d" * 300, "t" * 200) == 8


def test_set_default_template_version(cloud: Cloud, stubs: Stubs) -> None:
    stubs("ec2").add_response("modify_launch_template", {}, {"LaunchTemplateName": "webapp", "DefaultVersion": "8"})
    cloud.set_default_template_version("webapp", 8)


# ---------------------------------------------------------------------------------------------
# The Auto Scaling group, its instances and target groups
# ---------------------------------------------------------------------------------------------

TG_ARN = "arn:aws:elasticloadbalancing:us-east-1:111122223333:targetgroup/webapp/0123"
LB_ARN = "arn:aws:elasticloadbalancing:us-east-1:111122223333:loadbalancer/app/webapp/0123"


def test_group_joins_the_group_its_instances_and_their_target_health(cloud: Cloud, stubs: Stubs) -> None:
    stubs("autoscaling").add_response(
        "describe_auto_scaling_groups",
        {"AutoScalingGroups": [asg(instances=[asg_instance("i-1"), asg_instance("i-2", "8", "Pending")],
                                   LaunchTemplate={"LaunchTemplateId": "lt-0123", "LaunchTemplateName": "webapp",
                                                   "Version": "7"},
                                   HealthCheckGracePeriod=120, TargetGroupARNs=["arn:ignored"])]},
        {"AutoScalingGroupNames": ["webapp"]})
    elb = stubs("elbv2")
    elb.add_response("describe_target_groups", {"TargetGroups": [{"TargetGroupArn": TG_ARN}]}, {"Names": ["webapp"]})
    elb.add_response("describe_target_health",
                     {"TargetHealthDescriptions": [{"Target": {"Id": "i-1"}, "TargetHealth": {"State": "healthy"}}]},
                     {"TargetGroupArn": TG_ARN})
    stubs("ec2").add_response(
        "describe_instances",
        {"Reservations": [reservation(ec2_instance("i-1", "ami-old", PrivateIpAddress="10.0.0.1"),
                                      ec2_instance("i-2", "ami-new", "pending"))]},
        {"InstanceIds": ["i-1", "i-2"]})

    group = cloud.group("webapp", ("webapp",))  # target groups by name: looked up first

    assert group is not None
    assert (group.min_size, group.max_size, group.desired_capacity, group.health_check_grace_period) == (2, 4, 2, 120)
    assert (group.launch_template_id, group.launch_template_name, group.launch_template_version) == (
        "lt-0123", "webapp", "7")
    first, second = group.instances
    assert (first.instance_id, first.image_id, first.launch_template_version, first.lifecycle, first.asg_health,
            first.target_health, first.private_ip, first.launched_at) == (
        "i-1", "ami-old", "7", "InService", "Healthy", "healthy", "10.0.0.1", T0)
    assert (second.image_id, second.lifecycle, second.target_health, second.private_ip) == (
        "ami-new", "Pending", "unregistered", None)


def test_group_with_a_mixed_instances_policy_and_its_own_target_groups(cloud: Cloud, stubs: Stubs) -> None:
    spec = {"LaunchTemplateId": "lt-0123", "LaunchTemplateName": "webapp", "Version": "$Latest"}
    stubs("autoscaling").add_response(
        "describe_auto_scaling_groups",
        {"AutoScalingGroups": [asg(MixedInstancesPolicy={"LaunchTemplate": {"LaunchTemplateSpecification": spec}},
                                   TargetGroupARNs=[TG_ARN])]},
        {"AutoScalingGroupNames": ["webapp"]})
    stubs("elbv2").add_response("describe_target_health", {"TargetHealthDescriptions": []}, {"TargetGroupArn": TG_ARN})
    group = cloud.group("webapp")
    assert group is not None and (group.launch_template_version, group.instances) == ("$Latest", ())


def test_a_missing_group_is_none(cloud: Cloud, stubs: Stubs) -> None:
    stubs("autoscaling").add_response("describe_auto_scaling_groups", {"AutoScalingGroups": []},
                                      {"AutoScalingGroupNames": ["webapp"]})
    assert cloud.group("webapp") is None


def test_describe_instances_pages_and_asks_nothing_for_no_instances(cloud: Cloud, stubs: Stubs) -> None:
    paged(stubs("ec2"), "describe_instances", {"InstanceIds": ["i-1", "i-2"]},
          [{"Reservations": [reservation(ec2_instance("i-1"))]}, {"Reservations": [reservation(ec2_instance("i-2"))]}])
    assert set(cloud.describe_instances(["i-1", "i-2"])) == {"i-1", "i-2"}
    assert cloud.describe_instances([]) == {}


def test_polling_a_group_asks_ec2_only_about_new_instances_and_the_target_group_once(cloud: Cloud,
                                                                                    stubs: Stubs) -> None:
    # A gate's polls of a group of hundreds cost the same few calls: an instance's image, address
    # and launch time never change, nor does a target group's ARN.
    def poll(*members: str) -> None:
        stubs("autoscaling").add_response(
            "describe_auto_scaling_groups", {"AutoScalingGroups": [asg(instances=[asg_instance(i) for i in members])]},
            {"AutoScalingGroupNames": ["webapp"]})
        stubs("elbv2").add_response("describe_target_health", {"TargetHealthDescriptions": []},
                                    {"TargetGroupArn": TG_ARN})

    stubs("elbv2").add_response("describe_target_groups", {"TargetGroups": [{"TargetGroupArn": TG_ARN}]},
                                {"Names": ["webapp"]})
    poll("i-1", "i-2")
    stubs("ec2").add_response("describe_instances", {"Reservations": [reservation(
        ec2_instance("i-1", PrivateIpAddress="10.0.0.1"), ec2_instance("i-2", state="pending"))]},
        {"InstanceIds": ["i-1", "i-2"]})
    first = cloud.group("webapp", ("webapp",))
    poll("i-1", "i-2", "i-3")  # i-2 had no address yet: asked again, with the newcomer
    stubs("ec2").add_response("describe_instances", {"Reservations": [reservation(
        ec2_instance("i-2", PrivateIpAddress="10.0.0.2"), ec2_instance("i-3", PrivateIpAddress="10.0.0.3"))]},
        {"InstanceIds": ["i-2", "i-3"]})
    second = cloud.group("webapp", ("webapp",))
    poll("i-2", "i-3")  # nothing new: no DescribeInstances, no DescribeTargetGroups
    third = cloud.group("webapp", ("webapp",))
    poll("i-1", "i-3")  # i-1 left and came back into view: forgotten, so asked again
    stubs("ec2").add_response("describe_instances", {"Reservations": [reservation(
        ec2_instance("i-1", PrivateIpAddress="10.0.0.1"))]}, {"InstanceIds": ["i-1"]})
    fourth = cloud.group("webapp", ("webapp",))

    assert first is not None and second is not None and third is not None and fourth is not None
    assert [i.private_ip for i in first.instances] == ["10.0.0.1", None]
    assert [i.private_ip for i in second.instances] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert [(i.instance_id, i.image_id, i.private_ip, i.launched_at) for i in third.instances] == [
        ("i-2", "ami-new", "10.0.0.2", T0), ("i-3", "ami-new", "10.0.0.3", T0)]
    assert [i.private_ip for i in fourth.instances] == ["10.0.0.1", "10.0.0.3"]


def test_target_health_is_per_instance_across_target_groups(cloud: Cloud, stubs: Stubs) -> None:
    other = TG_ARN.replace("webapp/0123", "other/4567")
    elb = stubs("elbv2")
    for arn, state in ((TG_ARN, "healthy"), (other, "draining")):
        elb.add_response("describe_target_health",
                         {"TargetHealthDescriptions": [{"Target": {"Id": "i-1", "Port": 80},
                                                        "TargetHealth": {"State": state}}]},
                         {"TargetGroupArn": arn})
    assert cloud.target_health((TG_ARN, other)) == {"i-1": ["healthy", "draining"]}


def test_an_unknown_target_group_says_where_it_is_configured(cloud: Cloud, stubs: Stubs) -> None:
    stubs("elbv2").add_client_error("describe_target_groups", "TargetGroupNotFound", "One or more target groups not "
                                    "found", expected_params={"Names": ["nope"]})
    with pytest.raises(AwsError, match=r"target_groups") as caught:
        cloud.target_group_arn("nope")
    assert (caught.value.operation, caught.value.code) == ("DescribeTargetGroups", "TargetGroupNotFound")


def test_load_balancer_url_of_a_target_group_by_name(cloud: Cloud, stubs: Stubs) -> None:
    elb = stubs("elbv2")
    elb.add_response("describe_target_groups", {"TargetGroups": [{"TargetGroupArn": TG_ARN}]}, {"Names": ["webapp"]})
    elb.add_response("describe_target_groups", {"TargetGroups": [{"TargetGroupArn": TG_ARN,
                                                                  "LoadBalancerArns": [LB_ARN]}]},
                     {"TargetGroupArns": [TG_ARN]})
    elb.add_response("describe_load_balancers", {"LoadBalancers": [{"LoadBalancerArn": LB_ARN,
                                                                    "DNSName": "webapp-1.elb.amazonaws.com"}]},
                     {"LoadBalancerArns": [LB_ARN]})
    elb.add_response("describe_listeners", {"Listeners": [{"Port": 8080}]}, {"LoadBalancerArn": LB_ARN})
    assert cloud.load_balancer_url(("webapp",)) == "http://webapp-1.elb.amazonaws.com:8080"


def test_load_balancer_url_without_a_balancer_or_listener(cloud: Cloud, stubs: Stubs) -> None:
    elb = stubs("elbv2")
    elb.add_response("describe_target_groups", {"TargetGroups": [{"TargetGroupArn": TG_ARN, "LoadBalancerArns": []}]},
                     {"TargetGroupArns": [TG_ARN]})
    assert cloud.load_balancer_url((TG_ARN,)) is None
    elb.add_response("describe_target_groups", {"TargetGroups": [{"TargetGroupArn": TG_ARN,
                                                                  "LoadBalancerArns": [LB_ARN]}]},
                     {"TargetGroupArns": [TG_ARN]})
    elb.add_response("describe_load_balancers", {"LoadBalancers": [{"DNSName": "lb"}]}, {"LoadBalancerArns": [LB_ARN]})
    elb.add_response("describe_listeners", {"Listeners": []}, {"LoadBalancerArn": LB_ARN})
    assert cloud.load_balancer_url((TG_ARN,)) == "http://lb:80"
    assert cloud.load_balancer_url(()) is None


# ---------------------------------------------------------------------------------------------
# Instance refresh
# ---------------------------------------------------------------------------------------------


def test_refreshes_pages_with_next_token_newest_first(cloud: Cloud, stubs: Stubs) -> None:
    # botocore has no paginator for DescribeInstanceRefreshes: Kiln follows NextToken itself.
    paged(stubs("autoscaling"), "describe_instance_refreshes", {"AutoScalingGroupName": "webapp"},
          [{"InstanceRefreshes": [refresh_answer("r3", "Successful", "9", EndTime=T0, PercentageComplete=100)]},
           {"InstanceRefreshes": [refresh_answer("r2", "Cancelled", "8")]},
           {"InstanceRefreshes": [refresh_answer("r1", "Successful", "7")]}])
    refreshes = cloud.refreshes("webapp")
    assert [r.refresh_id for r in refreshes] == ["r3", "r2", "r1"]
    assert refreshes[0] == RefreshState(refresh_id="r3", status="Successful", status_reason="Successful reason",
                                        percentage_complete=100, instances_to_update=1, started_at=T0, ended_at=T0,
                                        desired_version="9")


@pytest.mark.parametrize("status", ["Pending", "InProgress", "Baking", "Cancelling", "RollbackInProgress"])
def test_active_refresh_is_the_newest_unfinished_one(cloud: Cloud, stubs: Stubs, status: str) -> None:
    paged(stubs("autoscaling"), "describe_instance_refreshes", {"AutoScalingGroupName": "webapp"},
          [{"InstanceRefreshes": [refresh_answer("r2", "Successful")]},
           {"InstanceRefreshes": [refresh_answer("r1", status)]}])
    active = cloud.active_refresh("webapp")
    assert active is not None and (active.refresh_id, active.status) == ("r1", status)


def test_no_active_refresh(cloud: Cloud, stubs: Stubs) -> None:
    stubs("autoscaling").add_response("describe_instance_refreshes", {"InstanceRefreshes": []},
                                      {"AutoScalingGroupName": "webapp"})
    assert cloud.active_refresh("webapp") is None


def test_refresh_by_id(cloud: Cloud, stubs: Stubs) -> None:
    asg_ = stubs("autoscaling")
    asg_.add_response("describe_instance_refreshes", {"InstanceRefreshes": [refresh_answer("r1", "InProgress")]},
                      {"AutoScalingGroupName": "webapp", "InstanceRefreshIds": ["r1"]})
    asg_.add_response("describe_instance_refreshes", {"InstanceRefreshes": []},
                      {"AutoScalingGroupName": "webapp", "InstanceRefreshIds": ["r9"]})
    found = cloud.refresh("webapp", "r1")
    assert found is not None and (found.status, found.desired_version, found.percentage_complete) == (
        "InProgress", "8", 50)
    assert cloud.refresh("webapp", "r9") is None


@pytest.mark.parametrize("code", ["Throttling", "RequestLimitExceeded"])
def test_throttled_refresh_polls_are_transient(cloud: Cloud, stubs: Stubs, code: str) -> None:
    stubs("autoscaling").add_client_error("describe_instance_refreshes", code, "Rate exceeded",
                                          expected_params={"AutoScalingGroupName": "webapp"})
    with pytest.raises(AwsError) as caught:
        cloud.refreshes("webapp")
    assert (caught.value.code, caught.value.transient) == (code, True)


def test_aws_failing_itself_is_transient(cloud: Cloud, stubs: Stubs) -> None:
    stubs("autoscaling").add_client_error("describe_instance_refreshes", "InternalFailure", "oops",
                                          http_status_code=500, expected_params={"AutoScalingGroupName": "webapp"})
    with pytest.raises(AwsError) as caught:
        cloud.refreshes("webapp")
    assert (caught.value.status, caught.value.transient) == (500, True)


PREFS = RefreshPreferences(min_healthy_percentage=100, max_healthy_percentage=200, instance_warmup=60,
                           checkpoint_percentages=(50, 100), checkpoint_delay=300, bake_time=120,
                           skip_matching=True, auto_rollback=True)


def start_params(version: str, prefs: dict[str, Any]) -> dict[str, Any]:
    return {"AutoScalingGroupName": "webapp", "Strategy": "Rolling", "Preferences": prefs,
            "DesiredConfiguration": {"LaunchTemplate": {"LaunchTemplateName": "webapp", "Version": version}}}


def test_start_refresh_sends_kilns_preferences_once(aws: Aws, cloud: Cloud, stubs: Stubs) -> None:
    # Preferences exactly as config builds them: the service model checks their shape.
    prefs = PREFS.as_aws(("webapp-5xx", "webapp-unhealthy"))
    assert prefs["AlarmSpecification"] == {"Alarms": ["webapp-5xx", "webapp-unhealthy"]}
    stubs("autoscaling", once=True).add_response("start_instance_refresh", {"InstanceRefreshId": "r-new"},
                                                 start_params("8", prefs))
    assert cloud.start_refresh("webapp", "webapp", 8, prefs) == "r-new"
    # Sent on the client that never re-sends a call.
    assert aws.client("autoscaling", once=True).meta.config.retries["total_max_attempts"] == 1


def test_start_refresh_over_a_running_one_is_refused_with_its_code(cloud: Cloud, stubs: Stubs) -> None:
    prefs = RefreshPreferences().as_aws(())
    stubs("autoscaling", once=True).add_client_error(
        "start_instance_refresh", "InstanceRefreshInProgress", "An Instance Refresh is already in progress and "
        "blocks the execution of this Instance Refresh.", expected_params=start_params("8", prefs))
    with pytest.raises(AwsError) as caught:
        cloud.start_refresh("webapp", "webapp", 8, prefs)
    err = caught.value
    assert (err.operation, err.resource, err.code, err.transient) == (
        "StartInstanceRefresh", "webapp", "InstanceRefreshInProgress", False)


def test_rollback_and_cancel_return_the_refresh_id(cloud: Cloud, stubs: Stubs) -> None:
    asg_ = stubs("autoscaling")
    asg_.add_response("rollback_instance_refresh", {"InstanceRefreshId": "r1"}, {"AutoScalingGroupName": "webapp"})
    asg_.add_response("cancel_instance_refresh", {"InstanceRefreshId": "r1"}, {"AutoScalingGroupName": "webapp"})
    assert cloud.rollback_refresh("webapp") == "r1"
    assert cloud.cancel_refresh("webapp") == "r1"


@pytest.mark.parametrize(("method", "code"), [
    ("rollback_instance_refresh", "ActiveInstanceRefreshNotFound"),
    ("rollback_instance_refresh", "IrreversibleInstanceRefresh"),
    ("cancel_instance_refresh", "ActiveInstanceRefreshNotFound"),
])
def test_nothing_to_roll_back_or_cancel_is_an_aws_error_with_its_code(cloud: Cloud, stubs: Stubs, method: str,
                                                                      code: str) -> None:
    stubs("autoscaling").add_client_error(method, code, "No in progress or pending Instance Refresh found",
                                          expected_params={"AutoScalingGroupName": "webapp"})
    call = cloud.rollback_refresh if method.startswith("rollback") else cloud.cancel_refresh
    with pytest.raises(AwsError) as caught:
        call("webapp")
    assert (caught.value.code, caught.value.transient) == (code, False)


# ---------------------------------------------------------------------------------------------
# Alarms, and no answer at all
# ---------------------------------------------------------------------------------------------


def test_alarm_states_pages_and_names_the_missing(cloud: Cloud, stubs: Stubs) -> None:
    paged(stubs("cloudwatch"), "describe_alarms", {"AlarmNames": ["a", "b", "c"]},
          [{"MetricAlarms": [{"AlarmName": "a", "StateValue": "OK"}]},
           {"MetricAlarms": [{"AlarmName": "c", "StateValue": "ALARM"}], "CompositeAlarms": []}])
    assert cloud.alarm_states(("a", "b", "c")) == {"a": "OK", "b": "MISSING", "c": "ALARM"}
    assert cloud.alarm_states(()) == {}


def test_no_answer_is_a_transient_aws_error_without_a_code() -> None:
    # No Stubber: the call really goes to the endpoint, a closed port on loopback.
    cloud = Cloud(Aws(Target(region=REGION, endpoint_url="http://127.0.0.1:1"), attempts=1))
    with pytest.raises(AwsError) as caught:
        cloud.console_output("i-1")
    assert (caught.value.code, caught.value.status, caught.value.transient) == (None, None, True)
    assert "inv sandbox.status" in str(caught.value)


# ---------------------------------------------------------------------------------------------
# The ledger (DynamoDB)
# ---------------------------------------------------------------------------------------------

TABLE = "kiln-ledger"
LOCK_KEY = {"pk": {"S": "lock#prod"}, "sk": {"S": "lock"}}
LEASE = Lease(holder="h-1", who="ana@ci pid 7", ttl=timedelta(minutes=2), release_id="r1", kind="release",
              version="1.1.0")
CANCELLED = ("Transaction cancelled, please refer cancellation reasons for specific reasons "
             "[ConditionalCheckFailed, None]")  # DynamoDB's message, as documented


@pytest.fixture
def ledger(aws: Aws, stubs: Stubs) -> Ledger:
    return Ledger(aws, TABLE)


def lock_item(holder: str = "h-1", expires: datetime = T0 + timedelta(minutes=2)) -> dict[str, Any]:
    return {**LOCK_KEY, "holder": {"S": holder}, "who": {"S": "ana@ci pid 7"}, "acquired_at": {"S": T0.isoformat()},
            "expires_at": {"S": expires.isoformat()}, "release_id": {"S": "r1"}, "kind": {"S": "release"},
            "version": {"S": "1.1.0"}, "phase": {"S": "planned"}}


def record(release_id: str, outcome: Outcome = Outcome.SUCCEEDED, *, minutes: int = 0,
           fingerprint: str = "fp") -> ReleaseRecord:
    return ReleaseRecord(release_id=release_id, environment="prod", kind="release", version="1.1.0",
                         image_id=f"ami-{release_id}", fingerprint=fingerprint, actor="ana",
                         started_at=T0 + timedelta(minutes=minutes), outcome=outcome)


def record_item(r: ReleaseRecord) -> dict[str, Any]:
    return {"pk": {"S": f"release#{r.environment}"}, "sk": {"S": r.sort_key}, "body": {"S": dump(r)}}


def query_params(pk: str) -> dict[str, Any]:
    return {"TableName": TABLE, "KeyConditionExpression": "pk = :pk", "ExpressionAttributeValues": {":pk": {"S": pk}},
            "ScanIndexForward": False, "ConsistentRead": True}


def test_acquire_a_free_or_lapsed_lock(ledger: Ledger, stubs: Stubs) -> None:
    stubs("dynamodb").add_response("put_item", {}, {
        "TableName": TABLE, "Item": lock_item(), "ConditionExpression": "attribute_not_exists(pk) OR expires_at < :now",
        "ExpressionAttributeValues": {":now": {"S": T0.isoformat()}}})
    lock = ledger.acquire("prod", LEASE, T0)
    assert lock == Lock(holder="h-1", acquired_at=T0, expires_at=T0 + timedelta(minutes=2), who="ana@ci pid 7",
                        release_id="r1", kind="release", version="1.1.0", phase="planned")


def test_take_over_a_lock_from_exactly_its_holder(ledger: Ledger, stubs: Stubs) -> None:
    stubs("dynamodb").add_response("put_item", {}, {
        "TableName": TABLE, "Item": {**lock_item(), "phase": {"S": "rolling-back"}},
        "ConditionExpression": "attribute_not_exists(pk) OR holder = :old",
        "ExpressionAttributeValues": {":old": {"S": "h-dead"}}})
    assert ledger.acquire("prod", LEASE, T0, phase="rolling-back", take_over="h-dead").holder == "h-1"


def test_a_held_lock_says_who_holds_it(ledger: Ledger, stubs: Stubs) -> None:
    db = stubs("dynamodb")
    db.add_client_error("put_item", "ConditionalCheckFailedException", "The conditional request failed",
                        expected_params={"TableName": TABLE, "Item": ANY, "ConditionExpression": ANY,
                                         "ExpressionAttributeValues": ANY})
    db.add_response("get_item", {"Item": lock_item("h-other")},
                    {"TableName": TABLE, "Key": LOCK_KEY, "ConsistentRead": True})
    with pytest.raises(LockHeld, match=r"prod is locked by ana@ci pid 7: release 1.1.0 \(r1\), phase planned"):
        ledger.acquire("prod", LEASE, T0)


def test_a_missing_table_is_an_aws_error_saying_so(ledger: Ledger, stubs: Stubs) -> None:
    stubs("dynamodb").add_client_error("put_item", "ResourceNotFoundException", "Requested resource not found",
                                       expected_params={"TableName": TABLE, "Item": ANY, "ConditionExpression": ANY,
                                                        "ExpressionAttributeValues": ANY})
    with pytest.raises(AwsError, match=r"inv sandbox\.status") as caught:
        ledger.acquire("prod", LEASE, T0)
    assert (caught.value.operation, caught.value.resource) == ("PutItem", f"{TABLE} lock#prod")


def test_renew_extends_only_our_own_lease(ledger: Ledger, stubs: Stubs) -> None:
    stubs("dynamodb").add_response("update_item", {}, {
        "TableName": TABLE, "Key": LOCK_KEY, "ConditionExpression": "holder = :me",
        "UpdateExpression": "SET expires_at = :exp, phase = :phase",
        "ExpressionAttributeValues": {":me": {"S": "h-1"}, ":exp": {"S": (T0 + timedelta(minutes=2)).isoformat()},
                                      ":phase": {"S": "gate"}}})
    ledger.renew("prod", "h-1", T0, timedelta(minutes=2), "gate")


def test_renewing_a_lease_taken_over_is_lease_lost(ledger: Ledger, stubs: Stubs) -> None:
    db = stubs("dynamodb")
    db.add_client_error("update_item", "ConditionalCheckFailedException", "The conditional request failed",
                        expected_params={"TableName": TABLE, "Key": LOCK_KEY, "ConditionExpression": "holder = :me",
                                         "UpdateExpression": ANY, "ExpressionAttributeValues": ANY})
    db.add_response("get_item", {}, {"TableName": TABLE, "Key": LOCK_KEY, "ConsistentRead": True})
    with pytest.raises(LeaseLost, match="held by nobody"):
        ledger.renew("prod", "h-1", T0, timedelta(minutes=2), "gate")


def test_release_lock_leaves_a_lock_taken_over_alone(ledger: Ledger, stubs: Stubs) -> None:
    params = {"TableName": TABLE, "Key": LOCK_KEY, "ConditionExpression": "holder = :me",
              "ExpressionAttributeValues": {":me": {"S": "h-1"}}}
    db = stubs("dynamodb")
    db.add_response("delete_item", {}, params)
    db.add_client_error("delete_item", "ConditionalCheckFailedException", "The conditional request failed",
                        expected_params=params)
    ledger.release_lock("prod", "h-1")
    ledger.release_lock("prod", "h-1")  # no longer ours: nothing to do, no error


def test_lock_reads_the_lease_consistently(ledger: Ledger, stubs: Stubs) -> None:
    db = stubs("dynamodb")
    db.add_response("get_item", {"Item": {**LOCK_KEY, "holder": {"S": "h-1"}, "acquired_at": {"S": T0.isoformat()},
                                          "expires_at": {"S": T0.isoformat()}}},
                    {"TableName": TABLE, "Key": LOCK_KEY, "ConsistentRead": True})
    db.add_response("get_item", {}, {"TableName": TABLE, "Key": LOCK_KEY, "ConsistentRead": True})
    assert ledger.lock("prod") == Lock(holder="h-1", acquired_at=T0, expires_at=T0)
    assert ledger.lock("prod") is None


def test_save_unfenced_puts_the_record(ledger: Ledger, stubs: Stubs) -> None:
    r = record("r1", Outcome.IN_PROGRESS)
    stubs("dynamodb").add_response("put_item", {}, {"TableName": TABLE, "Item": record_item(r)})
    ledger.save(r)


def test_save_fenced_checks_the_lock_in_the_same_transaction(ledger: Ledger, stubs: Stubs) -> None:
    r = record("r1", Outcome.IN_PROGRESS)
    stubs("dynamodb").add_response("transact_write_items", {}, {"TransactItems": [
        {"ConditionCheck": {"TableName": TABLE, "Key": LOCK_KEY, "ConditionExpression": "holder = :me",
                            "ExpressionAttributeValues": {":me": {"S": "h-1"}}}},
        {"Put": {"TableName": TABLE, "Item": record_item(r)}}]})
    ledger.save(r, holder="h-1")


def test_a_fenced_save_after_a_take_over_is_lease_lost(ledger: Ledger, stubs: Stubs) -> None:
    db = stubs("dynamodb")
    db.add_client_error("transact_write_items", "TransactionCanceledException", CANCELLED,
                        expected_params={"TransactItems": ANY},
                        modeled_fields={"CancellationReasons": [{"Code": "ConditionalCheckFailed"}, {"Code": "None"}]})
    db.add_response("get_item", {"Item": lock_item("h-2")}, {"TableName": TABLE, "Key": LOCK_KEY,
                                                             "ConsistentRead": True})
    with pytest.raises(LeaseLost, match="now held by ana@ci"):
        ledger.save(record("r1", Outcome.IN_PROGRESS), holder="h-1", now=T0)


def test_a_transaction_cancelled_for_another_reason_is_an_aws_error(ledger: Ledger, stubs: Stubs) -> None:
    stubs("dynamodb").add_client_error(
        "transact_write_items", "TransactionCanceledException", "Transaction cancelled, please refer cancellation "
        "reasons for specific reasons [None, TransactionConflict]", expected_params={"TransactItems": ANY},
        modeled_fields={"CancellationReasons": [{"Code": "None"}, {"Code": "TransactionConflict"}]})
    with pytest.raises(AwsError) as caught:
        ledger.save(record("r1", Outcome.IN_PROGRESS), holder="h-1")
    assert caught.value.code == "TransactionCanceledException"


def test_a_throttled_ledger_is_a_transient_aws_error(ledger: Ledger, stubs: Stubs) -> None:
    stubs("dynamodb").add_client_error("transact_write_items", "ThrottlingException", "Rate exceeded",
                                       expected_params={"TransactItems": ANY})
    with pytest.raises(AwsError) as caught:
        ledger.save(record("r1", Outcome.IN_PROGRESS), holder="h-1")
    assert caught.value.transient


def query_pages(db: Stubber, pk: str, pages: list[list[dict[str, Any]]]) -> None:
    paged(db, "query", query_params(pk), [{"Items": items, "Count": len(items), "ScannedCount": len(items)}
                                          for items in pages],
          token=("ExclusiveStartKey", "LastEvaluatedKey"), marker=lambda n: {"pk": {"S": pk}, "sk": {"S": f"k{n}"}})


def test_history_pages_newest_first(ledger: Ledger, stubs: Stubs) -> None:
    newest, older, oldest = (record("r3", minutes=2), record("r2", Outcome.ROLLED_BACK, minutes=1),
                             record("r1", minutes=0))
    query_pages(stubs("dynamodb"), "release#prod", [[record_item(newest), record_item(older)],
                                                    [record_item(oldest)]])
    assert ledger.history("prod") == [newest, older, oldest]


def test_history_stops_paging_at_its_limit(ledger: Ledger, stubs: Stubs) -> None:
    r1, r2 = record("r2", Outcome.IN_PROGRESS, minutes=1), record("r1")
    # One page holds more than asked for, and there would be another: Kiln does not ask for it.
    stubs("dynamodb").add_response("query", {"Items": [record_item(r1), record_item(r2)], "Count": 2,
                                             "LastEvaluatedKey": {"pk": {"S": "release#prod"}, "sk": {"S": "x"}}},
                                   query_params("release#prod"))
    assert ledger.in_progress("prod") == r1


def test_live_is_the_newest_success(ledger: Ledger, stubs: Stubs) -> None:
    failed, live = record("r2", Outcome.ROLLED_BACK, minutes=1), record("r1")
    query_pages(stubs("dynamodb"), "release#prod", [[record_item(failed)], [record_item(live)]])
    assert ledger.live("prod") == live


def test_passed_environments(ledger: Ledger, stubs: Stubs) -> None:
    db = stubs("dynamodb")
    query_pages(db, "release#dev", [[record_item(replace(record("d1", fingerprint="fp"), environment="dev"))]])
    query_pages(db, "release#prod", [[record_item(record("p1", Outcome.ROLLED_BACK, fingerprint="fp"))]])
    assert ledger.passed_environments("fp", set(), ["dev", "prod"]) == {"dev"}


def test_events_are_recorded_and_read_back_newest_first(ledger: Ledger, stubs: Stubs) -> None:
    db = stubs("dynamodb")
    db.add_response("put_item", {}, {"TableName": TABLE, "Item": {
        "pk": {"S": "event#ami-promoted"}, "sk": {"S": f"{T0.isoformat()}#ami-1"},
        "body": {"S": '{"from": "dev", "to": "prod"}'}}})
    ledger.record_event("ami-promoted", "ami-1", T0, {"to": "prod", "from": "dev"})
    query_pages(db, "event#ami-promoted", [
        [{"pk": {"S": "event#ami-promoted"}, "sk": {"S": f"{T0.isoformat()}#ami-1"}, "body": {"S": '{"to": "prod"}'}}],
        []])
    assert ledger.events("ami-promoted") == [{"to": "prod", "at": T0.isoformat(), "subject": "ami-1"}]


def test_a_timeline_is_kept_beside_its_release_and_read_back(ledger: Ledger, stubs: Stubs) -> None:
    db, r = stubs("dynamodb"), record("r1")
    key = {"pk": {"S": "timeline#prod"}, "sk": {"S": r.sort_key}}
    db.add_response("put_item", {}, {"TableName": TABLE, "Item": {**key, "body": {"S": "{}"}}})
    ledger.save_timeline(r, "{}")
    db.add_response("get_item", {"Item": {**key, "body": {"S": "{}"}}},
                    {"TableName": TABLE, "Key": key, "ConsistentRead": True})
    db.add_response("get_item", {}, {"TableName": TABLE, "Key": key, "ConsistentRead": True})
    assert ledger.timeline("prod", r.sort_key) == "{}"
    assert ledger.timeline("prod", r.sort_key) is None  # a release recorded before reports existed


# ---------------------------------------------------------------------------------------------
# Every AWS call has a contract test
# ---------------------------------------------------------------------------------------------

ADAPTER = [ROOT / "release" / "aws.py", ROOT / "release" / "cloud.py", ROOT / "release" / "ledger.py"]
_session = botocore.session.get_session()
# snake_case operation name -> the services that have it
OPERATIONS: dict[str, set[str]] = {}
for _service in SERVICES:
    for _op in _session.get_service_model(_service).operation_names:
        OPERATIONS.setdefault(xform_name(_op), set()).add(_service)


def _functions(path: Path) -> Iterator[tuple[str, ast.FunctionDef]]:
    """(module.Class.method or module.function, its definition) for one file."""
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.FunctionDef):
            yield f"{path.stem}.{node.name}", node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    yield f"{path.stem}.{node.name}.{item.name}", item


def _calls(function: ast.FunctionDef) -> Iterator[tuple[str, str, ast.Call]]:
    """(receiver, name, call) of each method call in `function`; a paginator is named after its call."""
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            if name == "get_paginator" and node.args and isinstance(node.args[0], ast.Constant):
                name = "paginate:" + str(node.args[0].value)
            yield ast.unparse(node.func.value), name, node


# AWS calls botocore makes for the adapter: a function that uses the class makes the call.
INDIRECT = {"AssumeRoleCredentialFetcher": "assume_role"}
# Functions no Kiln code calls by name (Aws makes the role's credentials, botocore fetches them),
# and the tests that reach them.
_ROLE_TESTS = ("test_role_assumption_asks_sts_for_the_role_as_configured",
               "test_credentials_that_already_act_as_the_role_are_used_as_they_are")
REACHED_INDIRECTLY = {"aws._RoleCredentials.__init__": _ROLE_TESTS, "aws._RoleCredentials.fetch": _ROLE_TESTS}


def adapter_calls() -> dict[str, set[str]]:
    """function -> the AWS calls it makes itself ("paginate:<call>" when paged), across aws.py and
    ledger.py: a call named like an operation of one of the services, on anything but `self`
    (Cloud's own methods share a name or two with EC2's)."""
    found: dict[str, set[str]] = {}
    for path in ADAPTER:
        for qualified, function in _functions(path):
            calls = {name for receiver, name, _ in _calls(function)
                     if name.removeprefix("paginate:") in OPERATIONS and receiver != "self"}
            calls |= {INDIRECT[n.id] for n in ast.walk(function) if isinstance(n, ast.Name) and n.id in INDIRECT}
            if calls:
                found[qualified] = calls
    return found


def self_callers() -> dict[str, set[str]]:
    """method name -> the methods (of the same files) that call it as self.<name>()."""
    callers: dict[str, set[str]] = {}
    for path in ADAPTER:
        for qualified, function in _functions(path):
            for receiver, name, _ in _calls(function):
                if receiver == "self":
                    callers.setdefault(name, set()).add(qualified.rsplit(".", 1)[1])
    return callers


def contracted() -> tuple[set[str], set[str]]:
    """(AWS calls given an answer, "paginate:<call>" for those given a multi-page answer, and the
    names of the methods called) in these contract tests."""
    answered, called = set(), set()
    for node in ast.walk(ast.parse(Path(__file__).read_text())):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in ("add_response", "add_client_error") and isinstance(node.args[0], ast.Constant):
            answered.add(str(node.args[0].value))
        if name == "paged" and isinstance(node.args[1], ast.Constant):
            answered |= {str(node.args[1].value), "paginate:" + str(node.args[1].value)}
        if name:
            called.add(name)
    return answered, called


def test_the_scan_finds_the_calls_it_must() -> None:
    calls = adapter_calls()
    # A few that must be there, so a broken scanner cannot pass by finding nothing.
    assert "start_instance_refresh" in calls["cloud.Cloud.start_refresh"]
    assert "paginate:describe_images" in calls["cloud.Cloud._described_app_images"]
    assert "paginate:query" in calls["ledger.Ledger._newest_first"]
    assert "transact_write_items" in calls["ledger.Ledger.save"]
    assert calls["cloud.Cloud.group"] == {"describe_auto_scaling_groups"}  # not Cloud.describe_instances
    assert "_newest_first" in self_callers() and "history" in self_callers()["_newest_first"]
    assert any("assume_role" in found for found in calls.values())  # botocore's, for the role


def test_every_aws_call_of_the_adapter_has_a_contract_test() -> None:
    """Every call, and every paged call with a multi-page answer (DescribeInstanceRefreshes has no
    botocore paginator: Cloud.refreshes pages it by hand)."""
    answered, _ = contracted()
    needed = {call for calls in adapter_calls().values() for call in calls} | {"paginate:describe_instance_refreshes"}
    assert sorted(needed - answered) == [], "AWS calls without a contract test: add_response/add_client_error/paged"


def test_every_method_that_calls_aws_has_a_contract_test() -> None:
    """Each method that makes an AWS call is called by a contract test, or is a private helper one
    of whose callers is, or is reached indirectly by the tests REACHED_INDIRECTLY names."""
    _, called = contracted()
    callers = self_callers()
    reached = {qualified for qualified, tests in REACHED_INDIRECTLY.items() if all(t in globals() for t in tests)}
    untested = [qualified for qualified in adapter_calls()
                if (method := qualified.rsplit(".", 1)[1]) not in called and qualified not in reached
                and not (method.startswith("_") and callers.get(method, set()) & called)]
    assert untested == [], "methods that call AWS without a contract test"
