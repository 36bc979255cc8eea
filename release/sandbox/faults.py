"""Fault injection: rules that make the sandbox answer AWS calls the way AWS does on a bad day.

A rule names an operation by its botocore name ("StartInstanceRefresh"; "*" for every one),
optionally its service ("autoscaling"; "*" or absent for any), and what happens to a matching call:

  error    the call is NOT performed; the answer is an AWS error in the service's own protocol
           (query XML, EC2 XML, JSON or CBOR), so botocore raises a ClientError with that code and
           retries it as it would AWS's (throttling and 5xx are retryable)
  latency  the call is performed after `latency` seconds (a slow service)
  timeout  the call IS performed, then its response is held for `timeout` seconds (default 15), so
           the client's read timeout fires first and botocore retries: the request reached AWS, the
           response was lost

A rule lasts for the next `count` matching calls, for `seconds` of wall-clock time, or both
(whichever ends first); with neither it lasts one call. One fault per call: the oldest matching
rule fires. Delays are the server's to perform (outside its lock); this book only decides.

Well-known errors are said in each service's own words: "Throttling" is `Throttling` for query
services, `ThrottlingException` for JSON ones and `RequestLimitExceeded` for EC2;
"ServiceUnavailable" is 503; "InternalError" is 500 (`InternalFailure` outside EC2). Any other
code is returned as given, with status 400 unless told otherwise.

Only requests whose operation the sandbox can name are matched: query and EC2 `Action` (query
string or form body), JSON `X-Amz-Target`, and Smithy RPC v2 CBOR paths. REST services (S3) are
never faulted.

Why one module (~500 lines): a fault rule's parsing, matching and the service's own error wire
format (query, JSON, XML) belong together.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any
from urllib.parse import parse_qsl

from release.clock import Clock
from release.sandbox.wire import error_xml, new_request_id

KINDS = ("error", "latency", "timeout")
DEFAULT_TIMEOUT_S = 15.0  # above Kiln's 10 s read timeout for the sandbox
MAX_DELAY_S = 300.0
FINISHED_KEPT = 50
# The services Kiln (and Packer) call: an operation named without its service must be one of theirs.
KILN_SERVICES = ("autoscaling", "ec2", "elbv2", "cloudwatch", "dynamodb", "secretsmanager", "ssm", "sts", "iam")
# SigV4 signing names that are not the botocore service name.
SIGNING_NAMES = {"monitoring": "cloudwatch", "email": "ses", "states": "stepfunctions"}
ELBV2_VERSION = "2015-12-01"

_OPERATION = re.compile(r"^[A-Z][A-Za-z0-9]*$")
_SERVICE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_CODE = re.compile(r"^[A-Za-z][A-Za-z0-9.:_-]*$")
_FIELDS = ("operation", "service", "error", "status", "message", "latency", "timeout", "count", "seconds")


class FaultRequestError(ValueError):
    """A rule that cannot be added; the message says what to send instead."""


@dataclass(frozen=True)
class Preset:
    """A well-known AWS error, in each protocol's words."""

    status: int
    query: str
    ec2: str
    json: str
    message: str

    def code(self, protocol: str) -> str:
        return {"ec2": self.ec2, "query": self.query}.get(protocol, self.json)


PRESETS = {
    "Throttling": Preset(400, "Throttling", "RequestLimitExceeded", "ThrottlingException", "Rate exceeded"),
    "ServiceUnavailable": Preset(
        503, "ServiceUnavailable", "ServiceUnavailable", "ServiceUnavailable", "Service is unavailable; try again."
    ),
    "InternalError": Preset(
        500, "InternalFailure", "InternalError", "InternalFailure", "An internal error occurred; try again."
    ),
}
ALIASES = {
    "ThrottlingException": "Throttling",
    "RequestLimitExceeded": "Throttling",
    "InternalFailure": "InternalError",
}


@dataclass(frozen=True)
class Fault:
    """What a rule does to a call."""

    kind: str  # error | latency | timeout
    code: str | None = None  # error: as asked (a preset name is said in the service's words)
    status: int | None = None  # error: None = the preset's, else 400
    message: str | None = None
    delay: float = 0.0  # latency / timeout, seconds

    @property
    def preset(self) -> Preset | None:
        return PRESETS.get(ALIASES.get(self.code or "", self.code or ""))

    def http_status(self) -> int:
        if self.status is not None:
            return self.status
        preset = self.preset
        return preset.status if preset else 400

    def wire_code(self, protocol: str) -> str:
        preset = self.preset
        return preset.code(protocol) if preset else str(self.code)

    def wire_message(self) -> str:
        if self.message:
            return self.message
        preset = self.preset
        return preset.message if preset else f"Injected by the sandbox: {self.code}"

    def describe(self) -> str:
        if self.kind == "error":
            return f"error {self.code} ({self.http_status()})"
        if self.kind == "latency":
            return f"latency {self.delay:g} s"
        return f"timeout: performed, response held {self.delay:g} s"


@dataclass(frozen=True)
class Call:
    """One AWS request, as far as faults care: which operation of which service, in which protocol."""

    service: str | None  # botocore name; None when the request is unsigned
    operation: str
    protocol: str  # query | ec2 | json | cbor
    content_type: str = ""  # a JSON request's own (the answer speaks the same JSON version)

    @property
    def name(self) -> str:
        return f"{self.service or '?'} {self.operation}"


@dataclass(frozen=True)
class Injection:
    """A rule that fired on a call: what the server must do."""

    rule_id: str
    fault: Fault
    call: Call


@dataclass
class Rule:
    id: str
    operation: str
    service: str  # "*" for any
    fault: Fault
    created_at: datetime
    count: int | None
    seconds: float | None
    remaining: int | None
    expires_at: datetime | None
    fired: int = 0
    ended: str | None = None

    def matches(self, call: Call) -> bool:
        return self.operation in ("*", call.operation) and self.service in ("*", call.service)

    def why_over(self, now: datetime) -> str | None:
        if self.remaining is not None and self.remaining <= 0:
            return "count used up"
        if self.expires_at is not None and now >= self.expires_at:
            return "window expired"
        return None

    def describe(self, now: datetime) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "service": self.service,
            "operation": self.operation,
            "kind": self.fault.kind,
        }
        if self.fault.kind == "error":
            out.update(error=self.fault.code, status=self.fault.http_status(), message=self.fault.wire_message())
        else:
            out[self.fault.kind] = self.fault.delay
        out.update(
            count=self.count,
            remaining=self.remaining,
            seconds=self.seconds,
            expires_at=self.expires_at.isoformat() if self.expires_at else None,
            expires_in=round(max(0.0, (self.expires_at - now).total_seconds()), 3) if self.expires_at else None,
            fired=self.fired,
            created_at=self.created_at.isoformat(),
        )
        if self.ended:
            out["ended"] = self.ended
        return out


OperationCheck = Callable[[str, str], str | None]


class FaultBook:
    """The rules in force, thread-safe; time comes from the injected clock."""

    def __init__(self, clock: Clock, *, check_operation: OperationCheck | None = None) -> None:
        self._clock = clock
        self._check = check_operation or known_operation
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._finished: deque[Rule] = deque(maxlen=FINISHED_KEPT)
        self._ids = itertools.count(1)

    def add(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Add a rule from its JSON form (see `parse_rule`); FaultRequestError when it is wrong."""
        operation, service, fault, count, seconds = parse_rule(request, self._check)
        with self._lock:
            now = self._clock.now()
            remaining = count if count is not None or seconds is not None else 1
            rule = Rule(
                id=f"fault-{next(self._ids)}",
                operation=operation,
                service=service,
                fault=fault,
                created_at=now,
                count=remaining,
                seconds=seconds,
                remaining=remaining,
                expires_at=now + timedelta(seconds=seconds) if seconds is not None else None,
            )
            self._rules.append(rule)
            return rule.describe(now)

    def take(self, call: Call) -> Injection | None:
        """The fault for this call, if a rule matches (and counts it), else None."""
        with self._lock:
            now = self._clock.now()
            self._prune(now)
            for rule in self._rules:
                if rule.matches(call):
                    rule.fired += 1
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    self._prune(now)
                    return Injection(rule.id, rule.fault, call)
        return None

    def snapshot(self) -> dict[str, Any]:
        """{"rules": the rules in force, oldest first; "finished": the last ones that ended}."""
        with self._lock:
            now = self._clock.now()
            self._prune(now)
            return {
                "rules": [r.describe(now) for r in self._rules],
                "finished": [r.describe(now) for r in self._finished],
            }

    def clear(self) -> int:
        """End every rule; how many were in force."""
        with self._lock:
            now = self._clock.now()
            self._prune(now)
            cleared = len(self._rules)
            for rule in self._rules:
                self._end(rule, "cleared")
            self._rules = []
            return cleared

    def delete(self, rule_id: str) -> bool:
        with self._lock:
            for rule in self._rules:
                if rule.id == rule_id:
                    self._rules.remove(rule)
                    self._end(rule, "deleted")
                    return True
            return False

    def _prune(self, now: datetime) -> None:
        kept: list[Rule] = []
        for rule in self._rules:
            why = rule.why_over(now)
            if why is None:
                kept.append(rule)
            else:
                self._end(rule, why)
        self._rules = kept

    def _end(self, rule: Rule, why: str) -> None:
        rule.ended = why
        self._finished.append(rule)


# ---- rules from JSON ------------------------------------------------------------------------


def parse_rule(
    request: Mapping[str, Any], check_operation: OperationCheck
) -> tuple[str, str, Fault, int | None, float | None]:
    """{"operation", "service"?, one of "error" (+ "status"?, "message"?) | "latency" | "timeout",
    "count"?, "seconds"?} -> (operation, service, fault, count, seconds). Every problem is a
    FaultRequestError saying what to send."""
    if not isinstance(request, Mapping):
        raise FaultRequestError('send a JSON object such as {"operation": "DescribeAutoScalingGroups", '
                                '"error": "Throttling", "count": 2}')
    unknown = sorted(set(request) - set(_FIELDS))
    if unknown:
        raise FaultRequestError(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(_FIELDS)}")
    operation = request.get("operation")
    if not isinstance(operation, str) or not (operation == "*" or _OPERATION.match(operation)):
        raise FaultRequestError('"operation" must be an AWS operation name as botocore spells it '
                                '(e.g. "StartInstanceRefresh"), or "*" for every operation')
    service = request.get("service") or "*"
    if not isinstance(service, str) or not (service == "*" or _SERVICE.match(service)):
        raise FaultRequestError('"service" must be a botocore service name (e.g. "autoscaling", "ec2", "dynamodb")')
    if operation != "*" or service != "*":
        problem = check_operation(service, operation)
        if problem:
            raise FaultRequestError(problem)

    kinds = [k for k in KINDS if request.get(k) is not None]
    if len(kinds) != 1:
        raise FaultRequestError('say what happens with exactly one of "error" (an AWS error code), "latency" '
                                '(seconds) or "timeout" (seconds, or true for 15)')
    kind = kinds[0]
    if kind != "error":
        for field in ("status", "message"):
            if request.get(field) is not None:
                raise FaultRequestError(f'"{field}" goes with "error", not "{kind}"')
    if kind == "error":
        code = request["error"]
        if not isinstance(code, str) or not _CODE.match(code):
            raise FaultRequestError('"error" must be an AWS error code such as "Throttling", "ServiceUnavailable", '
                                    '"InternalError" or "InvalidParameterValue"')
        status = request.get("status")
        if status is not None and (not _is_int(status) or not 400 <= status <= 599):
            raise FaultRequestError('"status" must be an HTTP error status, 400 to 599')
        message = request.get("message")
        if message is not None and not isinstance(message, str):
            raise FaultRequestError('"message" must be a string')
        fault = Fault("error", code=code, status=status, message=message)
    else:
        value = request[kind]
        if kind == "timeout" and value is True:
            value = DEFAULT_TIMEOUT_S
        if not _is_number(value) or not 0 < value <= MAX_DELAY_S:
            raise FaultRequestError(f'"{kind}" must be a number of seconds, more than 0 and at most {MAX_DELAY_S:g}')
        fault = Fault(kind, delay=float(value))

    count, seconds = request.get("count"), request.get("seconds")
    if count is not None and (not _is_int(count) or count < 1):
        raise FaultRequestError('"count" must be a whole number of calls, at least 1')
    if seconds is not None and (not _is_number(seconds) or seconds <= 0):
        raise FaultRequestError('"seconds" must be a number of seconds, more than 0')
    return operation, service, fault, count, float(seconds) if seconds is not None else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@cache
def _available_services() -> frozenset[str]:
    import botocore.session

    return frozenset(botocore.session.get_session().get_available_services())


@cache
def _operations(service: str) -> frozenset[str]:
    import botocore.session

    return frozenset(botocore.session.get_session().get_service_model(service).operation_names)


def known_operation(service: str, operation: str) -> str | None:
    """None when botocore knows `operation` of `service` ("*": any of the services Kiln calls);
    otherwise what is wrong."""
    if service != "*" and service not in _available_services():
        return f"botocore has no service {service!r} (names as in boto3.client(...), e.g. 'autoscaling', 'elbv2')"
    if operation == "*":
        return None
    if service != "*":
        if operation not in _operations(service):
            return f"{service} has no operation {operation!r} (botocore's names, e.g. 'DescribeAutoScalingGroups')"
        return None
    if not any(operation in _operations(s) for s in KILN_SERVICES):
        return (f"no service Kiln calls ({', '.join(KILN_SERVICES)}) has an operation {operation!r}; "
                'check its spelling, or name its "service"')
    return None


# ---- requests and answers ----------------------------------------------------------------------


def identify(environ: Mapping[str, Any], body: bytes, signing: str | None) -> Call | None:
    """Which operation a WSGI request calls (None when it is not an AWS call the sandbox can name).
    `signing` is the service of the request's SigV4 credential scope, if signed."""
    service = SIGNING_NAMES.get(signing or "", signing)
    target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
    content_type = str(environ.get("CONTENT_TYPE", ""))
    if target and "." in target:
        json_type = content_type if content_type.startswith("application/x-amz-json") else ""
        return Call(service, target.rsplit(".", 1)[1], "json", json_type)
    path = str(environ.get("PATH_INFO", ""))
    if environ.get("HTTP_SMITHY_PROTOCOL") == "rpc-v2-cbor" and "/operation/" in path:
        return Call(service, path.rstrip("/").rsplit("/operation/", 1)[1], "cbor")
    form = dict(parse_qsl(str(environ.get("QUERY_STRING", "")), keep_blank_values=True))
    if "form-urlencoded" in content_type and body:
        form.update(parse_qsl(body.decode(errors="replace"), keep_blank_values=True))
    action = form.get("Action")
    if not action:
        return None
    if service == "elasticloadbalancing":
        service = "elbv2" if form.get("Version") == ELBV2_VERSION else "elb"
    return Call(service, action, "ec2" if service == "ec2" else "query")


@dataclass(frozen=True)
class ErrorReply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def render_error(injection: Injection, request_id: str | None = None) -> ErrorReply:
    """The injected error as the service would send it, in the request's protocol."""
    call, fault = injection.call, injection.fault
    request_id = request_id or new_request_id()
    status = fault.http_status()
    code = fault.wire_code(call.protocol)
    message = fault.wire_message()
    headers = [("x-amzn-RequestId", request_id)]
    if call.protocol in ("json", "cbor") and _query_compatible(call.service):
        # A former query service (CloudWatch) also says its query code; botocore raises that one.
        kind = "Sender" if status < 500 else "Receiver"
        headers.append(("x-amzn-query-error", f"{fault.wire_code('query')};{kind}"))
    if call.protocol == "json":
        headers.append(("Content-Type", call.content_type or "application/x-amz-json-1.1"))
        return ErrorReply(status, headers, json.dumps({"__type": code, "message": message}).encode())
    if call.protocol == "cbor":
        headers += [("Content-Type", "application/cbor"), ("smithy-protocol", "rpc-v2-cbor")]
        return ErrorReply(status, headers, _cbor_text_map({"__type": code, "message": message}))
    body = error_xml(call.protocol, code, message, request_id, sender=status < 500,
                     namespace=_xml_namespace(call.service))
    return ErrorReply(status, [*headers, ("Content-Type", "text/xml")], body)


@cache
def _metadata(service: str | None) -> Mapping[str, Any]:
    if not service:
        return {}
    import botocore.session

    try:
        return dict(botocore.session.get_session().get_service_model(service).metadata)
    except Exception:  # a service botocore does not know: plain protocol rules
        return {}


def _query_compatible(service: str | None) -> bool:
    return "awsQueryCompatible" in _metadata(service)


def _xml_namespace(service: str | None) -> str | None:
    namespace = _metadata(service).get("xmlNamespace")
    return str(namespace) if namespace else None


def _cbor_text_map(items: Mapping[str, str]) -> bytes:
    """A CBOR map of text strings (RFC 8949 major types 5 and 3): all an error body needs."""

    def head(major: int, length: int) -> bytes:
        if length < 24:
            return bytes([major << 5 | length])
        if length < 0x100:
            return bytes([major << 5 | 24, length])
        if length < 0x10000:
            return bytes([major << 5 | 25]) + length.to_bytes(2, "big")
        return bytes([major << 5 | 26]) + length.to_bytes(4, "big")

    out = bytearray(head(5, len(items)))
    for key, value in items.items():
        for text in (key, value):
            raw = text.encode()
            out += head(3, len(raw)) + raw
    return bytes(out)
