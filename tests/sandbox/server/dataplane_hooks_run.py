"""Run by test_dataplane_hooks.py in its own process (moto patches are process-wide): a sandbox
server with a recording data plane, driven through boto3; prints what the data plane saw."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import boto3
from werkzeug.serving import make_server

from release.sandbox.contracts import LaunchedInstance
from release.sandbox.server import SandboxServer

PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBr7bNwy2hCGC+uUYpqkFEZ5SnuMD0EBcK5HQ9OoQ3xj test"


class RecordingDataPlane:
    def __init__(self) -> None:
        self.events: list[list[Any]] = []
        self.failing_ips: set[str] = set()
        self.broken_images: set[str] = set()

    def launch(self, spec: LaunchedInstance) -> None:
        if spec.image_id in self.broken_images:
            raise RuntimeError(f"RunInstances: image {spec.image_id} has no root filesystem")
        self.events.append(
            [
                "launch",
                spec.instance_id,
                spec.image_id,
                spec.private_ip,
                spec.key_name,
                spec.public_key,
                spec.user_data,
                spec.region,
            ]
        )

    def stop(self, instance_id: str) -> None:
        self.events.append(["stop", instance_id])

    def start(self, instance_id: str) -> None:
        self.events.append(["start", instance_id])

    def terminate(self, instance_id: str) -> None:
        self.events.append(["terminate", instance_id])

    def create_image(self, instance_id: str, image_id: str) -> None:
        self.events.append(["create_image", instance_id, image_id])

    def register_image(self, image_id: str, rootfs: Path) -> None:
        self.events.append(["register_image", image_id, str(rootfs)])

    def copy_image(self, source_image_id: str, image_id: str) -> None:
        self.events.append(["copy_image", source_image_id, image_id])

    def deregister_image(self, image_id: str) -> None:
        self.events.append(["deregister_image", image_id])

    def console_output(self, instance_id: str) -> str:
        keys = f"-----BEGIN SSH HOST KEY KEYS-----\n{PUBLIC_KEY}\n-----END SSH HOST KEY KEYS-----\n"
        return f"console of {instance_id}\n{keys}"

    def probe(self, ip: str, port: int, path: str, timeout: float) -> int | None:
        self.events.append(["probe", ip, port, path])
        return 500 if ip in self.failing_ips else 200


def main() -> None:
    plane = RecordingDataPlane()
    app = SandboxServer(time_scale=0.05, dataplane=plane)
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    app.start_ticker(0.05)
    endpoint = f"http://127.0.0.1:{httpd.server_port}"
    kw = {
        "endpoint_url": endpoint,
        "region_name": "us-east-1",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }
    ec2, elbv2 = boto3.client("ec2", **kw), boto3.client("elbv2", **kw)
    out: dict[str, Any] = {}
    try:
        ec2.import_key_pair(KeyName="deploy", PublicKeyMaterial=PUBLIC_KEY.encode())
        image = ec2.register_image(Name="base", RootDeviceName="/dev/xvda")["ImageId"]
        a, b = (
            i["InstanceId"]
            for i in ec2.run_instances(
                ImageId=image, MinCount=2, MaxCount=2, KeyName="deploy", UserData="#!/bin/sh\necho hi\n"
            )["Instances"]
        )
        ec2.stop_instances(InstanceIds=[b])
        ec2.start_instances(InstanceIds=[b])
        console = ec2.get_console_output(InstanceId=a)["Output"]
        out["console"] = console
        baked = ec2.create_image(InstanceId=a, Name="baked")["ImageId"]
        west = boto3.client("ec2", **{**kw, "region_name": "us-west-2"})
        out["copied"] = west.copy_image(SourceImageId=baked, SourceRegion="us-east-1", Name="baked")["ImageId"]
        ec2.deregister_image(ImageId=baked)

        vpc = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
        subnets = [
            ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.1.{n}.0/24", AvailabilityZone=z)["Subnet"]["SubnetId"]
            for n, z in ((1, "us-east-1a"), (2, "us-east-1b"))
        ]
        tg = elbv2.create_target_group(
            Name="tg",
            Protocol="HTTP",
            Port=8080,
            VpcId=vpc,
            HealthCheckPath="/health",
            HealthCheckIntervalSeconds=5,
            HealthCheckTimeoutSeconds=2,
        )["TargetGroups"][0]
        lb = elbv2.create_load_balancer(Name="lb", Subnets=subnets)["LoadBalancers"][0]
        elbv2.create_listener(
            LoadBalancerArn=lb["LoadBalancerArn"],
            Protocol="HTTP",
            Port=80,
            DefaultActions=[{"Type": "forward", "TargetGroupArn": tg["TargetGroupArn"]}],
        )
        ips = {
            i["InstanceId"]: i["PrivateIpAddress"]
            for r in ec2.describe_instances(InstanceIds=[a, b])["Reservations"]
            for i in r["Instances"]
        }
        plane.failing_ips.add(ips[b])
        elbv2.register_targets(TargetGroupArn=tg["TargetGroupArn"], Targets=[{"Id": a}, {"Id": b}])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            health = {
                d["Target"]["Id"]: d["TargetHealth"]
                for d in elbv2.describe_target_health(TargetGroupArn=tg["TargetGroupArn"])["TargetHealthDescriptions"]
            }
            if health[a]["State"] == "healthy" and health[b]["State"] == "unhealthy":
                break
            time.sleep(0.1)
        out["health"] = health
        ec2.terminate_instances(InstanceIds=[a, b])
        deadline = time.monotonic() + 10  # EC2 terminates in the background: the call returns at once
        while time.monotonic() < deadline and not {a, b} <= {e[1] for e in plane.events if e[0] == "terminate"}:
            time.sleep(0.05)

        broken = ec2.register_image(Name="broken", RootDeviceName="/dev/xvda")["ImageId"]
        plane.broken_images.add(broken)
        [failed] = ec2.run_instances(ImageId=broken, MinCount=1, MaxCount=1)["Instances"]
        described = ec2.describe_instances(InstanceIds=[failed["InstanceId"]])["Reservations"][0]["Instances"][0]
        out["failed_launch"] = [described["State"]["Name"], described["StateReason"]["Code"]]
        template = ec2.create_launch_template(LaunchTemplateName="broken", LaunchTemplateData={"ImageId": broken})
        autoscaling = boto3.client("autoscaling", **kw)
        autoscaling.create_auto_scaling_group(
            AutoScalingGroupName="broken",
            LaunchTemplate={"LaunchTemplateId": template["LaunchTemplate"]["LaunchTemplateId"], "Version": "1"},
            MinSize=1,
            MaxSize=2,
            VPCZoneIdentifier=subnets[0],
        )
        group = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["broken"])["AutoScalingGroups"][0]
        out["broken_group_members"] = len(group["Instances"])
        out.update(
            ids=[a, b],
            image=image,
            baked=baked,
            ips=ips,
            console_text=console,  # EC2 sends base64; botocore decodes it
            events=plane.events,
        )
    finally:
        app.stop_ticker()
        httpd.shutdown()
        httpd.server_close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
