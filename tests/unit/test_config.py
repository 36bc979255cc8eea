"""versions.toml loading: the real file, a minimal one, and one case file per bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.version import Version

from release import config
from release.errors import EXIT_BAD_INPUT, ConfigError, UsageError

HERE = Path(__file__).parent
CASES = sorted((HERE / "config_cases").glob("*.toml"))
ROOT = HERE.parent.parent


def expected(case: Path) -> str:
    first = case.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{case.name} must start with '# expect: <text>'"
    return first.removeprefix("# expect: ")


def test_the_project_versions_toml_loads() -> None:
    cfg = config.load(ROOT / "versions.toml")
    assert cfg.app.version == Version(cfg.app.version.public)
    assert cfg.sandbox_environment is not None and cfg.sandbox_environment.name == "sandbox"
    assert {"sandbox", "dev", "stage", "prod"} <= set(cfg.environments)
    prod = cfg.environment("prod")
    assert prod.requires == ("dev", "stage")
    assert prod.refresh.max_healthy_percentage - prod.refresh.min_healthy_percentage <= 100


def test_minimal_config_gets_aws_defaults() -> None:
    cfg = config.load(HERE / "minimal_valid.toml")
    env = cfg.environment("sandbox")
    assert env.refresh.min_healthy_percentage == 90  # AWS's default
    assert env.refresh.checkpoint_delay == 3600
    assert env.ledger_table == "kiln-ledger"
    assert cfg.default_environment == "sandbox"


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_bad_input_is_reported_with_file_and_key(case: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(case)
    message = str(info.value)
    assert expected(case) in message
    assert str(case) in message  # every line names the file
    assert info.value.exit_code == EXIT_BAD_INPUT
    assert "Traceback" not in message


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    bad = tmp_path / "versions.toml"
    text = (HERE / "minimal_valid.toml").read_text()
    bad.write_text(text.replace('"1.0.0"', '"1.x"').replace('"us-east-1"', '"nowhere"') + "oops = 1\n")
    with pytest.raises(ConfigError) as info:
        config.load(bad)
    assert len(info.value.problems) == 3
    assert "3 problems" in str(info.value)


def test_missing_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found; run Kiln from the project root"):
        config.load(tmp_path / "versions.toml")


def test_unknown_environment_names_the_known_ones() -> None:
    cfg = config.load(HERE / "minimal_valid.toml")
    with pytest.raises(UsageError, match=r"no environment 'qa' \(known: sandbox\)"):
        cfg.environment("qa")


def test_refresh_preferences_as_aws_parameters() -> None:
    prefs = config.RefreshPreferences(min_healthy_percentage=50, instance_warmup=60,
                                      checkpoint_percentages=(50, 100), checkpoint_delay=300,
                                      auto_rollback=True)
    aws = prefs.as_aws(("alarm-a",))
    assert aws["MinHealthyPercentage"] == 50
    assert aws["CheckpointPercentages"] == [50, 100] and aws["CheckpointDelay"] == 300
    assert aws["AlarmSpecification"] == {"Alarms": ["alarm-a"]}
    assert "InstanceWarmup" in aws
    assert "AlarmSpecification" not in config.RefreshPreferences().as_aws(("alarm-a",))


def test_environment_selection() -> None:
    cfg = config.load(ROOT / "versions.toml")
    env, note = config.select_environment(cfg, None, aws_credentials=False)
    assert env.sandbox and "No AWS credentials" in note
    env, note = config.select_environment(cfg, None, aws_credentials=True)
    assert env.name == cfg.default_environment and "default_environment" in note
    env, note = config.select_environment(cfg, "prod", aws_credentials=False)
    assert env.name == "prod" and note == ""
    with pytest.raises(UsageError, match="no environment 'nope'"):
        config.select_environment(cfg, "nope", aws_credentials=True)
