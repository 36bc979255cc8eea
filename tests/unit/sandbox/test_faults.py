"""The fault book on a FakeClock: which call a rule hits, for how long, and how errors go on the wire
(parsed back by botocore's own response parsers, as a client would)."""

from __future__ import annotations

import threading
from typing import Any

import botocore.session
import pytest
from botocore.awsrequest import HeadersDict
from botocore.parsers import create_parser

from release.clock import FakeClock
from release.sandbox.faults import (
    DEFAULT_TIMEOUT_S,
    Call,
    Fault,
    FaultBook,
    FaultRequestError,
    Injection,
    identify,
    known_operation,
    render_error,
)

DESCRIBE = Call("autoscaling", "DescribeAutoScalingGroups", "query")
REFRESH = Call("autoscaling", "StartInstanceRefresh", "query")
INSTANCES = Call("ec2", "DescribeInstances", "ec2")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def book(clock: FakeClock) -> FaultBook:
    return FaultBook(clock)


def fired(book: FaultBook, call: Call, times: int) -> list[str | None]:
    return [(i.fault.code or i.fault.kind) if (i := book.take(call)) else None for _ in range(times)]


def test_a_counted_rule_hits_the_next_n_matching_calls_then_ends(book: FaultBook) -> None:
    rule = book.add({"operation": "DescribeAutoScalingGroups", "error": "Throttling", "count": 2})
    assert (rule["id"], rule["remaining"], rule["status"], rule["fired"]) == ("fault-1", 2, 400, 0)
    assert book.take(REFRESH) is None  # another operation: not counted
    assert fired(book, DESCRIBE, 3) == ["Throttling", "Throttling", None]
    snapshot = book.snapshot()
    assert snapshot["rules"] == []
    [done] = snapshot["finished"]
    assert (done["id"], done["fired"], done["remaining"], done["ended"]) == ("fault-1", 2, 0, "count used up")


def test_a_window_lasts_its_seconds_of_the_clock(book: FaultBook, clock: FakeClock) -> None:
    book.add({"operation": "*", "service": "autoscaling", "latency": 2.5, "seconds": 30})
    assert book.snapshot()["rules"][0]["expires_in"] == 30.0
    clock.advance(29.9)
    injection = book.take(REFRESH)
    assert injection is not None and (injection.fault.kind, injection.fault.delay) == ("latency", 2.5)
    assert book.take(INSTANCES) is None  # another service
    assert book.snapshot()["rules"][0]["remaining"] is None  # a window counts nothing down
    clock.advance(0.1)
    assert book.take(REFRESH) is None
    assert book.snapshot()["finished"][0]["ended"] == "window expired"


def test_count_and_window_together_end_with_whichever_comes_first(book: FaultBook, clock: FakeClock) -> None:
    book.add({"operation": "DescribeInstances", "error": "ServiceUnavailable", "count": 5, "seconds": 10})
    assert fired(book, INSTANCES, 2) == ["ServiceUnavailable"] * 2
    clock.advance(10)
    assert book.take(INSTANCES) is None
    book.add({"operation": "DescribeInstances", "error": "ServiceUnavailable", "count": 1, "seconds": 10})
    assert fired(book, INSTANCES, 2) == ["ServiceUnavailable", None]


def test_without_count_or_window_a_rule_lasts_one_call(book: FaultBook) -> None:
    rule = book.add({"operation": "StartInstanceRefresh", "timeout": True})
    assert (rule["count"], rule["timeout"]) == (1, DEFAULT_TIMEOUT_S)
    assert fired(book, REFRESH, 2) == ["timeout", None]


def test_the_oldest_matching_rule_fires_one_fault_per_call(book: FaultBook) -> None:
    book.add({"operation": "*", "error": "InternalError", "count": 1})
    book.add({"operation": "StartInstanceRefresh", "service": "autoscaling", "error": "Throttling", "count": 1})
    assert fired(book, REFRESH, 3) == ["InternalError", "Throttling", None]


def test_clear_and_delete_end_rules(book: FaultBook) -> None:
    first = book.add({"operation": "*", "latency": 1, "seconds": 60})
    book.add({"operation": "*", "latency": 1, "seconds": 60})
    assert book.delete(first["id"]) and not book.delete(first["id"])
    assert book.clear() == 1
    assert book.take(REFRESH) is None
    assert [r["ended"] for r in book.snapshot()["finished"]] == ["deleted", "cleared"]


def test_rules_are_counted_exactly_under_concurrent_calls(book: FaultBook) -> None:
    book.add({"operation": "DescribeAutoScalingGroups", "error": "Throttling", "count": 500})
    hits: list[int] = []

    def caller() -> None:
        hits.append(sum(1 for _ in range(100) if book.take(DESCRIBE) is not None))

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(hits) == 500
    assert book.snapshot()["finished"][0]["fired"] == 500


@pytest.mark.parametrize(
    ("request_", "says"),
    [
        ([1, 2], "JSON object"),
        ({"operation": "DescribeInstances", "error": "Throttling", "colour": "red"}, "unknown field(s) colour"),
        ({"error": "Throttling"}, '"operation" must be'),
        ({"operation": "describe-instances", "error": "Throttling"}, '"operation" must be'),
        ({"operation": "DescribeInstance", "error": "Throttling"}, "no service Kiln calls"),
        ({"operation": "DescribeInstances", "service": "ec3", "error": "Throttling"}, "no service 'ec3'"),
        ({"operation": "DescribeInstances", "service": "autoscaling", "error": "X"}, "autoscaling has no operation"),
        ({"operation": "DescribeInstances"}, "exactly one of"),
        ({"operation": "DescribeInstances", "error": "Throttling", "latency": 1}, "exactly one of"),
        ({"operation": "DescribeInstances", "error": "no spaces please"}, '"error" must be'),
        ({"operation": "DescribeInstances", "error": "Throttling", "status": 200}, '"status" must be'),
        ({"operation": "DescribeInstances", "error": "Throttling", "status": True}, '"status" must be'),
        ({"operation": "DescribeInstances", "latency": 1, "status": 500}, '"status" goes with "error"'),
        ({"operation": "DescribeInstances", "latency": 0}, '"latency" must be'),
        ({"operation": "DescribeInstances", "timeout": 301}, '"timeout" must be'),
        ({"operation": "DescribeInstances", "timeout": "15"}, '"timeout" must be'),
        ({"operation": "DescribeInstances", "latency": 1, "count": 0}, '"count" must be'),
        ({"operation": "DescribeInstances", "latency": 1, "count": 1.5}, '"count" must be'),
        ({"operation": "DescribeInstances", "latency": 1, "seconds": -1}, '"seconds" must be'),
    ],
)
def test_bad_rules_are_refused_with_what_to_send(book: FaultBook, request_: Any, says: str) -> None:
    with pytest.raises(FaultRequestError) as refused:
        book.add(request_)
    assert says in str(refused.value)
    assert book.snapshot() == {"rules": [], "finished": []}


def test_operations_are_botocore_names() -> None:
    assert known_operation("autoscaling", "StartInstanceRefresh") is None
    assert known_operation("*", "GetSecretValue") is None
    assert known_operation("dynamodb", "*") is None
    assert known_operation("sqs", "SendMessage") is None  # any botocore service, when named


# ---- requests -------------------------------------------------------------------------------


def test_operations_are_found_in_every_protocol_kiln_speaks() -> None:
    form = b"Action=StartInstanceRefresh&Version=2011-01-01&AutoScalingGroupName=web"
    environ = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": "application/x-www-form-urlencoded; charset=utf-8"}
    assert identify(environ, form, "autoscaling") == REFRESH
    assert identify({"QUERY_STRING": "Action=DescribeInstances&Version=2016-11-15"}, b"", "ec2") == INSTANCES
    elbv2 = identify({"QUERY_STRING": "Action=DescribeTargetHealth&Version=2015-12-01"}, b"", "elasticloadbalancing")
    assert elbv2 == Call("elbv2", "DescribeTargetHealth", "query")
    dynamodb = {"HTTP_X_AMZ_TARGET": "DynamoDB_20120810.GetItem", "CONTENT_TYPE": "application/x-amz-json-1.0"}
    assert identify(dynamodb, b"{}", "dynamodb") == Call("dynamodb", "GetItem", "json", "application/x-amz-json-1.0")
    cloudwatch = {"HTTP_X_AMZ_TARGET": "GraniteServiceVersion20100801.DescribeAlarms", "CONTENT_TYPE": "x"}
    assert identify(cloudwatch, b"{}", "monitoring") == Call("cloudwatch", "DescribeAlarms", "json")
    cbor = {"HTTP_SMITHY_PROTOCOL": "rpc-v2-cbor", "PATH_INFO": "/service/GraniteServiceVersion20100801/operation/"
            "DescribeAlarms"}  # fmt: skip
    assert identify(cbor, b"", "monitoring") == Call("cloudwatch", "DescribeAlarms", "cbor")
    assert identify({"PATH_INFO": "/bucket/key", "REQUEST_METHOD": "GET"}, b"", "s3") is None
    assert identify({"QUERY_STRING": "Action=GetCallerIdentity"}, b"", None) == Call(None, "GetCallerIdentity", "query")


# ---- errors on the wire -------------------------------------------------------------------------

PROTOCOLS = {"query": "query", "ec2": "ec2", "json": "json", "cbor": "smithy-rpc-v2-cbor"}


def parsed_error(injection: Injection) -> dict[str, Any]:
    """What botocore makes of the reply: the dict behind ClientError."""
    call = injection.call
    model = botocore.session.get_session().get_service_model(str(call.service))
    reply = render_error(injection, "req-1")
    response = {"status_code": reply.status, "headers": HeadersDict(reply.headers), "body": reply.body}
    parser = create_parser(PROTOCOLS[call.protocol])
    result: dict[str, Any] = parser.parse(response, model.operation_model(call.operation).output_shape)
    return result


@pytest.mark.parametrize(
    ("call", "asked", "code", "status"),
    [
        (DESCRIBE, "Throttling", "Throttling", 400),
        (INSTANCES, "Throttling", "RequestLimitExceeded", 400),
        (Call("dynamodb", "DescribeTable", "json", "application/x-amz-json-1.0"), "Throttling", "ThrottlingException",
         400),
        (Call("secretsmanager", "GetSecretValue", "json"), "ServiceUnavailable", "ServiceUnavailable", 503),
        (REFRESH, "InternalError", "InternalFailure", 500),
        (INSTANCES, "InternalFailure", "InternalError", 500),
        (Call("cloudwatch", "DescribeAlarms", "json", "application/x-amz-json-1.0"), "Throttling", "Throttling", 400),
        (Call("cloudwatch", "DescribeAlarms", "cbor"), "ThrottlingException", "Throttling", 400),
        (Call("sts", "GetCallerIdentity", "query"), "ExpiredToken", "ExpiredToken", 400),
    ],
)
def test_errors_parse_as_the_services_own(call: Call, asked: str, code: str, status: int) -> None:
    result = parsed_error(Injection("fault-1", Fault("error", code=asked), call))
    assert result["Error"]["Code"] == code
    assert result["ResponseMetadata"]["HTTPStatusCode"] == status
    assert result["Error"]["Message"]


def test_a_given_status_and_message_are_kept() -> None:
    fault = Fault("error", code="InvalidParameterValue", status=422, message="no <thanks> & bye")
    result = parsed_error(Injection("fault-1", fault, REFRESH))
    assert (result["Error"]["Code"], result["Error"]["Message"]) == ("InvalidParameterValue", "no <thanks> & bye")
    assert result["ResponseMetadata"]["HTTPStatusCode"] == 422
