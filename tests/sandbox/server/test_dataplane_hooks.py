"""The control plane calls a plugged data plane for EC2's lifecycle, images, console and probes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="module")
def seen() -> dict[str, Any]:
    """What the recording data plane saw while boto3 drove a server in its own process."""
    script = Path(__file__).with_name("dataplane_hooks_run.py")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_ec2_calls_reach_the_data_plane_and_probes_drive_target_health(seen: dict[str, Any]) -> None:
    a, b = seen["ids"]
    events = [e for e in seen["events"] if e[0] != "probe"]
    launches = [e for e in events if e[0] == "launch"]
    assert [e[1] for e in launches] == [a, b]
    for _, instance_id, image, ip, key_name, public_key, user_data, region in launches:
        assert image == seen["image"] and ip == seen["ips"][instance_id] and ip.startswith("127.100.")
        assert key_name == "deploy" and public_key.startswith("ssh-ed25519 ")
        assert user_data == "#!/bin/sh\necho hi\n" and region == "us-east-1"
    assert ["stop", b] in events and ["start", b] in events
    assert events.index(["stop", b]) < events.index(["start", b])
    assert ["create_image", a, seen["baked"]] in events
    assert ["copy_image", seen["baked"], seen["copied"]] in events  # to another region
    assert ["deregister_image", seen["baked"]] in events
    assert ["terminate", a] in events and ["terminate", b] in events
    assert seen["console_text"].startswith(f"console of {a}\n")

    probes = [e for e in seen["events"] if e[0] == "probe"]
    assert {(ip, port, path) for _, ip, port, path in probes} == {
        (seen["ips"][a], 8080, "/health"),
        (seen["ips"][b], 8080, "/health"),
    }
    assert seen["health"][a] == {"State": "healthy"}
    assert seen["health"][b] == {
        "State": "unhealthy",
        "Reason": "Target.ResponseCodeMismatch",
        "Description": "Health checks failed with these codes: [500]",
    }


def test_an_instance_the_data_plane_cannot_start_ends_terminated(seen: dict[str, Any]) -> None:
    assert seen["failed_launch"] == ["terminated", "Server.InternalError"]
    assert seen["broken_group_members"] == 0  # the API call succeeds; the launch activity fails
