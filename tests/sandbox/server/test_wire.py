"""wire.py against botocore itself: what botocore serialises we parse back exactly, and what we
render botocore parses into exactly the result we meant."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import botocore.session
import pytest
from botocore.parsers import create_parser
from botocore.serialize import create_serializer

from release.sandbox.wire import ServiceWire, WireError

NOW = datetime(2026, 11, 22, 3, 0, 0, tzinfo=UTC)

REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "autoscaling",
        "StartInstanceRefresh",
        {
            "AutoScalingGroupName": "web-sandbox",
            "Strategy": "Rolling",
            "DesiredConfiguration": {"LaunchTemplate": {"LaunchTemplateId": "lt-0abc", "Version": "7"}},
            "Preferences": {
                "MinHealthyPercentage": 50,
                "MaxHealthyPercentage": 150,
                "InstanceWarmup": 60,
                "CheckpointPercentages": [25, 50, 100],
                "CheckpointDelay": 120,
                "SkipMatching": False,
                "AutoRollback": True,
                "AlarmSpecification": {"Alarms": ["web-5xx", "web-unhealthy"]},
                "ScaleInProtectedInstances": "Refresh",
                "StandbyInstances": "Terminate",
                "BakeTime": 30,
            },
        },
    ),
    ("autoscaling", "DescribeInstanceRefreshes", {"AutoScalingGroupName": "g", "InstanceRefreshIds": ["a", "b"]}),
    ("autoscaling", "CancelInstanceRefresh", {"AutoScalingGroupName": "g", "WaitForTransitioningInstances": False}),
    ("autoscaling", "RollbackInstanceRefresh", {"AutoScalingGroupName": "g"}),
    ("ec2", "DeleteLaunchTemplateVersions", {"LaunchTemplateName": "web", "Versions": ["2", "3"]}),
    ("ec2", "EnableImageDeprecation", {"ImageId": "ami-1", "DeprecateAt": NOW}),
    ("ec2", "DescribeImages", {"Filters": [{"Name": "name", "Values": ["a", "b"]}], "IncludeDeprecated": True}),
    ("elbv2", "DescribeTargetHealth", {"TargetGroupArn": "arn:tg", "Targets": [{"Id": "i-1", "Port": 80}]}),
]

RESULTS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "autoscaling",
        "DescribeInstanceRefreshes",
        {
            "InstanceRefreshes": [
                {
                    "InstanceRefreshId": "a",
                    "AutoScalingGroupName": "g",
                    "Status": "RollbackSuccessful",
                    "StatusReason": "Alarm web-5xx is in ALARM & rolled back",
                    "StartTime": NOW,
                    "EndTime": NOW,
                    "PercentageComplete": 0,
                    "InstancesToUpdate": 2,
                    "Preferences": {"MinHealthyPercentage": 50, "CheckpointPercentages": [50], "AutoRollback": True},
                    "DesiredConfiguration": {"LaunchTemplate": {"LaunchTemplateId": "lt-1", "Version": "2"}},
                    "RollbackDetails": {
                        "RollbackReason": "alarm",
                        "RollbackStartTime": NOW,
                        "PercentageCompleteOnRollback": 50,
                        "InstancesToUpdateOnRollback": 2,
                    },
                }
            ]
        },
    ),
    ("autoscaling", "StartInstanceRefresh", {"InstanceRefreshId": "abc"}),
    (
        "ec2",
        "DeleteLaunchTemplateVersions",
        {
            "SuccessfullyDeletedLaunchTemplateVersions": [{"LaunchTemplateId": "lt-1", "VersionNumber": 2}],
            "UnsuccessfullyDeletedLaunchTemplateVersions": [
                {
                    "LaunchTemplateId": "lt-1",
                    "VersionNumber": 1,
                    "ResponseError": {"Code": "unexpectedError", "Message": "default"},
                }
            ],
        },
    ),
    ("ec2", "EnableImageDeprecation", {"Return": True}),
]


@pytest.mark.parametrize(("service", "operation", "params"), REQUESTS, ids=[r[1] for r in REQUESTS])
def test_parse_inverts_botocores_serializer(service: str, operation: str, params: dict[str, Any]) -> None:
    model = botocore.session.get_session().get_service_model(service)
    request = create_serializer(model.protocol).serialize_to_request(params, model.operation_model(operation))
    form = {key: str(value) for key, value in request["body"].items()}
    assert ServiceWire(service).parse(operation, form) == params


@pytest.mark.parametrize(("service", "operation", "result"), RESULTS, ids=[r[1] for r in RESULTS])
def test_botocore_parses_what_we_render(service: str, operation: str, result: dict[str, Any]) -> None:
    model = botocore.session.get_session().get_service_model(service)
    reply = ServiceWire(service).render(operation, result, "req-1")
    parsed = create_parser(model.protocol).parse(
        {"body": reply.body, "headers": {}, "status_code": 200}, model.operation_model(operation).output_shape
    )
    assert parsed.pop("ResponseMetadata")["RequestId"] == "req-1"
    assert parsed == result


@pytest.mark.parametrize("service", ["autoscaling", "ec2"])
def test_errors_are_aws_error_responses(service: str) -> None:
    model = botocore.session.get_session().get_service_model(service)
    reply = ServiceWire(service).render_error(WireError("InstanceRefreshInProgress", "busy <now>"), "req-2")
    parsed = create_parser(model.protocol).parse({"body": reply.body, "headers": {}, "status_code": 400}, None)
    assert reply.status == 400
    assert parsed["Error"]["Code"] == "InstanceRefreshInProgress"
    assert parsed["Error"]["Message"] == "busy <now>"
    assert parsed["ResponseMetadata"]["RequestId"] == "req-2"


def test_bad_scalars_are_validation_errors() -> None:
    with pytest.raises(WireError) as bad:
        ServiceWire("autoscaling").parse(
            "StartInstanceRefresh", {"AutoScalingGroupName": "g", "Preferences.MinHealthyPercentage": "lots"}
        )
    assert bad.value.code == "ValidationError"
    assert "Preferences.MinHealthyPercentage" in bad.value.message


def test_only_query_protocols_are_served() -> None:
    with pytest.raises(ValueError):
        ServiceWire("dynamodb")
