"""The systemd units the roles install stay within the subset the sandbox honours
(docs/image.md), and say what the boot order needs."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest
import yaml
from unitfile import parse_unit

ROLES = Path(__file__).resolve().parents[2] / "ansible/roles"

# The sandbox's unit runner honours these; Description and RemainAfterExit are informational
# for it (a oneshot that exited 0 counts as active either way).
ALLOWED = {
    "Unit": {"Description", "After", "Before", "Requires", "Wants"},
    "Service": {
        "Type",
        "RemainAfterExit",
        "ExecStartPre",
        "ExecStart",
        "ExecStartPost",
        "Environment",
        "EnvironmentFile",
        "User",
        "Group",
        "WorkingDirectory",
        "RuntimeDirectory",
    },
    "Install": {"WantedBy"},
}
TYPES = {"simple", "oneshot", "forking", "notify"}


def role_vars(role: str) -> dict[str, object]:
    """defaults + vars, with their own {{ }} references resolved."""
    merged: dict[str, object] = {}
    for part in ("defaults", "vars"):
        merged.update(yaml.safe_load((ROLES / role / part / "main.yml").read_text()) or {})
    merged["app_version"] = "1.4.2"
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined)
    for _ in range(5):
        merged = {k: environment.from_string(v).render(merged) if isinstance(v, str) else v for k, v in merged.items()}
    return merged


def render(role: str, template: str) -> str:
    variables = {**role_vars(role), "ansible_managed": "Managed by Ansible"}
    source = (ROLES / role / "templates" / template).read_text()
    return jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(source).render(variables)


UNITS = {
    "webapp-boot.service": lambda: (ROLES / "boot/files/webapp-boot.service").read_text(),
    "webapp.service": lambda: render("app", "webapp.service.j2"),
    "nginx.service.d/kiln.conf": lambda: (ROLES / "proxy/files/nginx-after-boot.conf").read_text(),
}


@pytest.mark.parametrize("name", sorted(UNITS))
def test_units_use_only_what_the_sandbox_honours(name: str) -> None:
    unit = parse_unit(UNITS[name]())
    for section, directives in unit.items():
        assert section in ALLOWED, f"{name}: section [{section}]"
        unknown = set(directives) - ALLOWED[section]
        assert not unknown, f"{name}: [{section}] {sorted(unknown)}"
    for unit_type in unit.get("Service", {}).get("Type", []):
        assert unit_type in TYPES
    for wanted_by in unit.get("Install", {}).get("WantedBy", []):
        assert wanted_by == "multi-user.target"


def test_boot_unit_is_a_oneshot_that_stays_active() -> None:
    unit = parse_unit(UNITS["webapp-boot.service"]())
    assert unit["Service"]["Type"] == ["oneshot"]
    assert unit["Service"]["RemainAfterExit"] == ["yes"]
    assert unit["Service"]["ExecStart"] == ["/usr/local/sbin/webapp-boot"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_gunicorn_runs_as_webapp_on_the_unix_socket_after_boot() -> None:
    unit = parse_unit(UNITS["webapp.service"]())
    assert unit["Unit"]["Requires"] == ["webapp-boot.service"]
    assert "webapp-boot.service" in unit["Unit"]["After"][0].split()
    service = unit["Service"]
    assert service["User"] == ["webapp"]
    assert service["EnvironmentFile"] == ["/etc/webapp/runtime.env"]
    assert service["RuntimeDirectory"] == ["webapp"]
    argv = service["ExecStart"][0].split()
    assert argv[0] == "/opt/webapp/current/venv/bin/gunicorn"
    assert argv[argv.index("--bind") + 1] == "unix:/run/webapp/gunicorn.sock"
    assert argv[argv.index("--workers") + 1] == "2"
    assert argv[-1] == "webapp.wsgi:app"
    # No TCP port anywhere: every sandbox instance shares the loopback network.
    assert not [a for a in argv if a.startswith(("0.0.0.0", "127.", ":"))]


def test_nginx_waits_for_the_listen_address() -> None:
    unit = parse_unit(UNITS["nginx.service.d/kiln.conf"]())
    assert unit["Unit"]["Requires"] == ["webapp-boot.service"]
    assert "webapp-boot.service" in unit["Unit"]["After"][0].split()


def test_nginx_site_serves_static_files_and_proxies_the_rest_to_the_socket() -> None:
    site = render("proxy", "webapp.conf.j2")
    assert "include /etc/nginx/webapp-listen.conf;" in site
    assert "listen " not in site.replace("webapp-listen", "")
    assert "server unix:/run/webapp/gunicorn.sock" in site
    assert "alias /opt/webapp/current/static/;" in site
    assert "proxy_pass http://webapp;" in site
