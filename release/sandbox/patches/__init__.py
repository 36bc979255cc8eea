"""The fixes Kiln needs in moto 5.2.5, each small, named and documented (docs/sandbox.md).

moto is patched in place (classes, not instances), so the fixes hold for every account and region
the server creates. Every patch was checked against moto 5.2.5's source; `install` refuses any
other moto version rather than patching code it has not read.

The patches need a little shared state (the clock, the data plane, the target-health book, the
loopback address pool); it lives in one `Runtime` that `install` sets for the process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import version

from release.clock import Clock
from release.errors import SandboxError
from release.sandbox.contracts import DataPlane
from release.sandbox.patches.addresses import LoopbackAddresses
from release.sandbox.patches.cloudwatch import AlarmEvaluator
from release.sandbox.patches.targets import TargetHealthBook

MOTO_VERSION = "5.2.5"


@dataclass
class Runtime:
    clock: Clock
    time_scale: float
    targets: TargetHealthBook
    alarms: AlarmEvaluator
    addresses: LoopbackAddresses = field(default_factory=LoopbackAddresses)
    dataplane: DataPlane | None = None


_runtime: Runtime | None = None
_installed = False


def runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError("release.sandbox.patches.install() has not been called")
    return _runtime


def install(rt: Runtime) -> None:
    """Apply every patch (once per process) and make `rt` the state they use."""
    global _runtime, _installed
    found = version("moto")
    if found != MOTO_VERSION:
        raise SandboxError(
            f"the sandbox's moto fixes were written against moto {MOTO_VERSION}, found {found}",
            where="sandbox server",
            hint=f"Install moto[server]=={MOTO_VERSION} (see constraints.txt).",
        )
    _runtime = rt
    if _installed:
        return
    from release.sandbox.patches import (
        autoscaling,
        cloudwatch,
        images,
        instances,
        launch_templates,
        loadbalancers,
        targets,
    )

    cloudwatch.apply()
    launch_templates.apply()
    autoscaling.apply()
    images.apply()
    instances.apply()
    targets.apply()
    loadbalancers.apply()
    _installed = True
