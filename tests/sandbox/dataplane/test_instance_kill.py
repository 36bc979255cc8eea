"""Killing an instance (a host failure): its init gets SIGKILL at once, with no time to shut down."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from release.sandbox.dataplane import layout
from release.sandbox.dataplane.instance import InstanceProcess

# Stands in for the instance's init: its command line names the instance dir, and it ignores
# SIGTERM (a halt would wait for it; a kill must not).
STAND_IN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"


def test_kill_is_sigkill_at_once_and_leaves_nothing_running(tmp_path: Path) -> None:
    instance_dir = tmp_path / "i-0123456789abcdef0"
    instance_dir.mkdir()
    init = subprocess.Popen([sys.executable, "-c", STAND_IN, str(instance_dir)], stdout=subprocess.PIPE)
    try:
        assert init.stdout is not None and init.stdout.readline() == b"up\n"
        layout.pids(instance_dir).write_text(json.dumps({"unshare": init.pid, "init": init.pid}))
        process = InstanceProcess(instance_dir)
        assert process.running()
        process.kill(timeout=5)
        assert init.wait(timeout=5) == -signal.SIGKILL
        assert not process.running()
    finally:
        init.kill()
        init.wait()
