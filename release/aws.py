"""The one boto3 adapter: the only module that imports boto3 (cloud.py speaks through it).

A Session is built from the standard credential chain (env, profile, SSO, instance role), an
optional profile, an optional role to assume (refreshed before it expires, so hour-long
rollouts keep working) and, for the sandbox, an endpoint override with fake credentials.
Every client uses botocore's adaptive retry mode. Every call that can fail goes through
`call()`, which turns botocore's exceptions into one AwsError naming the operation, the
resource and what to do.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, overload

import boto3
import botocore.session
from botocore.config import Config as BotoConfig
from botocore.credentials import (
    AssumeRoleCredentialFetcher,
    CredentialProvider,
    CredentialResolver,
    DeferredRefreshableCredentials,
)
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from release.errors import AwsError

if TYPE_CHECKING:  # the clients' types (types-boto3, a dev dependency) for mypy; nothing at run time
    from botocore.client import BaseClient
    from types_boto3_autoscaling import AutoScalingClient
    from types_boto3_cloudwatch import CloudWatchClient
    from types_boto3_dynamodb import DynamoDBClient
    from types_boto3_ec2 import EC2Client
    from types_boto3_elbv2 import ElasticLoadBalancingv2Client
    from types_boto3_secretsmanager import SecretsManagerClient
    from types_boto3_ssm import SSMClient
    from types_boto3_sts import STSClient

# Fake credentials for the sandbox; the sandbox accepts anything and nothing else sees them.
SANDBOX_KEY = "testing"

# No answer at all: worth asking again (the request may or may not have reached AWS).
_NO_ANSWER = (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError)

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
    session_name: str = "kiln"  # who assumes the role, as CloudTrail shows it: see session_name()
    external_id: str | None = None  # the role's trust policy may demand one (third-party accounts)
    role_duration: int = 3600  # seconds per assumed-role session (botocore refreshes before expiry)
    # How long one AWS second lasts here: 1 on AWS; the sandbox runs its clocks faster.
    time_scale: float = 1.0
    # How long to wait for an answer. The sandbox is on loopback: an answer later than 10 s is a
    # fault (see `inv sandbox.fault --timeout`), not a slow network.
    read_timeout: float = 60.0

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
    """Clients for one target. `attempts` is botocore's budget per call (adaptive retry mode): the
    default rides out throttling; a release's gate asks for fewer, because it polls again anyway
    and one call must never stall it."""

    def __init__(self, target: Target, *, attempts: int = 10) -> None:
        self.target = target
        self._base: boto3.Session | None = None  # what the role is assumed from, when there is one
        self._role: _RoleCredentials | None = None
        self._session = self._make_session()
        self._clients: dict[tuple[str, str, bool], Any] = {}
        self._config = BotoConfig(retries={"mode": "adaptive", "max_attempts": attempts}, connect_timeout=10,
                                  read_timeout=target.read_timeout)
        self._lock = threading.Lock()  # clients are thread-safe; making them from a session is not

    def _make_session(self) -> boto3.Session:
        t = self.target
        if t.is_sandbox:
            return boto3.Session(region_name=t.region, aws_access_key_id=SANDBOX_KEY, aws_secret_access_key=SANDBOX_KEY)
        with self.call("credentials", t.profile and f"profile {t.profile}",
                       hint="Check the profile name (aws configure list-profiles)."):
            base = boto3.Session(profile_name=t.profile, region_name=t.region)
            if not t.role_arn:
                return base
            self._base = base
            self._role = _RoleCredentials(base, t.role_arn, t)
            return _role_session(self._role, t.region)

    # Typed clients (types-boto3), so mypy checks every call's parameters and answer.
    @overload
    def client(self, service: Literal["autoscaling"], region: str | None = None, *,
               once: bool = False) -> AutoScalingClient: ...
    @overload
    def client(self, service: Literal["cloudwatch"], region: str | None = None, *,
               once: bool = False) -> CloudWatchClient: ...
    @overload
    def client(self, service: Literal["dynamodb"], region: str | None = None, *,
               once: bool = False) -> DynamoDBClient: ...
    @overload
    def client(self, service: Literal["ec2"], region: str | None = None, *, once: bool = False) -> EC2Client: ...
    @overload
    def client(self, service: Literal["elbv2"], region: str | None = None, *,
               once: bool = False) -> ElasticLoadBalancingv2Client: ...
    @overload
    def client(self, service: Literal["secretsmanager"], region: str | None = None, *,
               once: bool = False) -> SecretsManagerClient: ...
    @overload
    def client(self, service: Literal["ssm"], region: str | None = None, *, once: bool = False) -> SSMClient: ...
    @overload
    def client(self, service: Literal["sts"], region: str | None = None, *, once: bool = False) -> STSClient: ...
    @overload
    def client(self, service: str, region: str | None = None, *, once: bool = False) -> BaseClient: ...

    def client(self, service: str, region: str | None = None, *, once: bool = False) -> Any:
        """A client for `service`. With `once`, botocore never re-sends a call: for calls AWS cannot
        make idempotent (StartInstanceRefresh has no client token), whose caller looks before it
        asks again."""
        region = region or self.target.region
        key = (service, region, once)
        with self._lock:
            if key not in self._clients:
                config = self._config.merge(BotoConfig(retries={"total_max_attempts": 1})) if once else self._config
                make: Callable[..., Any] = self._session.client  # typed per literal service name
                self._clients[key] = make(service, region_name=region, endpoint_url=self.target.endpoint_url,
                                          config=config)
            return self._clients[key]

    def role_for_tools(self) -> str | None:
        """The role a tool in its own process (Packer) must assume itself: the target's role, unless
        the credentials Kiln was given already act as it (then there is nothing to assume)."""
        if self._role is None:
            return None
        if self._role.already_the_role is None:
            with self.call("credentials"):
                credentials = self._session.get_credentials()
                if credentials is not None:
                    credentials.get_frozen_credentials()  # signs in, which decides
        return None if self._role.already_the_role else self.target.role_arn

    def source_credentials(self) -> dict[str, str]:
        """Credentials as environment variables, for a tool in its own process (Packer): the ones
        the role is assumed from when there is a role (the tool assumes it itself, and so can
        refresh it: see packer/app.pkr.hcl), else the session's own. Fetch right before use."""
        with self.call("credentials"):
            creds = (self._base or self._session).get_credentials()
            if creds is None:
                raise NoCredentialsError()
            frozen = creds.get_frozen_credentials()
        env = {"AWS_ACCESS_KEY_ID": str(frozen.access_key), "AWS_SECRET_ACCESS_KEY": str(frozen.secret_key)}
        if frozen.token:
            env["AWS_SESSION_TOKEN"] = str(frozen.token)
        return env

    @contextmanager
    def call(self, operation: str, resource: str | None = None, *, hint: str | None = None) -> Iterator[None]:
        """Run AWS calls; any botocore failure becomes an AwsError with a hint."""
        try:
            yield
        except ClientError as err:
            error = err.response.get("Error", {})
            code = str(error.get("Code", "Unknown"))
            message = str(error.get("Message", "")) or code
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            raise AwsError(f"{code}: {message}", operation=operation, resource=resource, code=code,
                           hint=hint or _HINTS.get(code), status=status) from None
        except NoCredentialsError:
            raise AwsError("no AWS credentials found", operation=operation, resource=resource, code="NoCredentials",
                           hint="Configure credentials (aws configure / AWS_PROFILE), "
                                "or use the sandbox: inv sandbox.up") from None
        except BotoCoreError as err:
            where = self.target.endpoint_url or f"AWS in {self.target.region}"
            raise AwsError(f"{err} ({where})", operation=operation, resource=resource,
                           code=None if isinstance(err, _NO_ANSWER) else type(err).__name__,
                           hint=hint or ("Is the sandbox running? inv sandbox.status"
                                         if self.target.is_sandbox else None)) from None


class _RoleCredentials:
    """Credentials for acting as `role_arn`, refreshed by botocore before they expire (so
    hour-long releases and bakes keep working).

    The first fetch asks who the base credentials are: when they already act as the role (a CI
    job that signed in as it through OIDC), they are used as they are, since a role cannot assume
    itself unless its own trust policy names it. Otherwise the role is assumed with botocore's
    AssumeRoleCredentialFetcher (the fetcher of botocore's own `role_arn` profiles). MFA belongs
    in the profile the base session reads (`mfa_serial` in ~/.aws/config): botocore prompts there.
    """

    def __init__(self, base: boto3.Session, role_arn: str, t: Target) -> None:
        source = base.get_credentials()
        if source is None:
            raise NoCredentialsError()
        extra: dict[str, Any] = {"RoleSessionName": t.session_name, "DurationSeconds": t.role_duration}
        if t.external_id:
            extra["ExternalId"] = t.external_id
        self._base, self._source, self._role_arn = base, source, role_arn
        self._assume = AssumeRoleCredentialFetcher(base.client, source, role_arn, extra_args=extra).fetch_credentials
        self.already_the_role: bool | None = None  # known after the first fetch

    def fetch(self) -> dict[str, str | None]:
        if self.already_the_role is None:
            identity = self._base.client("sts").get_caller_identity()["Arn"]
            self.already_the_role = acts_as_role(identity, self._role_arn)
        if not self.already_the_role:
            return dict(self._assume())
        frozen = self._source.get_frozen_credentials()
        return {"access_key": frozen.access_key, "secret_key": frozen.secret_key, "token": frozen.token,
                "expiry_time": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}


def acts_as_role(identity_arn: str, role_arn: str) -> bool:
    """Whether a GetCallerIdentity ARN (arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION) is a session
    of the role arn:aws:iam::ACCOUNT:role/[PATH/]NAME. Assumed-role ARNs carry no path."""
    identity = re.fullmatch(r"arn:aws[\w-]*:sts::(\d{12}):assumed-role/([^/]+)/.+", identity_arn)
    role = re.fullmatch(r"arn:aws[\w-]*:iam::(\d{12}):role/(?:.*/)?([^/]+)", role_arn)
    return bool(identity and role and identity.groups() == role.groups())


def _role_session(role: _RoleCredentials, region: str) -> boto3.Session:
    """A session whose only credential provider is `role` (DeferredRefreshableCredentials, both
    botocore's public credential classes)."""
    credentials = DeferredRefreshableCredentials(role.fetch, method="assume-role")
    core = botocore.session.Session()
    core.register_component("credential_provider", CredentialResolver([_Fixed(credentials)]))
    core.set_config_variable("region", region)
    return boto3.Session(botocore_session=core)


class _Fixed(CredentialProvider):
    """A credential provider that always answers with the same (refreshing) credentials."""

    METHOD = "assume-role"

    def __init__(self, credentials: DeferredRefreshableCredentials) -> None:
        super().__init__()
        self._credentials = credentials

    def load(self) -> DeferredRefreshableCredentials:
        return self._credentials


def session_name(user: str) -> str:
    """`kiln-<user>`, as STS accepts a session name (2-64 of letters, digits and +=,.@-_): CloudTrail
    then says who released."""
    cleaned = re.sub(r"[^\w+=,.@-]", "-", user) or "unknown"
    return f"kiln-{cleaned}"[:64]


def client_factory(aws: Aws) -> Callable[[str, str], Any]:
    """(service, region) -> client, for code that needs plain clients (sandbox provisioning)."""
    return lambda service, region: aws.client(service, region)
