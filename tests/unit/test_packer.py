"""Packer's command line, var file and manifest — and the real Packer validating Kiln's var file."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from release import packer
from release.errors import BakeError, ToolError

ROOT = Path(__file__).parents[2]

MANIFEST = {
    "builds": [
        {"name": "app", "builder_type": "amazon-ebs", "artifact_id": "us-east-1:ami-0aaa", "packer_run_uuid": "old"},
        {"name": "app", "builder_type": "amazon-ebs", "packer_run_uuid": "new",
         "artifact_id": "us-east-1:ami-0bbb,eu-west-1:ami-0ccc", "custom_data": {"version": "1.1.0"}},
    ],
    "last_run_uuid": "new",
}


def test_manifest_gives_the_last_runs_amis_per_region() -> None:
    artifacts = packer.parse_manifest(json.dumps(MANIFEST))
    assert artifacts == [packer.Artifact("us-east-1", "ami-0bbb"), packer.Artifact("eu-west-1", "ami-0ccc")]


@pytest.mark.parametrize(("text", "error"), [
    ("not json", "unreadable Packer manifest"),
    (json.dumps({"builds": []}), "unreadable Packer manifest"),
    (json.dumps({"builds": [], "last_run_uuid": "x"}), "lists no AMI"),
    (json.dumps({"builds": [{"packer_run_uuid": "x", "artifact_id": "us-east-1:i-123"}], "last_run_uuid": "x"}),
     "unexpected artifact id"),
])
def test_bad_manifests_are_bake_errors(text: str, error: str) -> None:
    with pytest.raises(BakeError, match=error):
        packer.parse_manifest(text, where="out/manifest.json")


def test_command_line_builds_only_the_app_source() -> None:
    cmd = packer.command_line(Path("packer"), Path("/tmp/vars.pkrvars.json"))
    assert cmd[:2] == ["packer", "build"] and "-only" in cmd and packer.BUILD in cmd
    assert cmd[-1] == "packer" and "-var-file=/tmp/vars.pkrvars.json" in cmd


def test_version_parsing_and_steps_and_failing_task() -> None:
    assert packer.parse_version("Packer v1.6.6\n") == Version("1.6.6")
    assert packer.parse_version("nothing") is None
    assert packer.step_of("==> amazon-ebs.app: Launching a source AWS instance...") == "Launching a source AWS instance"
    assert packer.step_of("    amazon-ebs.app: ok: [default]") is None
    lines = ["    amazon-ebs.app: TASK [base : Install packages]", "    amazon-ebs.app: ok: [default]",
             "    amazon-ebs.app: TASK [app : Install the wheelhouse]",
             "    amazon-ebs.app: fatal: [default]: FAILED! => {...}"]
    assert packer.failing_task(lines) == "app : Install the wheelhouse"


def test_missing_or_unaccepted_tool_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolError, match="packer not found on PATH"):
        packer.check_tool("packer", ["version"], packer.parse_version, SpecifierSet(">=1.6"), config_key="tools.packer")
    fake = tmp_path / "packer"
    fake.write_text("#!/bin/sh\necho 'Packer v1.5.0'\n")
    fake.chmod(0o755)
    with pytest.raises(ToolError, match=r'packer 1\.5\.0 is not accepted \(tools\.packer = ">=1\.6"\)'):
        packer.check_tool("packer", ["version"], packer.parse_version, SpecifierSet(">=1.6"), config_key="tools.packer")


def test_real_packer_accepts_kilns_var_file(tmp_path: Path) -> None:
    var_file = tmp_path / "bake.pkrvars.json"
    var_file.write_text(packer.var_file_text({
        "app_version": "1.1.0", "fingerprint": "0123456789abcdef", "git_sha": "abc", "built_at": "2026-11-22T02:00:00Z",
        "builder": "ana@laptop", "wheelhouse": str(tmp_path), "ami_regions": ["eu-west-1"], "source_ami": "ami-0123",
        "ec2_endpoint": "http://127.0.0.1:5000", "ssh_interface": "private_ip"}))
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"}
    cmd = packer.command_line(ROOT / "packer", var_file)
    cmd[1] = "validate"
    cmd.remove("-color=false")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_stopping_kiln_asks_packer_to_clean_up_and_waits_for_it(tmp_path: Path) -> None:
    """Ctrl-C, or SIGTERM turned into SystemExit (commands.stop_on_sigterm), while Packer runs: Packer
    gets SIGINT — its own signal to terminate the build instance — and Kiln waits for it to finish."""
    cleaned = tmp_path / "cleaned-up"
    script = tmp_path / "packer"
    script.write_text(f"#!/bin/sh\ntrap 'echo terminating the build instance; touch {cleaned}; exit 1' INT\n"
                      "echo '==> amazon-ebs.app: Launching a source AWS instance...'\n"
                      "while :; do sleep 0.1; done\n")
    script.chmod(0o755)

    def stop_at_first_line(line: str) -> None:
        raise SystemExit(143)

    with pytest.raises(SystemExit):
        packer.run([str(script)], env=dict(os.environ), cwd=tmp_path, on_line=stop_at_first_line)
    assert cleaned.exists()
