"""Paging as AWS does it, for every paginated call Kiln makes: small pages list every item once.

AWS's contract: a response that leaves items out carries a NextToken; the last page has none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aws_sandbox_kit import Kit, unique
from botocore.exceptions import ClientError

from release.sandbox.provision import SeedResources

FINAL = {"Successful", "Failed", "Cancelled", "RollbackSuccessful", "RollbackFailed"}


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def template_with_versions(kit: Kit, count: int) -> str:
    """A template with versions 1..count; version N's ImageId ends in N."""
    ec2 = kit.client("ec2")
    name = unique("paged")
    ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData={"ImageId": image(1)})
    for number in range(2, count + 1):
        ec2.create_launch_template_version(LaunchTemplateName=name, LaunchTemplateData={"ImageId": image(number)})
    return name


def image(number: int) -> str:
    return f"ami-{number:017x}"


def pages(call: Callable[..., dict[str, Any]], **params: Any) -> Iterator[dict[str, Any]]:
    """Every page of `call`, following NextToken by hand (as AWS documents it)."""
    token = params.pop("NextToken", None)
    while True:
        page = call(**params, **({"NextToken": token} if token else {}))
        yield page
        token = page.get("NextToken")
        if not token:
            return


def numbers(listed: list[dict[str, Any]]) -> list[int]:
    return [int(v["VersionNumber"]) for v in listed]


# ---- DescribeLaunchTemplateVersions -------------------------------------------------------------


def test_the_paginator_lists_every_version_of_a_template_with_more_than_twenty(kit: Kit) -> None:
    name = template_with_versions(kit, 25)
    paginator = kit.client("ec2").get_paginator("describe_launch_template_versions")
    listed = [v for page in paginator.paginate(LaunchTemplateName=name) for v in page["LaunchTemplateVersions"]]
    assert numbers(listed) == list(range(1, 26))
    assert [v["LaunchTemplateData"]["ImageId"] for v in listed] == [image(n) for n in range(1, 26)]
    small = paginator.paginate(LaunchTemplateName=name, PaginationConfig={"PageSize": 10})
    assert [numbers(page["LaunchTemplateVersions"]) for page in small] == [
        list(range(1, 11)),
        list(range(11, 21)),
        list(range(21, 26)),
    ]


def test_max_results_and_next_token_by_hand(kit: Kit) -> None:
    name = template_with_versions(kit, 25)
    ec2 = kit.client("ec2")
    got = list(pages(ec2.describe_launch_template_versions, LaunchTemplateName=name, MaxResults=10))
    assert [len(p["LaunchTemplateVersions"]) for p in got] == [10, 10, 5]
    assert "NextToken" not in got[-1] and all(p.get("NextToken") for p in got[:-1])
    assert numbers([v for p in got for v in p["LaunchTemplateVersions"]]) == list(range(1, 26))
    whole = ec2.describe_launch_template_versions(LaunchTemplateName=name)  # no MaxResults: up to 200 a page
    assert numbers(whole["LaunchTemplateVersions"]) == list(range(1, 26)) and "NextToken" not in whole


def test_paging_honours_min_and_max_version_and_named_versions(kit: Kit) -> None:
    name = template_with_versions(kit, 25)
    ec2 = kit.client("ec2")
    ranged = pages(ec2.describe_launch_template_versions, LaunchTemplateName=name, MinVersion="5",
                   MaxVersion="22", MaxResults=4)
    assert numbers([v for p in ranged for v in p["LaunchTemplateVersions"]]) == list(range(5, 23))
    template_id = ec2.describe_launch_templates(LaunchTemplateNames=[name])["LaunchTemplates"][0]["LaunchTemplateId"]
    named = list(pages(ec2.describe_launch_template_versions, LaunchTemplateId=template_id,
                       Versions=["24", "3", "$Latest", "17", "$Default"], MaxResults=2))
    assert [numbers(p["LaunchTemplateVersions"]) for p in named] == [[24, 3], [25, 17], [1]]


def test_versions_created_or_deleted_between_pages_neither_repeat_nor_hide_others(kit: Kit) -> None:
    name = template_with_versions(kit, 12)
    ec2 = kit.client("ec2")
    first = ec2.describe_launch_template_versions(LaunchTemplateName=name, MaxResults=5)
    assert numbers(first["LaunchTemplateVersions"]) == [1, 2, 3, 4, 5]
    ec2.create_launch_template_version(LaunchTemplateName=name, LaunchTemplateData={"ImageId": image(13)})
    ec2.delete_launch_template_versions(LaunchTemplateName=name, Versions=["5", "6"])
    rest = pages(ec2.describe_launch_template_versions, LaunchTemplateName=name, MaxResults=5,
                 NextToken=first["NextToken"])
    assert numbers([v for p in rest for v in p["LaunchTemplateVersions"]]) == [7, 8, 9, 10, 11, 12, 13]


def test_more_than_two_hundred_versions_without_max_results_come_200_a_page(kit: Kit) -> None:
    name = template_with_versions(kit, 203)
    ec2 = kit.client("ec2")
    first = ec2.describe_launch_template_versions(LaunchTemplateName=name)
    assert numbers(first["LaunchTemplateVersions"]) == list(range(1, 201)) and first["NextToken"]
    rest = ec2.describe_launch_template_versions(LaunchTemplateName=name, NextToken=first["NextToken"])
    assert numbers(rest["LaunchTemplateVersions"]) == [201, 202, 203] and "NextToken" not in rest


def test_max_results_outside_1_to_200_and_foreign_tokens_are_refused(kit: Kit) -> None:
    name = template_with_versions(kit, 3)
    other = template_with_versions(kit, 3)
    ec2 = kit.client("ec2")
    for wrong in (0, 201):
        with pytest.raises(ClientError) as refused:
            ec2.describe_launch_template_versions(LaunchTemplateName=name, MaxResults=wrong)
        assert error_code(refused) == "InvalidParameterValue"
    token = ec2.describe_launch_template_versions(LaunchTemplateName=name, MaxResults=1)["NextToken"]
    for bad in (token[:-3], "not-a-token"):
        with pytest.raises(ClientError) as invalid:
            ec2.describe_launch_template_versions(LaunchTemplateName=name, MaxResults=1, NextToken=bad)
        assert error_code(invalid) == "InvalidPaginationToken"
    with pytest.raises(ClientError) as foreign:
        ec2.describe_launch_template_versions(LaunchTemplateName=other, MaxResults=1, NextToken=token)
    assert error_code(foreign) == "InvalidPaginationToken"


# ---- DescribeLaunchTemplates ----------------------------------------------------------------


def test_launch_templates_page_past_moto_s_fifteen(kit: Kit) -> None:
    ec2 = kit.client("ec2")
    names = [unique("tpl") for _ in range(17)]
    for name in names:
        ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData={"ImageId": image(1)})
    paginator = ec2.get_paginator("describe_launch_templates")
    listed = [t["LaunchTemplateName"] for page in paginator.paginate(PaginationConfig={"PageSize": 4})
              for t in page["LaunchTemplates"]]
    assert len(listed) == len(set(listed)) and set(names) <= set(listed)
    by_name = list(pages(ec2.describe_launch_templates, LaunchTemplateNames=names, MaxResults=5))
    assert [len(p["LaunchTemplates"]) for p in by_name] == [5, 5, 5, 2]
    assert [t["LaunchTemplateName"] for p in by_name for t in p["LaunchTemplates"]] == names  # oldest first


# ---- CreateLaunchTemplateVersion ClientToken --------------------------------------------------


def test_the_same_client_token_and_parameters_return_the_same_version(kit: Kit) -> None:
    name = template_with_versions(kit, 2)
    ec2 = kit.client("ec2")
    token = unique("release-1.4.0")
    request = {"LaunchTemplateName": name, "SourceVersion": "1", "LaunchTemplateData": {"ImageId": image(3)},
               "VersionDescription": "1.4.0", "ClientToken": token}
    first = ec2.create_launch_template_version(**request)["LaunchTemplateVersion"]
    again = ec2.create_launch_template_version(**request)["LaunchTemplateVersion"]
    assert first["VersionNumber"] == again["VersionNumber"] == 3
    assert again == first
    template = ec2.describe_launch_templates(LaunchTemplateNames=[name])["LaunchTemplates"][0]
    assert template["LatestVersionNumber"] == 3
    # Without a token boto3 sends a new random one each call: two calls, two versions.
    ec2.create_launch_template_version(LaunchTemplateName=name, LaunchTemplateData={"ImageId": image(4)})
    ec2.create_launch_template_version(LaunchTemplateName=name, LaunchTemplateData={"ImageId": image(4)})
    assert numbers(ec2.describe_launch_template_versions(LaunchTemplateName=name)["LaunchTemplateVersions"]) == [
        1, 2, 3, 4, 5]


def test_the_same_client_token_with_other_parameters_is_a_mismatch(kit: Kit) -> None:
    name = template_with_versions(kit, 1)
    other = template_with_versions(kit, 1)
    ec2 = kit.client("ec2")
    token = unique("release-2.0.0")
    ec2.create_launch_template_version(LaunchTemplateName=name, LaunchTemplateData={"ImageId": image(2)},
                                       ClientToken=token)
    for changed in ({"LaunchTemplateName": name, "LaunchTemplateData": {"ImageId": image(9)}},
                    {"LaunchTemplateName": other, "LaunchTemplateData": {"ImageId": image(2)}},
                    {"LaunchTemplateName": name, "LaunchTemplateData": {"ImageId": image(2)}, "SourceVersion": "1"}):
        with pytest.raises(ClientError) as mismatch:
            ec2.create_launch_template_version(**changed, ClientToken=token)
        assert error_code(mismatch) == "IdempotentParameterMismatch"
    for checked in (name, other):
        listed = ec2.describe_launch_template_versions(LaunchTemplateName=checked)["LaunchTemplateVersions"]
        assert numbers(listed) == ([1, 2] if checked == name else [1])


def test_client_tokens_longer_than_128_characters_are_refused(kit: Kit) -> None:
    name = template_with_versions(kit, 1)
    ec2 = kit.client("ec2")
    created = ec2.create_launch_template_version(LaunchTemplateName=name, LaunchTemplateData={"ImageId": image(2)},
                                                 ClientToken="t" * 128)
    assert created["LaunchTemplateVersion"]["VersionNumber"] == 2
    with pytest.raises(ClientError) as refused:
        ec2.create_launch_template_version(LaunchTemplateName=name, LaunchTemplateData={"ImageId": image(2)},
                                           ClientToken="t" * 129)
    assert error_code(refused) == "InvalidParameterValue"


def test_a_client_token_is_per_region(kit: Kit) -> None:
    token = unique("everywhere")
    for region in ("us-east-1", "us-west-2"):
        ec2 = kit.client("ec2", region)
        name = unique("regional")
        ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData={"ImageId": image(1)})
        created = ec2.create_launch_template_version(LaunchTemplateName=name, ClientToken=token,
                                                     LaunchTemplateData={"ImageId": image(2)})
        assert created["LaunchTemplateVersion"]["LaunchTemplateName"] == name


# ---- DescribeInstanceRefreshes -------------------------------------------------------------


def refreshes(kit: Kit, group: str, **params: Any) -> list[list[str]]:
    asg = kit.client("autoscaling")
    return [[r["InstanceRefreshId"] for r in p["InstanceRefreshes"]]
            for p in pages(asg.describe_instance_refreshes, AutoScalingGroupName=group, **params)]


def start_and_cancel(kit: Kit, seed: SeedResources) -> str:
    asg = kit.client("autoscaling")
    refresh_id = str(asg.start_instance_refresh(AutoScalingGroupName=seed.asg_name,
                                                Preferences={"InstanceWarmup": 100})["InstanceRefreshId"])
    asg.cancel_instance_refresh(AutoScalingGroupName=seed.asg_name)
    kit.wait_for("the refresh to be cancelled", lambda: asg.describe_instance_refreshes(
        AutoScalingGroupName=seed.asg_name, InstanceRefreshIds=[refresh_id])["InstanceRefreshes"][0]["Status"]
        in FINAL)
    return refresh_id


def test_instance_refreshes_page_with_max_records(kit: Kit, seed: SeedResources) -> None:
    started = [start_and_cancel(kit, seed) for _ in range(5)]
    newest_first = started[::-1]
    assert refreshes(kit, seed.asg_name, MaxRecords=2) == [newest_first[0:2], newest_first[2:4], newest_first[4:]]
    assert refreshes(kit, seed.asg_name) == [newest_first]  # 50 a page by default
    assert refreshes(kit, seed.asg_name, InstanceRefreshIds=started[:3], MaxRecords=2) == [
        newest_first[2:4], newest_first[4:]]

    # A refresh started between two pages does not shift the pages already handed out.
    asg = kit.client("autoscaling")
    first = asg.describe_instance_refreshes(AutoScalingGroupName=seed.asg_name, MaxRecords=2)
    newer = start_and_cancel(kit, seed)
    rest = refreshes(kit, seed.asg_name, MaxRecords=2, NextToken=first["NextToken"])
    later = [refresh_id for page in rest for refresh_id in page]
    assert [r["InstanceRefreshId"] for r in first["InstanceRefreshes"]] + later == newest_first
    assert refreshes(kit, seed.asg_name, MaxRecords=100)[0][0] == newer

    for wrong in (0, 101):
        with pytest.raises(ClientError) as refused:
            asg.describe_instance_refreshes(AutoScalingGroupName=seed.asg_name, MaxRecords=wrong)
        assert error_code(refused) == "ValidationError"
    with pytest.raises(ClientError) as invalid:
        asg.describe_instance_refreshes(AutoScalingGroupName=seed.asg_name, NextToken="nope")
    assert error_code(invalid) == "InvalidNextToken"


# ---- The other calls Kiln pages: every item exactly once with small pages -------------------


def test_describe_instances_images_and_alarms_list_everything_once(kit: Kit) -> None:
    ec2 = kit.client("ec2")
    tag = unique("batch")
    launched = ec2.run_instances(ImageId="ami-12c6146b", MinCount=7, MaxCount=7, InstanceType="t3.micro",
                                 TagSpecifications=[{"ResourceType": "instance",
                                                     "Tags": [{"Key": "kiln:test", "Value": tag}]}])
    ids = sorted(i["InstanceId"] for i in launched["Instances"])
    for _ in range(3):  # three reservations of one instance more each
        ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="t3.micro",
                          TagSpecifications=[{"ResourceType": "instance",
                                              "Tags": [{"Key": "kiln:test", "Value": tag}]}])
    filters = [{"Name": "tag:kiln:test", "Values": [tag]}]
    paged = ec2.get_paginator("describe_instances").paginate(Filters=filters, PaginationConfig={"PageSize": 5})
    seen = [i["InstanceId"] for page in paged for r in page["Reservations"] for i in r["Instances"]]
    assert len(seen) == len(set(seen)) == 10 and set(ids) <= set(seen)

    images = []
    for n in range(6):
        made = ec2.create_image(InstanceId=ids[0], Name=unique(f"img{n}"))["ImageId"]
        ec2.create_tags(Resources=[made], Tags=[{"Key": "kiln:test", "Value": tag}])
        images.append(made)
    paged = ec2.get_paginator("describe_images").paginate(Owners=["self"], Filters=filters,
                                                          PaginationConfig={"PageSize": 2})
    seen = [i["ImageId"] for page in paged for i in page["Images"]]
    assert sorted(seen) == sorted(images)

    cloudwatch = kit.client("cloudwatch")
    alarms = [f"{tag}-{n}" for n in range(7)]
    for alarm in alarms:
        cloudwatch.put_metric_alarm(AlarmName=alarm, MetricName="m", Namespace="kiln/test", Statistic="Sum",
                                    Period=60, EvaluationPeriods=1, Threshold=1,
                                    ComparisonOperator="GreaterThanThreshold")
    paged = cloudwatch.get_paginator("describe_alarms").paginate(AlarmNamePrefix=tag, PaginationConfig={"PageSize": 2})
    assert sorted(a["AlarmName"] for page in paged for a in page["MetricAlarms"]) == alarms


def test_parameters_groups_and_ledger_queries_page_completely(kit: Kit) -> None:
    tag = unique("kiln-paging")
    ssm = kit.client("ssm")
    names = [f"/{tag}/{n:02d}" for n in range(13)]
    for name in names:
        ssm.put_parameter(Name=name, Value="ami-0123456789abcdef0", Type="String")
    paged = ssm.get_paginator("describe_parameters").paginate(
        ParameterFilters=[{"Key": "Name", "Option": "BeginsWith", "Values": [f"/{tag}/"]}],
        PaginationConfig={"PageSize": 4})
    assert sorted(p["Name"] for page in paged for p in page["Parameters"]) == names
    everything = ssm.get_paginator("describe_parameters").paginate(PaginationConfig={"PageSize": 5})
    listed = [p["Name"] for page in everything for p in page["Parameters"]]
    assert len(listed) == len(set(listed)) and set(names) <= set(listed)

    ec2, asg = kit.client("ec2"), kit.client("autoscaling")
    template = unique("grp")
    ec2.create_launch_template(LaunchTemplateName=template, LaunchTemplateData={"ImageId": "ami-12c6146b"})
    groups = [f"{tag}-{n}" for n in range(5)]
    for group in groups:
        asg.create_auto_scaling_group(AutoScalingGroupName=group, MinSize=0, MaxSize=1, DesiredCapacity=0,
                                      LaunchTemplate={"LaunchTemplateName": template, "Version": "1"},
                                      AvailabilityZones=["us-east-1a"])
    paged = asg.get_paginator("describe_auto_scaling_groups").paginate(PaginationConfig={"PageSize": 2})
    listed = [g["AutoScalingGroupName"] for page in paged for g in page["AutoScalingGroups"]]
    assert len(listed) == len(set(listed)) and set(groups) <= set(listed)

    db = kit.client("dynamodb")
    table = f"{tag}-ledger"
    db.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                    KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
                    AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                          {"AttributeName": "sk", "AttributeType": "S"}])
    keys = [f"2026-11-29T10:{n:02d}:00Z#r{n}" for n in range(11)]
    for sk in keys:
        db.put_item(TableName=table, Item={"pk": {"S": "release#sandbox"}, "sk": {"S": sk}})
    paged = db.get_paginator("query").paginate(
        TableName=table, KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": {"S": "release#sandbox"}},
        ScanIndexForward=False, ConsistentRead=True, PaginationConfig={"PageSize": 3})
    assert [i["sk"]["S"] for page in paged for i in page["Items"]] == keys[::-1]
    capped = db.get_paginator("query").paginate(
        TableName=table, KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": {"S": "release#sandbox"}},
        ScanIndexForward=False, PaginationConfig={"MaxItems": 5, "PageSize": 3})
    assert [i["sk"]["S"] for page in capped for i in page["Items"]] == keys[::-1][:5]
