"""The local ALB against real tiny HTTP servers on 127.0.0.x: routing, pass-through, errors,
metrics, and a clean stop."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from release.clock import FakeClock
from release.errors import UsageError
from release.sandbox.engines.alarms import AlarmDefinition, MetricStore, evaluate
from release.sandbox.engines.alb import LocalLoadBalancer, MetricDatum
from release.sandbox.engines.health import HealthCheckConfig, Probe, TargetHealthTracker


class _Target(ThreadingHTTPServer):
    """Answers with JSON describing what it received; `status`/`mode` change its behaviour."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, ip: str, name: str) -> None:
        super().__init__((ip, 0), _EchoHandler)
        self.name = name
        self.status = 200
        self.mode = "answer"  # or "hang up" (close without a response), or "stall"
        self.release = threading.Event()

    @property
    def endpoint(self) -> tuple[str, int]:
        return str(self.server_address[0]), int(self.server_address[1])


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Target

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.server.mode == "hang up":
            self.close_connection = True
            return
        if self.server.mode == "stall":
            self.server.release.wait(5)
        page = json.dumps(
            {
                "target": self.server.name,
                "method": self.command,
                "path": self.path,
                "body": body.decode(),
                "headers": {k.lower(): v for k, v in self.headers.items()},
            }
        ).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Set-Cookie", "a=1")
        self.send_header("Set-Cookie", "b=2")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(page)

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET


@pytest.fixture
def targets() -> Iterator[list[_Target]]:
    servers = [_Target("127.0.0.2", "a"), _Target("127.0.0.3", "b")]
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}) for s in servers]
    for thread in threads:
        thread.start()
    yield servers
    for server in servers:
        server.release.set()
        server.shutdown()
        server.server_close()
    for thread in threads:
        thread.join()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _request(
    alb: LocalLoadBalancer, method: str = "GET", path: str = "/", body: bytes | None = None, **headers: str
) -> tuple[int, dict[str, object], http.client.HTTPResponse]:
    host, port = alb.address
    connection = http.client.HTTPConnection(host, port, timeout=5)
    try:
        connection.request(method, path, body=body, headers={k.replace("_", "-"): v for k, v in headers.items()})
        response = connection.getresponse()
        raw = response.read()
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {"raw": raw.decode()}
        return response.status, parsed, response
    finally:
        connection.close()


def _metrics(data: list[MetricDatum]) -> dict[str, float]:
    return {d.metric_name: d.value for d in data}


def test_round_robin_across_two_targets(targets: list[_Target], clock: FakeClock) -> None:
    with LocalLoadBalancer(lambda: [t.endpoint for t in targets], clock) as alb:
        seen = [_request(alb)[1]["target"] for _ in range(4)]
    assert seen == ["a", "b", "a", "b"]


def test_target_removal_takes_effect_on_the_next_request(targets: list[_Target], clock: FakeClock) -> None:
    routable = [t.endpoint for t in targets]
    with LocalLoadBalancer(lambda: routable, clock) as alb:
        _request(alb)
        routable.remove(targets[0].endpoint)
        assert {_request(alb)[1]["target"] for _ in range(3)} == {"b"}


def test_no_target_is_503_from_the_load_balancer(clock: FakeClock) -> None:
    with LocalLoadBalancer(lambda: [], clock) as alb:
        status, body, response = _request(alb)
        assert status == 503
        assert response.getheader("Server") == "awselb/2.0"
        assert "503 Service Unavailable" in str(body["raw"])
        metrics = _metrics(alb.drain_metrics(include_current=True))
    # Rejected before a target was chosen: not in RequestCount.
    assert metrics == {"RequestCount": 0.0, "HTTPCode_ELB_5XX_Count": 1.0, "HTTPCode_ELB_503_Count": 1.0}


def test_target_and_load_balancer_5xx_are_counted_apart(targets: list[_Target], clock: FakeClock) -> None:
    a, b = targets
    b.status = 500
    with LocalLoadBalancer(lambda: [a.endpoint, b.endpoint], clock, period_seconds=60) as alb:
        statuses = [_request(alb)[0] for _ in range(4)]
        b.mode = "hang up"
        statuses += [_request(alb)[0] for _ in range(2)]
        assert alb.drain_metrics() == []  # the period is still in progress
        clock.advance(60)
        data = alb.drain_metrics()
    assert statuses == [200, 500, 200, 500, 200, 502]
    assert {d.timestamp for d in data} == {clock.now().replace(minute=0, second=0)}
    metrics = _metrics(data)
    assert metrics.pop("TargetResponseTime") > 0
    assert metrics == {
        "RequestCount": 6.0,
        "HTTPCode_Target_2XX_Count": 3.0,
        "HTTPCode_Target_5XX_Count": 2.0,
        "HTTPCode_ELB_5XX_Count": 1.0,
        "HTTPCode_ELB_502_Count": 1.0,
    }


def test_quiet_periods_report_a_zero_request_count(targets: list[_Target], clock: FakeClock) -> None:
    with LocalLoadBalancer(lambda: [targets[0].endpoint], clock) as alb:
        _request(alb)
        clock.advance(180)
        data = alb.drain_metrics()
        assert [(d.metric_name, d.value) for d in data if d.metric_name == "RequestCount"] == [
            ("RequestCount", 1.0),
            ("RequestCount", 0.0),
            ("RequestCount", 0.0),
        ]
        assert alb.drain_metrics() == []  # drained once only


def test_stalled_target_is_504(targets: list[_Target], clock: FakeClock) -> None:
    targets[0].mode = "stall"
    with LocalLoadBalancer(lambda: [targets[0].endpoint], clock, idle_timeout_seconds=0.3) as alb:
        status, _, _ = _request(alb)
        targets[0].release.set()
        assert status == 504
        assert _metrics(alb.drain_metrics(include_current=True))["HTTPCode_ELB_504_Count"] == 1.0


def test_method_path_headers_and_body_pass_through(targets: list[_Target], clock: FakeClock) -> None:
    with LocalLoadBalancer(lambda: [targets[0].endpoint], clock) as alb:
        port = alb.address[1]
        status, echo, response = _request(
            alb, "POST", "/users?x=1", b'{"name": "ada"}', X_Custom="yes", X_Forwarded_For="203.0.113.9"
        )
    assert status == 200
    assert (echo["method"], echo["path"], echo["body"]) == ("POST", "/users?x=1", '{"name": "ada"}')
    headers = echo["headers"]
    assert isinstance(headers, dict)
    assert headers["x-custom"] == "yes"
    assert headers["host"] == f"127.0.0.1:{port}"
    assert headers["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert (headers["x-forwarded-proto"], headers["x-forwarded-port"]) == ("http", str(port))
    assert headers["x-amzn-trace-id"].startswith("Root=1-")
    assert response.msg.get_all("Set-Cookie") == ["a=1", "b=2"]


def test_chunked_request_body_is_forwarded_with_a_length(targets: list[_Target], clock: FakeClock) -> None:
    with LocalLoadBalancer(lambda: [targets[0].endpoint], clock) as alb:
        host, port = alb.address
        connection = http.client.HTTPConnection(host, port, timeout=5)
        connection.request("PUT", "/upload", body=iter([b"hello ", b"world"]), encode_chunked=True)
        response = connection.getresponse()
        echo = json.loads(response.read())
        connection.close()
    assert echo["body"] == "hello world"
    assert "transfer-encoding" not in echo["headers"]
    assert echo["headers"]["content-length"] == "11"


def test_head_keeps_the_targets_content_length(targets: list[_Target], clock: FakeClock) -> None:
    with LocalLoadBalancer(lambda: [targets[0].endpoint], clock) as alb:
        status, body, response = _request(alb, "HEAD")
    assert (status, body) == (200, {})
    assert int(response.getheader("Content-Length") or 0) > 0


@pytest.mark.timeout(15)  # a stop that waited for the idle client would take the 60 s idle timeout
def test_keep_alive_client_is_served_and_cut_at_stop(targets: list[_Target], clock: FakeClock) -> None:
    alb = LocalLoadBalancer(lambda: [targets[0].endpoint], clock)
    alb.start()
    host, port = alb.address
    connection = http.client.HTTPConnection(host, port, timeout=5)
    for _ in range(3):  # one connection, three requests
        connection.request("GET", "/")
        assert connection.getresponse().read()
    alb.stop()  # must not wait for the idle client
    connection.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, port), timeout=1).close()
    assert not [t for t in threading.enumerate() if t.name in ("alb-listener", "alb-connection")]


def test_non_loopback_addresses_are_refused(clock: FakeClock) -> None:
    with pytest.raises(UsageError, match="loopback"):
        LocalLoadBalancer(lambda: [], clock, host="0.0.0.0")
    with LocalLoadBalancer(lambda: [("192.0.2.10", 80)], clock) as alb:
        assert _request(alb)[0] == 502  # never dialled


def test_ipv6_loopback_listener(targets: list[_Target], clock: FakeClock) -> None:
    with LocalLoadBalancer(lambda: [targets[0].endpoint], clock, host="::1") as alb:
        assert alb.url.startswith("http://[::1]:")
        assert _request(alb)[1]["target"] == "a"


def _probe(probe: Probe) -> int | None:
    """A health check as the sandbox's worker performs it: GET, status or None."""
    connection = http.client.HTTPConnection(probe.ip, probe.port, timeout=probe.timeout)
    try:
        connection.request("GET", probe.path)
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


def test_health_routing_metrics_and_alarm_together(targets: list[_Target], clock: FakeClock) -> None:
    """Probes mark the failing target unhealthy, the ALB stops sending it traffic, and once the
    healthy one starts failing, its 5xx push a CloudWatch alarm into ALARM."""
    tg = "targetgroup/web/1"
    tracker = TargetHealthTracker(clock, time_scale=0.1, registration_delay_s=0)
    tracker.configure(tg, HealthCheckConfig(path="/health", interval_seconds=10, timeout_seconds=5))
    for name, target in zip(("i-a", "i-b"), targets, strict=True):
        tracker.register(tg, name, *target.endpoint)
    targets[1].status = 503

    def check_all() -> None:
        for probe in tracker.due_probes():
            tracker.record(probe, _probe(probe))
        clock.advance(1)  # 10 s interval at time_scale 0.1

    for _ in range(2):  # UnhealthyThresholdCount = 2
        check_all()
    assert [d.health.state for d in tracker.describe(tg)] == ["healthy", "unhealthy"]

    store = MetricStore()
    alarm = AlarmDefinition(
        alarm_name="web-target-5xx",
        namespace="AWS/ApplicationELB",
        metric_name="HTTPCode_Target_5XX_Count",
        dimensions=(("LoadBalancer", "app/web/1"),),
        statistic="Sum",
        period=60,
        evaluation_periods=1,
        threshold=0,
        comparison_operator="GreaterThanThreshold",
        treat_missing_data="notBreaching",
    )
    with LocalLoadBalancer(lambda: tracker.routing_targets(tg), clock, period_seconds=6) as alb:
        assert {_request(alb)[1]["target"] for _ in range(4)} == {"a"}
        targets[0].status = 500
        assert [_request(alb)[0] for _ in range(3)] == [500, 500, 500]
        clock.advance(6)
        for datum in alb.drain_metrics():
            store.put_statistics(
                alarm.namespace, datum.metric_name, dict(alarm.dimensions), datum.timestamp, datum.statistics
            )
    state = evaluate(alarm, store, clock.now(), time_scale=0.1)
    assert state.state == "ALARM"
    assert state.reason.startswith("Threshold Crossed: 1 datapoint [3.0 (")
