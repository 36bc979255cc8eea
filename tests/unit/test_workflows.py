"""The GitHub Actions workflows pass actionlint (run for real), and actionlint does catch mistakes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def actionlint(*files: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or "actionlint"
    return subprocess.run([binary, "-no-color", *map(str, files)], capture_output=True, text=True, check=False)


def test_workflows_pass_actionlint() -> None:
    assert {w.name for w in WORKFLOWS} >= {"ci.yml", "bake.yml"}
    result = actionlint(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n"
                      "      - run: echo ${{ github.nope.nothing }}\n        uses: actions/checkout@v5\n")
    result = actionlint(broken)
    assert result.returncode != 0 and "broken.yml" in result.stdout


def test_the_bake_workflow_is_scheduled_authenticates_with_oidc_and_never_overlaps() -> None:
    text = (ROOT / ".github" / "workflows" / "bake.yml").read_text()
    assert "schedule:" in text and "workflow_dispatch:" in text
    assert "id-token: write" in text and "role-to-assume: ${{ vars." in text
    assert "aws-access-key-id" not in text  # no long-lived keys
    assert "concurrency:" in text and "cancel-in-progress: false" in text
    assert "inv bake --env" in text


def test_the_bake_workflow_keeps_packers_full_log_even_when_the_bake_fails() -> None:
    text = (ROOT / ".github" / "workflows" / "bake.yml").read_text()
    step = text[text.index("name: Keep Packer's and Ansible's full log"):]
    step = step[:step.find("\n      - ") if "\n      - " in step else len(step)]
    assert "if: always()" in step and "actions/upload-artifact@" in step
    assert "path: .kiln/bake/*.log" in step and "include-hidden-files: true" in step


def test_the_bake_workflow_keeps_the_report_of_the_release_it_makes() -> None:
    text = (ROOT / ".github" / "workflows" / "bake.yml").read_text()
    release = text.index("inv release --env dev")
    report = text.index("inv report --env dev --output release-report.html")
    upload = text.index("name: release-report")
    assert release < report < upload
    assert text.count("always() && inputs.release_to_dev") == 2  # written and kept even when the gate failed
