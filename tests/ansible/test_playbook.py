"""The playbook and roles: lint (production profile), syntax, the bake's extra-vars contract,
and the paths the roles must agree on with each other and with the boot script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from boot_module import load_boot

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = ROOT / "ansible"
ROLES = ANSIBLE / "roles"
VENV_BIN = Path(sys.executable).parent

EXTRA_VARS = {
    "kiln_version": "1.4.2",
    "kiln_fingerprint": "f" * 64,
    "kiln_git_sha": "0" * 40,
    "kiln_built_at": "2026-11-22T02:30:00Z",
    "kiln_base_ami": "ami-0123456789abcdef0",
    "kiln_wheelhouse": "/nonexistent/wheelhouse",
}


def tool_env() -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": "/tmp/kiln-ansible-tests",
    }


def run(*argv: str, cwd: Path = ANSIBLE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=300)


def role_vars(role: str) -> dict[str, object]:
    merged: dict[str, object] = {}
    for part in ("defaults", "vars"):
        merged.update(yaml.safe_load((ROLES / role / part / "main.yml").read_text()) or {})
    return merged


def test_ansible_lint_production_profile_is_clean() -> None:
    result = run(str(VENV_BIN / "ansible-lint"), "--profile", "production", "--nocolor")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("playbook", ["foundation.yml", "playbook.yml"])
def test_playbook_syntax_check_passes(playbook: str) -> None:
    result = run(str(VENV_BIN / "ansible-playbook"), "--syntax-check", "-i", "build-instance,", playbook)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("playbook", "first_task", "message"), [
    ("foundation.yml", "Check the foundation bake's extra vars", "must pass kiln_fingerprint"),
    ("playbook.yml", "Check the bake's extra vars", "must pass kiln_version"),
])
@pytest.mark.parametrize("missing", ["kiln_fingerprint", "kiln_wheelhouse"])
def test_playbook_stops_before_any_change_when_an_extra_var_is_missing(missing: str, playbook: str, first_task: str,
                                                                       message: str) -> None:
    # Check mode against this machine: the first task must refuse, so nothing else runs.
    extra = " ".join(f"{k}={v}" for k, v in EXTRA_VARS.items() if k != missing)
    result = run(
        str(VENV_BIN / "ansible-playbook"),
        "--check",
        "-i",
        "localhost,",
        "-c",
        "local",
        "-e",
        extra,
        playbook,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert first_task in result.stdout
    assert message in result.stdout
    assert "Copy the" not in result.stdout


def test_roles_and_boot_script_agree_on_shared_paths() -> None:
    boot = load_boot()
    app, proxy, base, boot_role = role_vars("app"), role_vars("proxy"), role_vars("base"), role_vars("boot")
    assert app["app_socket"] == proxy["proxy_app_socket"] == "/run/webapp/gunicorn.sock"
    assert app["app_root"] == "/opt/webapp"
    assert proxy["proxy_static_root"] == "/opt/webapp/current/static/"
    assert proxy["proxy_listen_file"] == str(boot.LISTEN_FILE) == "/etc/nginx/webapp-listen.conf"
    assert app["app_runtime_env"] == "{{ app_config_dir }}/runtime.env"
    assert app["app_config_dir"] == str(boot.ENV_FILE.parent) == "/etc/webapp"
    assert boot_role["boot_script"] == "/usr/local/sbin/webapp-boot"
    assert base["base_app_user"] == app["app_user"] == "webapp"
    assert base["base_app_group"] == app["app_group"] == proxy["proxy_app_group"]
    shebang = (ROLES / "boot/files/webapp-boot").read_text().splitlines()[0]
    assert shebang == f"#!{boot_role['boot_venv']}/bin/python3"


def test_the_image_has_no_sandbox_only_path() -> None:
    """What the roles install reads IMDS and calls AWS as on EC2: no file the sandbox alone writes
    at launch (its metadata record, its SSH gate, its drop-ins) and none of its admin routes."""
    from release.sandbox.dataplane import cloudinit

    sandbox_only = [cloudinit.METADATA, cloudinit.SSH_GATE, cloudinit.AWS_DROPIN, cloudinit.SSHD_DROPIN,
                    "/etc/kiln", "/_kiln/"]
    for path in sorted(p for p in ROLES.rglob("*") if p.is_file()):
        text = path.read_text(errors="replace")
        found = [needle for needle in sandbox_only if needle in text]
        assert found == [], f"{path.relative_to(ROLES)} names {found}"
