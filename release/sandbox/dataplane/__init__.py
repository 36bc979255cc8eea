"""The sandbox's data plane: images are root filesystems, instances are real processes.

See docs/dataplane.md. The entry point is LocalDataPlane (contracts.DataPlane).
"""

from release.sandbox.dataplane.cloudinit import parse_host_keys
from release.sandbox.dataplane.plane import LocalDataPlane, require_root

__all__ = ["LocalDataPlane", "parse_host_keys", "require_root"]
