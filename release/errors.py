"""The one error tree. Every error Kiln raises on purpose is a KilnError.

Each error carries an exit code and renders as one line: where, what, and how to fix it.
Tasks turn it into `invoke.Exit(str(err), err.exit_code)`, so users never see a traceback
for a mistake they can fix.
"""

from __future__ import annotations

# Exit codes, so scripts and CI can tell outcomes apart.
EXIT_OK = 0
EXIT_FAILED = 1  # a generic failure that is not one of the below
EXIT_BAD_INPUT = 2  # config, arguments, preconditions: nothing was changed
EXIT_BAKE_FAILED = 3
EXIT_AWS = 4
EXIT_SANDBOX = 5
EXIT_ROLLED_BACK = 10  # the gate failed and the rollback succeeded
EXIT_ROLLBACK_FAILED = 11  # the gate failed and the rollback did not finish
EXIT_DRIFT = 12
EXIT_LEASE_LOST = 13  # another process took this release over; this one stopped, changing nothing more


class KilnError(Exception):
    """Base of every error Kiln raises on purpose."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text = f"{text.rstrip('.')}. {self.hint}"
        return text


class ConfigError(KilnError):
    """versions.toml (or another input file) is malformed. Lists every problem at once."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, problems: list[str], *, path: str) -> None:
        self.problems = problems
        self.path = path
        if len(problems) == 1:
            message = problems[0]
        else:
            message = f"{len(problems)} problems in {path}:\n" + "\n".join(f"  - {p}" for p in problems)
        super().__init__(message)


class UsageError(KilnError):
    """A bad argument or an unmet precondition; nothing was changed."""

    exit_code = EXIT_BAD_INPUT


class NotFound(UsageError):
    """Something the user named (a version, an AMI, a group) does not exist."""


class WrongAccount(UsageError):
    """The credentials act in another AWS account than the environment names: nothing was done."""


class LockHeld(UsageError):
    """Another release holds the environment's lock."""


class LeaseLost(KilnError):
    """This process's lock was taken over (an explicit break, or its lease lapsed and another
    process resumed): it must stop at once and change nothing more."""

    exit_code = EXIT_LEASE_LOST


class ToolError(KilnError):
    """A required external tool (packer, ansible-playbook, debootstrap…) is missing or unusable."""

    exit_code = EXIT_BAD_INPUT


class BakeError(KilnError):
    exit_code = EXIT_BAKE_FAILED


class AwsError(KilnError):
    """An AWS call failed. Carries the operation and the resource it was about."""

    exit_code = EXIT_AWS

    def __init__(
        self,
        message: str,
        *,
        operation: str,
        resource: str | None = None,
        code: str | None = None,
        hint: str | None = None,
        status: int | None = None,
    ) -> None:
        self.operation = operation
        self.resource = resource
        self.code = code
        self.status = status  # the HTTP status AWS answered with; None when no answer came
        where = f"{operation} {resource}" if resource else operation
        super().__init__(message, where=where, hint=hint)


    @property
    def transient(self) -> bool:
        """Worth asking again: throttling, AWS's own failures (5xx), or no answer at all
        (connection refused, read timeout)."""
        return (self.code is None or self.code in TRANSIENT_CODES
                or (self.status is not None and self.status >= 500))


# Error codes AWS documents as throttling or its own transient failures, across services.
TRANSIENT_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled", "RequestThrottledException",
    "TooManyRequestsException", "RequestLimitExceeded", "ProvisionedThroughputExceededException", "SlowDown",
    "ServiceUnavailable", "ServiceUnavailableException", "InternalFailure", "InternalError",
    "InternalServerError", "RequestTimeout", "RequestTimeoutException", "EC2ThrottledException",
})


class SandboxError(KilnError):
    exit_code = EXIT_SANDBOX


class GateFailed(KilnError):
    """The health gate failed and Kiln rolled back successfully."""

    exit_code = EXIT_ROLLED_BACK


class RollbackFailed(KilnError):
    exit_code = EXIT_ROLLBACK_FAILED


class DriftDetected(KilnError):
    exit_code = EXIT_DRIFT


class SshError(KilnError):
    """An SSH connection or command failed: unreachable, refused, timed out, or not authorised."""


class HostKeyRejected(SshError):
    """The server offered a host key Kiln cannot verify. Never accepted, never remembered."""


class CommandTimeout(SshError):
    """A remote command did not finish within its timeout."""
