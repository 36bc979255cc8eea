"""Reading unit files and planning a boot: pure, no root needed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from release.sandbox.dataplane.rootfs import resolve_in_root
from release.sandbox.dataplane.units import (
    boot_plan,
    parse_command,
    parse_environment,
    parse_environment_file,
    parse_seconds,
    parse_unit_text,
)


def write_unit(root: Path, directory: str, name: str, text: str) -> Path:
    path = root / directory.lstrip("/") / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def enable(root: Path, name: str, target: str = "multi-user.target", source: str = "/lib/systemd/system") -> None:
    wants = root / "etc/systemd/system" / f"{target}.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / name).symlink_to(f"{source}/{name}")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "usr/lib/systemd/system").mkdir(parents=True)
    (tmp_path / "lib").symlink_to("usr/lib")  # merged /usr, as on Debian 12
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/null").touch()
    return tmp_path


def test_unit_text_keeps_order_continuations_and_comments() -> None:
    text = "[Unit]\n# comment\n; other\nDescription=Web \\\n  server\n[Service]\nExecStart=/a\nExecStart=\n"
    assert parse_unit_text(text) == [
        ("Unit", "Description", "Web  server"),
        ("Service", "ExecStart", "/a"),
        ("Service", "ExecStart", ""),
    ]


def test_command_prefixes_and_quoting() -> None:
    command = parse_command("-/usr/sbin/nginx -g 'daemon on; master_process on;'")
    assert command is not None
    assert command.ignore_failure and not command.privileged
    assert command.argv == ("/usr/sbin/nginx", "-g", "daemon on; master_process on;")
    privileged = parse_command("+@/bin/sh sh -c true")
    assert privileged is not None and privileged.privileged and privileged.argv0_separate


def test_variable_expansion_splits_bare_words_and_keeps_braced_words_whole() -> None:
    command = parse_command("/usr/sbin/sshd -D $SSHD_OPTS --name=${NAME} $$literal")
    assert command is not None
    env = {"SSHD_OPTS": "-o A=1  -e", "NAME": "two words"}
    assert command.expand(env) == ["/usr/sbin/sshd", "-D", "-o", "A=1", "-e", "--name=two words", "$literal"]
    assert command.expand({}) == ["/usr/sbin/sshd", "-D", "--name=", "$literal"]


def test_environment_lines_and_files() -> None:
    assert parse_environment(['A=1 "B=two words"', "C=3"]) == {"A": "1", "B": "two words", "C": "3"}
    text = '# comment\nexport PORT=8000\nNAME="my app" # trailing\n\nBAD LINE\nEMPTY=\n'
    assert parse_environment_file(text) == {"PORT": "8000", "NAME": "my app", "EMPTY": ""}


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("90", 90), ("5s", 5), ("1min 30s", 90), ("1min30s", 90), ("500ms", 0.5), ("infinity", float("inf")),
        (None, 7), ("bogus", 7), ("5 parsecs", 7),
    ],
)  # fmt: skip
def test_time_spans(value: str | None, seconds: float) -> None:
    assert parse_seconds(value, 7) == seconds


def test_resolve_in_root_never_leaves_the_root(root: Path) -> None:
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text("instance\n")
    (root / "etc/escape").symlink_to("/etc/passwd")
    (root / "etc/up").symlink_to("../../../../etc/passwd")
    assert resolve_in_root(root, "/etc/escape") == root / "etc/passwd"
    assert resolve_in_root(root, "/etc/up") == root / "etc/passwd"
    (root / "loop").symlink_to("/loop")
    assert not resolve_in_root(root, "/loop").exists()


def test_boot_plan_follows_wants_links_and_orders_by_after_and_before(root: Path) -> None:
    lib = "/usr/lib/systemd/system"
    write_unit(root, lib, "ssh.service", "[Unit]\nAfter=network.target\n[Service]\nExecStart=/usr/sbin/sshd -D\n")
    write_unit(root, lib, "app.service", "[Unit]\nAfter=secrets.service\nRequires=secrets.service\n"
                                         "[Service]\nExecStart=/app\n")  # fmt: skip
    write_unit(root, lib, "secrets.service", "[Service]\nType=oneshot\nExecStart=/fetch\n")
    write_unit(root, lib, "proxy.service", "[Unit]\nBefore=app.service\n[Service]\nExecStart=/proxy\n")
    write_unit(root, lib, "idle.service", "[Service]\nExecStart=/never-enabled\n")
    write_unit(root, lib, "apt-daily.timer", "[Timer]\nOnCalendar=daily\n")
    for name in ("ssh.service", "app.service", "proxy.service", "apt-daily.timer"):
        enable(root, name)
    plan = boot_plan(root)
    assert "idle.service" not in plan.order
    assert "apt-daily.timer" in plan.skipped
    position = {name: i for i, name in enumerate(plan.order)}
    assert position["secrets.service"] < position["app.service"]
    assert position["proxy.service"] < position["app.service"]
    assert "network.target" not in plan.order  # After= only orders; it pulls nothing in
    assert plan.order[-1] == "multi-user.target"
    assert plan.units["secrets.service"].type == "oneshot"


def test_drop_ins_override_and_reset_lists_and_masking_wins(root: Path) -> None:
    lib = "/usr/lib/systemd/system"
    write_unit(root, lib, "web.service", "[Service]\nExecStart=/old\nUser=www-data\n")
    write_unit(root, "/etc/systemd/system/web.service.d", "10-new.conf", "[Service]\nExecStart=\nExecStart=/new\n")
    write_unit(root, lib, "masked.service", "[Service]\nExecStart=/masked\n")
    (root / "etc/systemd/system/masked.service").symlink_to("/dev/null")
    enable(root, "web.service")
    enable(root, "masked.service")
    plan = boot_plan(root)
    web = plan.units["web.service"]
    assert [c.argv for c in web.commands("ExecStart")] == [("/new",)]
    assert web.get("Service.User") == "www-data"
    assert "masked.service" in plan.masked and "masked.service" not in plan.order


def test_service_d_drop_ins_apply_to_every_service_before_its_own(root: Path) -> None:
    """systemd 246+: /etc/systemd/system/service.d/*.conf applies to every service (the sandbox
    writes its AWS variables there); a unit's own drop-ins come after and may override."""
    lib = "/usr/lib/systemd/system"
    write_unit(root, lib, "boot.service", "[Service]\nType=oneshot\nExecStart=/boot\n")
    write_unit(root, lib, "web.service", "[Service]\nExecStart=/web\n")
    write_unit(root, "/etc/systemd/system/service.d", "50-aws.conf", "[Service]\nEnvironment=AWS_ENDPOINT_URL=x\n")
    write_unit(root, "/etc/systemd/system/web.service.d", "60-own.conf", "[Service]\nEnvironment=OWN=1\n")
    for name in ("boot.service", "web.service"):
        enable(root, name)
    plan = boot_plan(root)
    assert plan.units["boot.service"].settings["Service.Environment"] == ["AWS_ENDPOINT_URL=x"]
    assert plan.units["web.service"].settings["Service.Environment"] == ["AWS_ENDPOINT_URL=x", "OWN=1"]


def test_missing_dependencies_and_cycles_are_reported(root: Path) -> None:
    lib = "/usr/lib/systemd/system"
    write_unit(root, lib, "a.service", "[Unit]\nAfter=b.service\nRequires=ghost.service\n[Service]\nExecStart=/a\n")
    write_unit(root, lib, "b.service", "[Unit]\nAfter=a.service\n[Service]\nExecStart=/b\n")
    enable(root, "a.service")
    enable(root, "b.service")
    plan = boot_plan(root)
    assert plan.missing == {"ghost.service"}
    assert sorted(plan.order) == ["a.service", "b.service", "multi-user.target"]
    assert any("cycle" in note for note in plan.notes)


def test_conditions_are_checked_inside_the_root(root: Path) -> None:
    text = "[Unit]\nConditionPathExists=!/etc/ssh/sshd_not_to_be_run\n[Service]\nExecStart=/s\n"
    unit_path = write_unit(root, "/usr/lib/systemd/system", "ssh.service", text)
    enable(root, "ssh.service")
    unit = boot_plan(root).units["ssh.service"]
    assert unit.path == unit_path
    assert unit.unmet_condition(root) is None
    (root / "etc/ssh").mkdir(parents=True)
    (root / "etc/ssh/sshd_not_to_be_run").touch()
    assert unit.unmet_condition(root) == "ConditionPathExists=!/etc/ssh/sshd_not_to_be_run"
    assert os.path.exists("/etc") and not (root / "etc/passwd").exists()
