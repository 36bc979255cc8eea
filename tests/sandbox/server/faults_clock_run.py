"""Run by test_faults.py in its own process (moto patches are process-wide): a sandbox server on a
FakeClock with a recording data plane, faulted through its admin API and driven through boto3;
prints what happened as one JSON line."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from werkzeug.serving import make_server

from release.clock import FakeClock
from release.sandbox.contracts import LaunchedInstance
from release.sandbox.server import SandboxServer


class RecordingDataPlane:
    """Just enough of a data plane to see which instance calls the sandbox makes."""

    def __init__(self) -> None:
        self.events: list[list[str]] = []

    def launch(self, spec: LaunchedInstance) -> None:
        self.events.append(["launch", spec.instance_id])

    def stop(self, instance_id: str) -> None:
        self.events.append(["stop", instance_id])

    def start(self, instance_id: str) -> None:
        self.events.append(["start", instance_id])

    def terminate(self, instance_id: str) -> None:
        self.events.append(["terminate", instance_id])

    def kill(self, instance_id: str) -> None:
        self.events.append(["kill", instance_id])

    def create_image(self, instance_id: str, image_id: str) -> None: ...

    def register_image(self, image_id: str, rootfs: Any) -> None: ...

    def copy_image(self, source_image_id: str, image_id: str) -> None: ...

    def deregister_image(self, image_id: str) -> None: ...

    def console_output(self, instance_id: str) -> str:
        return ""

    def probe(self, ip: str, port: int, path: str, timeout: float) -> int | None:
        return 200


def main() -> None:
    clock, plane = FakeClock(), RecordingDataPlane()
    app = SandboxServer(time_scale=0.1, clock=clock, dataplane=plane)
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    endpoint = f"http://127.0.0.1:{httpd.server_port}"

    def admin(method: str, route: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(f"{endpoint}/_kiln/{route}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status), json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), json.loads(exc.read())

    ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                       aws_secret_access_key="testing", config=Config(retries={"total_max_attempts": 1}))

    def describe() -> str:
        try:
            ec2.describe_instances()
            return "ok"
        except ClientError as exc:
            return str(exc.response["Error"]["Code"])

    out: dict[str, Any] = {}
    try:
        admin("POST", "faults", {"operation": "DescribeInstances", "service": "ec2", "error": "Throttling",
                                 "seconds": 30})
        out["window"] = [describe()]
        clock.advance(29)
        out["window"].append(describe())
        clock.advance(1)
        out["window"].append(describe())
        out["after_window"] = admin("GET", "faults")[1]

        # A delay is the server's clock sleeping (here: instantly), outside its lock.
        admin("POST", "faults", {"operation": "DescribeImages", "latency": 7})
        admin("POST", "faults", {"operation": "RunInstances", "timeout": True})
        ec2.describe_images(Owners=["self"])
        image = ec2.register_image(Name="base", RootDeviceName="/dev/xvda")["ImageId"]
        instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        out["sleeps"] = clock.sleeps

        out["kill"] = admin("POST", f"instances/{instance}/kill")
        out["stop"] = admin("POST", f"instances/{instance}/stop")
        out["kill_stopped"] = admin("POST", f"instances/{instance}/kill")
        out["state"] = ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]["State"]
        out["events"] = plane.events
        out["instance"] = instance
    finally:
        httpd.shutdown()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
