"""A small STS on loopback for tests: answers AssumeRole and GetCallerIdentity as AWS does (who
is asking is read from the request's access key) and records every request; anything else is
refused (400) and recorded, so a test can prove nothing but signing in was attempted."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

NS = "https://sts.amazonaws.com/doc/2011-06-15/"
BASE_KEY = "AKIAFAKEBASE00000001"  # what a test hands the CLI as its own credentials
ASSUMED_KEY = "ASIAFAKEASSUMED00001"  # what AssumeRole answers


@dataclass
class FakeSts:
    account: str = "333333333333"
    deny_assume_role: bool = False
    base_is_the_role: bool = False  # the base credentials are already a session of kiln-deploy (CI)
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
                     f"<AccessKeyId>{ASSUMED_KEY}</AccessKeyId><SecretAccessKey>secret</SecretAccessKey>"
                     "<SessionToken>token</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration></Credentials>"
                     "<AssumedRoleUser><AssumedRoleId>AROAFAKE:kiln</AssumedRoleId>"
                     f"<Arn>arn:aws:sts::{sts.account}:assumed-role/kiln-deploy/kiln</Arn></AssumedRoleUser>"
                     "</AssumeRoleResult><ResponseMetadata><RequestId>r2</RequestId></ResponseMetadata>"
                     "</AssumeRoleResponse>")
    if action == "GetCallerIdentity":
        as_base = BASE_KEY in params["Authorization"]
        arn = (f"arn:aws:iam::{sts.account}:user/ci" if as_base and not sts.base_is_the_role
               else f"arn:aws:sts::{sts.account}:assumed-role/kiln-deploy/{'gh-run-1' if as_base else 'kiln'}")
        return 200, (f'<GetCallerIdentityResponse xmlns="{NS}"><GetCallerIdentityResult><Arn>{arn}</Arn>'
                     f"<UserId>AROAFAKE:kiln</UserId><Account>{sts.account}</Account></GetCallerIdentityResult>"
                     "<ResponseMetadata><RequestId>r3</RequestId></ResponseMetadata></GetCallerIdentityResponse>")
    return 400, "<Error><Code>ValidationError</Code><Message>not part of signing in</Message></Error>"


@contextmanager
def serving() -> Iterator[FakeSts]:
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


