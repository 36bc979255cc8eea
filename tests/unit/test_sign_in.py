"""Signing in to an AWS account, through the real CLI: role assumption, the account guard, and
failures that are one line.

The CLI runs as a subprocess against a small STS on loopback (the standard AWS_ENDPOINT_URL
points every client at it) that answers AssumeRole and GetCallerIdentity as AWS does and records
every request it gets. Any other request is refused (400) and recorded, so a test can prove that
nothing but the sign-in was attempted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest

ROOT = Path(__file__).parents[2]
INV = Path(sys.executable).parent / "inv"
NS = "https://sts.amazonaws.com/doc/2011-06-15/"

CONFIG = """
default_environment = "prod"
[app]
name = "webapp"
version = "1.0.0"
[base_image]
owners = ["136693071363"]
name = "debian-12-amd64-*"
[environments.prod]
region = "eu-central-1"
account_id = "333333333333"
role_arn = "arn:aws:iam::333333333333:role/kiln-deploy"
external_id = "kiln-prod-7f3a"
role_duration = 7200
asg = "web-prod"
launch_template = "web-prod"
secret_id = "webapp/prod"
"""


@dataclass
class FakeSts:
    account: str = "333333333333"
    deny_assume_role: bool = False
    requests: list[dict[str, str]] = field(default_factory=list)
    endpoint: str = ""


def _answer(sts: FakeSts, params: dict[str, str]) -> tuple[int, str]:
    action = params.get("Action", "?")
    if action == "AssumeRole" and sts.deny_assume_role:
        return 403, (f'<ErrorResponse xmlns="{NS}"><Error><Type>Sender</Type><Code>AccessDenied</Code>'
                     "<Message>User: arn:aws:iam::333333333333:user/ci is not authorized to perform: sts:AssumeRole "
                     f"on resource: {params.get('RoleArn')}</Message></Error><RequestId>r1</RequestId></ErrorResponse>")
    if action == "AssumeRole":
        return 200, (f'<AssumeRoleResponse xmlns="{NS}"><AssumeRoleResult><Credentials>'
                     "<AccessKeyId>ASIAFAKEASSUMED00001</AccessKeyId><SecretAccessKey>secret</SecretAccessKey>"
                     "<SessionToken>token</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration></Credentials>"
                     "<AssumedRoleUser><AssumedRoleId>AROAFAKE:kiln</AssumedRoleId>"
                     f"<Arn>arn:aws:sts::{sts.account}:assumed-role/kiln-deploy/kiln</Arn></AssumedRoleUser>"
                     "</AssumeRoleResult><ResponseMetadata><RequestId>r2</RequestId></ResponseMetadata>"
                     "</AssumeRoleResponse>")
    if action == "GetCallerIdentity":
        return 200, (f'<GetCallerIdentityResponse xmlns="{NS}"><GetCallerIdentityResult>'
                     f"<Arn>arn:aws:sts::{sts.account}:assumed-role/kiln-deploy/kiln</Arn>"
                     f"<UserId>AROAFAKE:kiln</UserId><Account>{sts.account}</Account></GetCallerIdentityResult>"
                     "<ResponseMetadata><RequestId>r3</RequestId></ResponseMetadata></GetCallerIdentityResponse>")
    return 400, "<Error><Code>ValidationError</Code><Message>not part of signing in</Message></Error>"


@pytest.fixture
def sts() -> Iterator[FakeSts]:
    state = FakeSts()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            params = {k: v[0] for k, v in parse_qs(body).items()}
            target = self.headers.get("X-Amz-Target")  # JSON protocols (DynamoDB, …) name the action here
            if target:
                params["Action"] = target
            params["Authorization"] = self.headers.get("Authorization", "")
            state.requests.append(params)
            status, text = _answer(state, params)
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def inv(sts: FakeSts, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "versions.toml"
    config.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=sts.endpoint, AWS_ACCESS_KEY_ID="AKIAFAKEBASE00000001", AWS_SECRET_ACCESS_KEY="x",
               AWS_EC2_METADATA_DISABLED="true", KILN_ACTOR="ana@ci-runner 7", AWS_MAX_ATTEMPTS="1")
    return subprocess.run([str(INV), *args, "--env", "prod", "--config", str(config)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_role_is_assumed_with_a_session_name_that_says_who(sts: FakeSts, tmp_path: Path) -> None:
    done = inv(sts, tmp_path, "status")
    assume = next(r for r in sts.requests if r["Action"] == "AssumeRole")
    assert assume["RoleArn"] == "arn:aws:iam::333333333333:role/kiln-deploy"
    assert assume["RoleSessionName"] == "kiln-ana@ci-runner-7"
    assert (assume["ExternalId"], assume["DurationSeconds"]) == ("kiln-prod-7f3a", "7200")
    assert "AKIAFAKEBASE00000001" in assume["Authorization"]  # assumed with the base credentials
    identity = next(r for r in sts.requests if r["Action"] == "GetCallerIdentity")
    assert "ASIAFAKEASSUMED00001" in identity["Authorization"]  # and everything after as the role
    assert "account" in done.stdout and "333333333333" in done.stdout


@pytest.mark.parametrize("command", [["release", "--version", "1.0.0"], ["rollback"], ["bake"],
                                     ["release", "--version", "1.0.0", "--dry-run"]])
def test_the_wrong_account_stops_every_command_before_anything_else(sts: FakeSts, tmp_path: Path,
                                                                    command: list[str]) -> None:
    sts.account = "999999999999"
    done = inv(sts, tmp_path, *command)
    assert done.returncode == 2, done.stderr
    message = done.stderr.strip()
    assert "999999999999" in message and "333333333333" in message and "nothing was changed" in message
    assert "Traceback" not in done.stderr
    assert [r["Action"] for r in sts.requests] == ["AssumeRole", "GetCallerIdentity"]  # and no other call


def test_a_failed_sign_in_is_one_line_and_exit_4(sts: FakeSts, tmp_path: Path) -> None:
    sts.deny_assume_role = True
    done = inv(sts, tmp_path, "release", "--version", "1.0.0")
    assert done.returncode == 4
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) <= 2, done.stderr  # the error, and its hint
    assert "AccessDenied" in lines[0] and "sts:AssumeRole" in lines[0]
    assert "trust policy" in done.stderr
    assert [r["Action"] for r in sts.requests] == ["AssumeRole"]


def test_a_missing_profile_is_one_line_and_exit_4(sts: FakeSts, tmp_path: Path) -> None:
    config = tmp_path / "versions.toml"
    config.write_text(CONFIG.replace('role_duration = 7200', 'role_duration = 7200\nprofile = "nope"'))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "config"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "credentials"),
               AWS_ENDPOINT_URL=sts.endpoint, AWS_EC2_METADATA_DISABLED="true")
    done = subprocess.run([str(INV), "status", "--env", "prod", "--config", str(config)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 4, done.stderr
    assert "Traceback" not in done.stderr and "nope" in done.stderr
    assert sts.requests == []
