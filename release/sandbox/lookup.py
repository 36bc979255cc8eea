"""Where the running sandbox is, for the product: the one place outside the sandbox tasks where
Kiln's commands reach into the sandbox package. It answers two questions, the way an AWS user's
configuration would (an endpoint, a key): which endpoint to talk to, and which SSH key the
sandbox's instances and bastions accept. Standard library only (server_process.py is too).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from release.sandbox import server_process

# Where `inv sandbox.up` keeps the running sandbox's state. Read at call time, so a test (or a
# bench script) may point it elsewhere.
STATE_DIR = Path(os.environ.get("KILN_SANDBOX_DIR", "/var/lib/kiln/sandbox"))


@dataclass(frozen=True)
class Running:
    endpoint: str  # http://127.0.0.1:<port>: every AWS service, as AWS_ENDPOINT_URL
    time_scale: float  # sandbox seconds per AWS second


def running() -> Running | None:
    """The sandbox of STATE_DIR when it runs, else None."""
    info = server_process.find(STATE_DIR)
    return Running(info.endpoint, info.time_scale) if info is not None else None


def key_file(state_dir: Path) -> Path:
    """The private key of the sandbox's instance key pair (written by `inv sandbox.up`)."""
    return state_dir / "keys" / "instances.pem"


def instance_key() -> Path | None:
    """The running sandbox's instance key, when it has one."""
    path = key_file(STATE_DIR)
    return path if path.exists() else None
