"""The AWS query wire protocol, driven by botocore's service models.

Autoscaling and elbv2 speak `query`; EC2 speaks `ec2` (a query dialect). Both send a flat form
(`Action=…&Version=…&Prefs.MinHealthyPercentage=50`) and expect XML back. This module turns the
flat form into the nested dict boto3 would have been given (the input shape), and a result dict
(keyed like the output shape) into the XML botocore's parser expects. Because both directions walk
the model, serving a new operation needs no hand-written XML.

The rules below are botocore's own serializer/parser rules, read from its docs and models:
- query input: structure members by locationName (else member name); lists `Name.member.N`
  (or `Name.N` when flattened); maps `Name.entry.N.key/value`; an empty list is `Name=`.
- ec2 input: members by queryName, else capitalised locationName, else member name; every list
  is `Name.N`.
- query output: `<OpResponse xmlns><OpResult>…</OpResult><ResponseMetadata>…`; ec2 output:
  `<OpResponse xmlns><requestId>…` with members straight under the root.
- errors: query `<ErrorResponse><Error><Type><Code><Message>`; ec2 `<Response><Errors><Error>`.

JSON services (SSM: `X-Amz-Target: AmazonSSM.SendCommand`, a JSON body) are `JsonWire`: the body
already is the boto3-shaped input; the result goes back as JSON with timestamps as epoch seconds
(botocore's JSON parser reads either those or ISO strings), errors as `{"__type", "message"}`.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any
from xml.sax.saxutils import escape

import botocore.session

EC2_NAMESPACE = "http://ec2.amazonaws.com/doc/2016-11-15/"


class WireError(Exception):
    """An AWS error as it goes on the wire: code, message, HTTP status, who is at fault."""

    def __init__(self, code: str, message: str, status: int = 400, *, sender: bool = True) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.sender = sender


@dataclass(frozen=True)
class RequestContext:
    """Who is asking, and where: what a handler needs to find the right moto backend."""

    service: str  # botocore service name: "autoscaling", "ec2", "elbv2"
    operation: str
    account_id: str
    region: str
    request_id: str


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "text/xml"
    headers: tuple[tuple[str, str], ...] = ()


@cache
def _service_model(service: str) -> Any:
    return botocore.session.get_session().get_service_model(service)


def new_request_id() -> str:
    return str(uuid.uuid4())


class ServiceWire:
    """Parses requests for, and renders responses of, one query/ec2-protocol service."""

    validation_code = "ValidationError"

    def __init__(self, service: str) -> None:
        self.model = _service_model(service)
        self.protocol: str = self.model.protocol
        if self.protocol not in ("query", "ec2"):
            raise ValueError(f"{service} speaks {self.protocol}, not query/ec2")
        self.namespace: str = EC2_NAMESPACE if self.protocol == "ec2" else self.model.metadata["xmlNamespace"]
        self.api_version: str = self.model.api_version

    def has_operation(self, operation: str) -> bool:
        return operation in self.model.operation_names

    # ---- input -------------------------------------------------------------------------------

    def parse(self, operation: str, form: Mapping[str, str]) -> dict[str, Any]:
        """Flat form params (Action/Version included or not) -> boto3-shaped parameters."""
        shape = self.model.operation_model(operation).input_shape
        if shape is None:
            return {}
        params = {k: v for k, v in form.items() if k not in ("Action", "Version")}
        keys = frozenset(params)
        parsed = self._parse_structure(shape, "", params, keys)
        return parsed or {}

    def _input_name(self, member_name: str, member_shape: Any) -> str:
        ser = member_shape.serialization
        if self.protocol == "ec2":
            if "queryName" in ser:
                return str(ser["queryName"])
            if "name" in ser:
                name = str(ser["name"])
                return name[0].upper() + name[1:]
            return member_name
        return str(ser.get("name", member_name))

    @staticmethod
    def _present(prefix: str, keys: frozenset[str]) -> bool:
        dotted = prefix + "."
        return prefix in keys or any(k.startswith(dotted) for k in keys)

    def _parse_value(self, shape: Any, prefix: str, params: Mapping[str, str], keys: frozenset[str]) -> Any:
        kind = shape.type_name
        if kind == "structure":
            return self._parse_structure(shape, prefix, params, keys)
        if kind == "list":
            return self._parse_list(shape, prefix, params, keys)
        if kind == "map":
            return self._parse_map(shape, prefix, params, keys)
        if prefix not in params:
            return None
        return _parse_scalar(kind, params[prefix], prefix)

    def _parse_structure(
        self, shape: Any, prefix: str, params: Mapping[str, str], keys: frozenset[str]
    ) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        for member_name, member_shape in shape.members.items():
            name = self._input_name(member_name, member_shape)
            member_prefix = f"{prefix}.{name}" if prefix else name
            if not self._present(member_prefix, keys):
                continue
            value = self._parse_value(member_shape, member_prefix, params, keys)
            if value is not None:
                out[member_name] = value
        return out if (out or not prefix) else None

    def _parse_list(self, shape: Any, prefix: str, params: Mapping[str, str], keys: frozenset[str]) -> list[Any]:
        if params.get(prefix) == "":
            return []
        if self.protocol == "ec2":
            list_prefix = prefix
        elif shape.serialization.get("flattened"):
            list_prefix = prefix
            if "name" in shape.member.serialization:
                list_prefix = ".".join([*prefix.split(".")[:-1], shape.member.serialization["name"]])
        else:
            list_prefix = f"{prefix}.{shape.member.serialization.get('name', 'member')}"
        items: list[Any] = []
        index = 1
        while self._present(f"{list_prefix}.{index}", keys):
            items.append(self._parse_value(shape.member, f"{list_prefix}.{index}", params, keys))
            index += 1
        return items

    def _parse_map(self, shape: Any, prefix: str, params: Mapping[str, str], keys: frozenset[str]) -> dict[str, Any]:
        entry = prefix if shape.serialization.get("flattened") else f"{prefix}.entry"
        key_name = shape.key.serialization.get("name", "key")
        value_name = shape.value.serialization.get("name", "value")
        out: dict[str, Any] = {}
        index = 1
        while self._present(f"{entry}.{index}", keys):
            key = params.get(f"{entry}.{index}.{key_name}", "")
            out[key] = self._parse_value(shape.value, f"{entry}.{index}.{value_name}", params, keys)
            index += 1
        return out

    # ---- output ------------------------------------------------------------------------------

    def render(self, operation: str, result: Mapping[str, Any], request_id: str | None = None) -> Reply:
        op = self.model.operation_model(operation)
        request_id = request_id or new_request_id()
        parts: list[str] = [f'<?xml version="1.0" encoding="UTF-8"?>\n<{operation}Response xmlns="{self.namespace}">']
        if self.protocol == "ec2":
            parts.append(f"<requestId>{request_id}</requestId>")
            if op.output_shape is not None:
                parts.append(self._render_members(op.output_shape, result))
        else:
            if op.output_shape is not None:
                wrapper = op.output_shape.serialization.get("resultWrapper", f"{operation}Result")
                parts.append(f"<{wrapper}>{self._render_members(op.output_shape, result)}</{wrapper}>")
            parts.append(f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>")
        parts.append(f"</{operation}Response>")
        return Reply(200, "".join(parts).encode())

    def render_error(self, error: WireError, request_id: str | None = None) -> Reply:
        request_id = request_id or new_request_id()
        namespace = None if self.protocol == "ec2" else self.namespace
        body = error_xml(self.protocol, error.code, error.message, request_id, sender=error.sender, namespace=namespace)
        return Reply(error.status, body)

    def _render_members(self, shape: Any, value: Mapping[str, Any]) -> str:
        out: list[str] = []
        for member_name, member_shape in shape.members.items():
            member_value = value.get(member_name)
            if member_value is None:
                continue
            tag = member_shape.serialization.get("name", member_name)
            out.append(self._render_named(member_shape, tag, member_value))
        return "".join(out)

    def _render_named(self, shape: Any, tag: str, value: Any) -> str:
        kind = shape.type_name
        if kind == "structure":
            return f"<{tag}>{self._render_members(shape, value)}</{tag}>"
        if kind == "list":
            member_tag = shape.member.serialization.get("name", "member")
            if shape.serialization.get("flattened"):
                flat_tag = shape.member.serialization.get("name", tag)
                return "".join(self._render_named(shape.member, flat_tag, item) for item in value)
            inner = "".join(self._render_named(shape.member, member_tag, item) for item in value)
            return f"<{tag}>{inner}</{tag}>"
        if kind == "map":
            key_tag = shape.key.serialization.get("name", "key")
            value_tag = shape.value.serialization.get("name", "value")
            entries = "".join(
                f"<entry>{self._render_named(shape.key, key_tag, k)}"
                f"{self._render_named(shape.value, value_tag, v)}</entry>"
                for k, v in value.items()
            )
            return f"<{tag}>{entries}</{tag}>"
        return f"<{tag}>{escape(_render_scalar(kind, value))}</{tag}>"


class JsonWire:
    """Parses requests for, and renders responses of, one JSON-protocol service (SSM)."""

    validation_code = "ValidationException"

    def __init__(self, service: str) -> None:
        self.model = _service_model(service)
        if self.model.protocol != "json":
            raise ValueError(f"{service} speaks {self.model.protocol}, not json")
        self.content_type = f"application/x-amz-json-{self.model.metadata.get('jsonVersion', '1.0')}"

    def has_operation(self, operation: str) -> bool:
        return operation in self.model.operation_names

    def parse(self, operation: str, body: bytes) -> dict[str, Any]:
        """The JSON body -> the parameters (required members checked, as the service does)."""
        try:
            params = json.loads(body or b"{}")
        except ValueError as exc:
            raise WireError("SerializationException", f"The request body is not JSON: {exc}") from exc
        if not isinstance(params, dict):
            raise WireError("SerializationException", "The request body must be a JSON object.")
        shape = self.model.operation_model(operation).input_shape
        missing = [m for m in (shape.required_members if shape is not None else []) if params.get(m) is None]
        if missing:
            raise WireError(self.validation_code, f"1 validation error detected: Value null at '{missing[0][0].lower()}"
                            f"{missing[0][1:]}' failed to satisfy constraint: Member must not be null")  # fmt: skip
        return params

    def render(self, operation: str, result: Mapping[str, Any], request_id: str | None = None) -> Reply:
        shape = self.model.operation_model(operation).output_shape
        body = self._value(shape, result) if shape is not None else {}
        return Reply(200, json.dumps(body).encode(), self.content_type,
                     (("x-amzn-RequestId", request_id or new_request_id()),))  # fmt: skip

    def render_error(self, error: WireError, request_id: str | None = None) -> Reply:
        body = json.dumps({"__type": error.code, "message": error.message}).encode()
        return Reply(error.status, body, self.content_type, (("x-amzn-RequestId", request_id or new_request_id()),))

    def _value(self, shape: Any, value: Any) -> Any:
        kind = shape.type_name
        if kind == "structure":
            return {name: self._value(member, value[name]) for name, member in shape.members.items()
                    if value.get(name) is not None}  # fmt: skip
        if kind == "list":
            return [self._value(shape.member, item) for item in value]
        if kind == "map":
            return {str(k): self._value(shape.value, v) for k, v in value.items()}
        if kind == "timestamp" and isinstance(value, datetime):
            moment = value if value.tzinfo else value.replace(tzinfo=UTC)
            return moment.timestamp()
        if kind == "blob":
            raw = value.encode() if isinstance(value, str) else bytes(value)
            return base64.b64encode(raw).decode()
        return value


def wire_for(service: str) -> ServiceWire | JsonWire:
    """The wire of a service, by the protocol its model speaks."""
    return JsonWire(service) if _service_model(service).protocol == "json" else ServiceWire(service)


def error_xml(
    protocol: str, code: str, message: str, request_id: str, *, sender: bool = True, namespace: str | None = None
) -> bytes:
    """An error body as a query (`<ErrorResponse>`) or ec2 (`<Response><Errors>`) service sends it."""
    code, message = escape(code), escape(message)
    if protocol == "ec2":
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
            f"<Code>{code}</Code><Message>{message}</Message></Error></Errors>"
            f"<RequestID>{request_id}</RequestID></Response>"
        ).encode()
    kind = "Sender" if sender else "Receiver"
    xmlns = f' xmlns="{namespace}"' if namespace else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<ErrorResponse{xmlns}>'
        f"<Error><Type>{kind}</Type><Code>{code}</Code><Message>{message}</Message></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>"
    ).encode()


def _parse_scalar(kind: str, text: str, where: str) -> Any:
    try:
        if kind == "boolean":
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
        if kind in ("integer", "long"):
            return int(text)
        if kind in ("float", "double"):
            return float(text)
        if kind == "timestamp":
            return _parse_timestamp(text)
        if kind == "blob":
            return base64.b64decode(text)
    except ValueError as exc:
        raise WireError("ValidationError", f"Invalid value for parameter {where}: {text!r}") from exc
    return text


def _parse_timestamp(text: str) -> datetime:
    try:
        return datetime.fromtimestamp(float(text), UTC)
    except ValueError:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _render_scalar(kind: str, value: Any) -> str:
    if kind == "boolean":
        return "true" if value else "false"
    if kind == "timestamp":
        if isinstance(value, datetime):
            moment = value if value.tzinfo else value.replace(tzinfo=UTC)
            return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        return str(value)
    if kind == "blob":
        raw = value.encode() if isinstance(value, str) else bytes(value)
        return base64.b64encode(raw).decode()
    return str(value)


def iso_timestamp(moment: datetime) -> str:
    """The ISO 8601 form EC2 uses in string fields such as DeprecationTime."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
