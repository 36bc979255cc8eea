"""Loads the boot script (a file without .py, installed as /usr/local/sbin/webapp-boot) as a module."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "ansible/roles/boot/files/webapp-boot"


def load_boot() -> ModuleType:
    if "webapp_boot" in sys.modules:
        return sys.modules["webapp_boot"]
    loader = importlib.machinery.SourceFileLoader("webapp_boot", str(SCRIPT))
    spec = importlib.util.spec_from_loader("webapp_boot", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class is being built.
    sys.modules[spec.name] = module
    loader.exec_module(module)
    return module
