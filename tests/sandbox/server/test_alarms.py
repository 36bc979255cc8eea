"""CloudWatch alarms evaluated from PutMetricData, once per (scaled) period, as CloudWatch does."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from aws_sandbox_kit import Kit, unique


def alarm(kit: Kit, name: str) -> dict[str, object]:
    found: dict[str, object] = kit.client("cloudwatch").describe_alarms(AlarmNames=[name])["MetricAlarms"][0]
    return found


def put_alarm(kit: Kit, namespace: str) -> str:
    name = unique("errors")
    kit.client("cloudwatch").put_metric_alarm(
        AlarmName=name,
        Namespace=namespace,
        MetricName="Errors",
        Dimensions=[{"Name": "Service", "Value": "web"}],
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=5,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
        TreatMissingData="notBreaching",
    )
    return name


def test_breaching_datapoints_raise_the_alarm_and_it_clears_without_them(kit: Kit) -> None:
    namespace = unique("Kiln/Test")
    name = put_alarm(kit, namespace)
    kit.client("cloudwatch").put_metric_data(
        Namespace=namespace,
        MetricData=[
            {
                "MetricName": "Errors",
                "Dimensions": [{"Name": "Service", "Value": "web"}],
                "Value": 7,
                "Timestamp": datetime.now(UTC),
            },
            {
                "MetricName": "Errors",
                "Dimensions": [{"Name": "Service", "Value": "web"}],
                "Values": [1, 2],
                "Counts": [1, 1],
                "Timestamp": datetime.now(UTC),
            },
        ],
    )
    raised = kit.wait_for("ALARM", lambda: (a := alarm(kit, name))["StateValue"] == "ALARM" and a, timeout=30)
    assert "Threshold Crossed" in str(raised["StateReason"])
    # Periods of 60 s x 0.1 with no data are not breaching: back to OK once 10 falls out of range.
    kit.wait_for("OK again", lambda: alarm(kit, name)["StateValue"] == "OK", timeout=45)


def test_other_dimensions_do_not_count(kit: Kit) -> None:
    namespace = unique("Kiln/Test")
    name = put_alarm(kit, namespace)
    kit.wait_for("the first evaluation", lambda: "no datapoints" in str(alarm(kit, name)["StateReason"]))
    kit.client("cloudwatch").put_metric_data(
        Namespace=namespace,
        MetricData=[{"MetricName": "Errors", "Dimensions": [{"Name": "Service", "Value": "api"}], "Value": 50}],
    )
    deadline = time.monotonic() + 13  # two periods of 60 s x 0.1: the datapoint's period is evaluated
    while time.monotonic() < deadline:
        assert alarm(kit, name)["StateValue"] == "OK"
        time.sleep(0.5)


def test_set_alarm_state_lasts_until_the_next_evaluation(kit: Kit) -> None:
    name = put_alarm(kit, unique("Kiln/Test"))
    # A new alarm is evaluated at once: set its state after that, a whole period before the next.
    kit.wait_for("the first evaluation", lambda: "no datapoints" in str(alarm(kit, name)["StateReason"]))
    kit.client("cloudwatch").set_alarm_state(AlarmName=name, StateValue="ALARM", StateReason="testing the gate")
    assert alarm(kit, name)["StateValue"] == "ALARM"
    kit.wait_for("the evaluation to put it back", lambda: alarm(kit, name)["StateValue"] == "OK", timeout=15)
