"""Two bakes in one checkout would overwrite each other's work files: the second one is refused."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from release import config
from release.aws import Aws, Target
from release.baker import Baker
from release.clock import FakeClock
from release.errors import BakeError

ROOT = Path(__file__).parents[2]


def baker(project: Path) -> Baker:
    cfg = config.load(ROOT / "versions.toml")
    env = cfg.environment("sandbox")
    return Baker(cfg, env, Aws(Target(region=env.region, endpoint_url="http://127.0.0.1:9")), project,
                 FakeClock(datetime(2026, 11, 22, 9, 30, tzinfo=UTC)), on_step=print, on_line=print)


def test_a_second_bake_in_the_same_checkout_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    first, second = baker(tmp_path), baker(tmp_path)
    with first._one_bake_at_a_time():
        with pytest.raises(BakeError) as refused, second._one_bake_at_a_time():
            pytest.fail("two bakes ran at once")
        message = str(refused.value)
        assert f"another bake is running in this checkout (pid {os.getpid()}, since 2026-11-22 09:30:00)" in message
        assert str(tmp_path / ".kiln" / "bake") in message and "\n" not in message
        with baker(tmp_path / "other")._one_bake_at_a_time():  # another checkout is not held up
            pass
    with second._one_bake_at_a_time():  # free again once the first is done
        pass
