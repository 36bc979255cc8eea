"""The one boto3 adapter: the only module that imports boto3.

A Session is built from the standard credential chain (env, profile, SSO, instance role), an
optional profile, an optional role to assume (refreshed before it expires, so hour-long
rollouts keep working) and, for the sandbox, an endpoint override with fake credentials.
Every client uses botocore's adaptive retry mode. Every call that can fail goes through
`call()`, which turns botocore's exceptions into one AwsError naming the operation, the
resource and what to do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
import botocore.session
from botocore.config import Config as BotoConfig
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from release.errors import AwsError

# Fake credentials for the sandbox; the sandbox accepts anything and nothing else sees them.
SANDBOX_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}

_RETRIES = BotoConfig(retries={"mode": "adaptive", "max_attempts": 10}, connect_timeout=10, read_timeout=60)

_PERMISSION_HINT = "The role Kiln runs as lacks this permission; see iam/ for the policy Kiln needs."
# What to do about the AWS error codes users hit most.
_HINTS = {
    "ExpiredToken": "Refresh your AWS credentials (e.g. `aws sso login`).",
    "UnrecognizedClientException": "Check your AWS credentials and region.",
    "AccessDenied": _PERMISSION_HINT,
    "AccessDeniedException": _PERMISSION_HINT,
    "UnauthorizedOperation": _PERMISSION_HINT,
    "Throttling": "AWS is throttling requests; retry in a minute.",
}


@dataclass(frozen=True)
class Target:
    """Where AWS calls go."""

    region: str
    endpoint_url: str | None = None  # the sandbox's endpoint; None for real AWS
    profile: str | None = None
    role_arn: str | None = None
    session_name: str = "kiln"

    @property
    def is_sandbox(self) -> bool:
        return self.endpoint_url is not None


def credentials_configured() -> bool:
    """True when the standard credential chain finds credentials (no network call)."""
    try:
        return botocore.session.Session().get_credentials() is not None
    except BotoCoreError:
        return False


class Aws:
    def __init__(self, target: Target) -> None:
        self.target = target
        self._session = self._make_session()
        self._clients: dict[tuple[str, str], Any] = {}

    def _make_session(self) -> boto3.Session:
        t = self.target
        if t.is_sandbox:
            return boto3.Session(region_name=t.region, **SANDBOX_CREDENTIALS)
        base = boto3.Session(profile_name=t.profile, region_name=t.region)
        if not t.role_arn:
            return base
        return _assumed_role_session(base, t.role_arn, t.session_name, t.region)

    def client(self, service: str, region: str | None = None) -> Any:
        region = region or self.target.region
        key = (service, region)
        if key not in self._clients:
            self._clients[key] = self._session.client(
                service, region_name=region, endpoint_url=self.target.endpoint_url, config=_RETRIES)
        return self._clients[key]

    @contextmanager
    def call(self, operation: str, resource: str | None = None, *, hint: str | None = None) -> Iterator[None]:
        """Run AWS calls; any botocore failure becomes an AwsError with a hint."""
        try:
            yield
        except ClientError as err:
            error = err.response.get("Error", {})
            code = str(error.get("Code", "Unknown"))
            message = str(error.get("Message", "")) or code
            raise AwsError(f"{code}: {message}", operation=operation, resource=resource, code=code,
                           hint=hint or _HINTS.get(code)) from None
        except NoCredentialsError:
            raise AwsError("no AWS credentials found", operation=operation, resource=resource,
                           hint="Configure credentials (aws configure / AWS_PROFILE), "
                                "or use the sandbox: inv sandbox.up") from None
        except BotoCoreError as err:
            where = self.target.endpoint_url or f"AWS in {self.target.region}"
            raise AwsError(f"{err} ({where})", operation=operation, resource=resource,
                           hint=hint or ("Is the sandbox running? inv sandbox.status"
                                         if self.target.is_sandbox else None)) from None


def _assumed_role_session(
    base: boto3.Session, role_arn: str, session_name: str, region: str
) -> boto3.Session:
    sts = base.client("sts", config=_RETRIES)

    def fetch() -> dict[str, str]:
        creds = sts.assume_role(RoleArn=role_arn, RoleSessionName=session_name)["Credentials"]
        expiry: datetime = creds["Expiration"]
        return {
            "access_key": creds["AccessKeyId"],
            "secret_key": creds["SecretAccessKey"],
            "token": creds["SessionToken"],
            "expiry_time": expiry.astimezone(UTC).isoformat(),
        }

    refreshable = RefreshableCredentials.create_from_metadata(
        metadata=fetch(), refresh_using=fetch, method="sts-assume-role")
    core = botocore.session.Session()
    core._credentials = refreshable  # botocore's documented way to plug refreshable credentials
    core.set_config_variable("region", region)
    return boto3.Session(botocore_session=core)


def client_factory(aws: Aws) -> Callable[[str, str], Any]:
    """(service, region) -> client, for code that needs plain clients (sandbox provisioning)."""
    return lambda service, region: aws.client(service, region)
