"""The boot script (ansible/roles/boot/files/webapp-boot), loaded from the repository as a module.

Pure parts are tested table-style; the whole run is tested against moto's in-process Secrets
Manager and STS, with IMDSv2 served on loopback by the sandbox's own metadata service.
"""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import boto3
import pytest
from boot_module import SCRIPT, load_boot
from imds_server import metadata_service
from moto import mock_aws

SECRET = {"JWT_SECRET": 's3cr"et $HOME `id` \\n', "DATABASE_URL": "postgresql://app:p%40ss@db:5432/app"}


boot = load_boot()


# --- env file rendering ---------------------------------------------------------------------

QUOTING_CASES = [
    ("plain", '"plain"'),
    ("", '""'),
    ("with space", '"with space"'),
    ('dq"uote', '"dq\\"uote"'),
    ("sq'uote", '"sq\'uote"'),
    ("dollar $HOME ${X}", '"dollar \\$HOME \\${X}"'),
    ("back`tick`", '"back\\`tick\\`"'),
    ("back\\slash\\n", '"back\\\\slash\\\\n"'),
    ("hash # and = signs", '"hash # and = signs"'),
    ("postgresql://u:p%40ss@h:5432/db?sslmode=require", '"postgresql://u:p%40ss@h:5432/db?sslmode=require"'),
    ("ünïcødé", '"ünïcødé"'),
]


@pytest.mark.parametrize(("value", "quoted"), QUOTING_CASES)
def test_values_are_double_quoted_with_shell_escapes(value: str, quoted: str) -> None:
    assert boot.quote_env_value(value) == quoted


@pytest.mark.parametrize("value", ["two\nlines", "tab\there", "cr\r", "bell\x07", "del\x7f"])
def test_control_characters_are_refused(value: str) -> None:
    with pytest.raises(boot.BootError, match="control character"):
        boot.quote_env_value(value)


def test_a_posix_shell_reads_every_value_back_unchanged(tmp_path: Path) -> None:
    values = {f"V{i}": value for i, (value, _) in enumerate(QUOTING_CASES)}
    env_file = tmp_path / "runtime.env"
    env_file.write_text(boot.render_env_file(values), encoding="utf-8")
    script = f'set -a; . "{env_file}"; ' + "; ".join(f'printf "%s\\0" "${key}"' for key in values)
    result = subprocess.run(["/bin/sh", "-c", script], capture_output=True, check=True, env={})
    assert result.stdout.decode("utf-8").split("\0")[:-1] == list(values.values())


def test_env_file_has_a_header_and_one_line_per_variable() -> None:
    text = boot.render_env_file({"A": "1", "B_2": "x y"})
    assert text.splitlines() == [
        "# Written at boot by webapp-boot from Secrets Manager. Do not edit.",
        'A="1"',
        'B_2="x y"',
    ]


@pytest.mark.parametrize("key", ["1ABC", "A-B", "A B", "", "A=B"])
def test_invalid_variable_names_are_refused(key: str) -> None:
    with pytest.raises(boot.BootError, match="not a valid environment variable name"):
        boot.render_env_file({key: "x"})


def test_runtime_environment_takes_the_two_secrets_and_the_instance_id() -> None:
    environment = boot.runtime_environment(json.dumps({**SECRET, "UNRELATED": "ignored"}), "app/secret", "i-0abc")
    assert environment == {
        "DATABASE_URL": SECRET["DATABASE_URL"],
        "JWT_SECRET": SECRET["JWT_SECRET"],
        "WEBAPP_INSTANCE_ID": "i-0abc",
    }


@pytest.mark.parametrize(
    ("secret_text", "message"),
    [
        ("not json", "not JSON"),
        ('["a list"]', "not a JSON object"),
        ('{"JWT_SECRET": "x"}', "missing or empty DATABASE_URL"),
        ('{"JWT_SECRET": "", "DATABASE_URL": "postgresql://"}', "missing or empty JWT_SECRET"),
        ('{"JWT_SECRET": 1, "DATABASE_URL": "postgresql://"}', "missing or empty JWT_SECRET"),
    ],
)
def test_incomplete_secrets_are_refused_naming_what_is_missing(secret_text: str, message: str) -> None:
    with pytest.raises(boot.BootError, match=message) as caught:
        boot.runtime_environment(secret_text, "app/secret", "i-0abc")
    assert "app/secret" in str(caught.value)


# --- settings from user data ----------------------------------------------------------------

SETTINGS_JSON = '{"secret_id": "webapp/prod", "region": "eu-central-1", "role_arn": "arn:aws:iam::1:role/r"}'


@pytest.mark.parametrize(
    ("user_data", "expected"),
    [
        (SETTINGS_JSON, ("webapp/prod", "eu-central-1", "arn:aws:iam::1:role/r")),
        (base64.b64encode(SETTINGS_JSON.encode()).decode(), ("webapp/prod", "eu-central-1", "arn:aws:iam::1:role/r")),
        ('{"secret_id": "s"}', ("s", "us-east-1", None)),
        ('{"secret_id": "s", "region": "", "role_arn": ""}', ("s", "us-east-1", None)),
        ('  {"secret_id": "s", "region": "ap-south-1"}\n', ("s", "ap-south-1", None)),
    ],
)
def test_settings_come_from_user_data(user_data: str, expected: tuple[str, str, str | None]) -> None:
    settings = boot.parse_settings(user_data, default_region="us-east-1")
    assert (settings.secret_id, settings.region, settings.role_arn) == expected


@pytest.mark.parametrize(
    ("user_data", "message"),
    [
        (None, "empty"),
        ("  \n", "empty"),
        ("#!/bin/bash\necho hi", "not a JSON object"),
        ("[1, 2]", "not a JSON object"),
        ('{"region": "eu-west-1"}', "secret_id is missing"),
        ('{"secret_id": 7}', "secret_id is missing or not a string"),
        ('{"secret_id": "s", "secretid": "t"}', "unknown key"),
        ('{"secret_id": "s", "role_arn": "my-role"}', "not an ARN"),
    ],
)
def test_bad_user_data_is_refused(user_data: str | None, message: str) -> None:
    with pytest.raises(boot.BootError, match=message):
        boot.parse_settings(user_data, default_region="us-east-1")


# --- identity and listen address ------------------------------------------------------------

IDENTITY = {
    "instance_id": "i-0123456789abcdef0",
    "local_ipv4": "127.0.3.7",
    "region": "us-east-1",
    "availability_zone": "us-east-1a",
    "user_data": '{"secret_id": "webapp/sandbox"}',
}


def test_listen_conf_binds_only_the_instance_address() -> None:
    assert boot.render_listen_conf("127.0.3.7").splitlines()[-1] == "listen 127.0.3.7:80;"


@pytest.mark.parametrize("address", ["", "localhost", "127.0.0.256", "::1", "127.0.0.1:80"])
def test_listen_conf_refuses_anything_but_an_ipv4_address(address: str) -> None:
    with pytest.raises(boot.BootError):
        boot.render_listen_conf(address)


@pytest.mark.parametrize("missing", ["instance_id", "local_ipv4", "region"])
def test_identity_needs_id_address_and_region(missing: str) -> None:
    with pytest.raises(boot.BootError, match=f"missing {missing}"):
        boot.parse_identity({**IDENTITY, missing: ""}, "metadata.json")


# --- the whole run, against moto --------------------------------------------------------------


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch):
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with mock_aws():
        boto3.client("secretsmanager", region_name="us-east-1").create_secret(
            Name="webapp/sandbox", SecretString=json.dumps(SECRET)
        )
        yield


Serve = Callable[[dict[str, object]], None]


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Serve]:
    """serve(identity): the instance's metadata service answers with it from now on."""
    with ExitStack() as stack:

        def start(identity: dict[str, object]) -> None:
            monkeypatch.setattr(boot, "IMDS_URL", stack.enter_context(metadata_service(identity)))

        yield start


def paths(tmp_path: Path) -> list[str]:
    return [
        "--env-file",
        str(tmp_path / "etc-webapp/runtime.env"),
        "--listen-file",
        str(tmp_path / "webapp-listen.conf"),
    ]


def read_env(path: Path) -> dict[str, str]:
    script = f'set -a; . "{path}"; printf "%s\\0%s\\0%s" "$DATABASE_URL" "$JWT_SECRET" "$WEBAPP_INSTANCE_ID"'
    out = subprocess.run(["/bin/sh", "-c", script], capture_output=True, check=True, env={}).stdout
    database_url, jwt_secret, instance_id = out.decode().split("\0")
    return {"DATABASE_URL": database_url, "JWT_SECRET": jwt_secret, "WEBAPP_INSTANCE_ID": instance_id}


def test_boot_writes_a_root_only_env_file_and_the_listen_address(aws: None, serve: Serve, tmp_path: Path) -> None:
    serve(IDENTITY)
    assert boot.main(paths(tmp_path)) == 0

    env_file = tmp_path / "etc-webapp/runtime.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert read_env(env_file) == {**SECRET, "WEBAPP_INSTANCE_ID": IDENTITY["instance_id"]}
    listen = tmp_path / "webapp-listen.conf"
    assert "listen 127.0.3.7:80;" in listen.read_text()
    assert stat.S_IMODE(listen.stat().st_mode) == 0o644
    # Nothing but the two files: the temporary files were renamed into place.
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        "runtime.env",
        "webapp-listen.conf",
    ]


def test_boot_assumes_the_role_from_user_data_first(aws: None, serve: Serve, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    iam = boto3.client("iam", region_name="us-east-1")
    role = iam.create_role(RoleName="webapp-secrets", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    user_data = json.dumps({"secret_id": "webapp/sandbox", "region": "us-east-1", "role_arn": role})
    clients: list[tuple[str, str | None]] = []

    class RecordingSession(boto3.Session):
        def client(self, service_name, *args, **kwargs):  # type: ignore[no-untyped-def,override]
            credentials = self.get_credentials()
            clients.append((service_name, credentials.token if credentials else None))
            return super().client(service_name, *args, **kwargs)

    monkeypatch.setattr(boto3, "Session", RecordingSession)
    serve({**IDENTITY, "user_data": user_data})
    assert boot.main(paths(tmp_path)) == 0

    assert read_env(tmp_path / "etc-webapp/runtime.env")["JWT_SECRET"] == SECRET["JWT_SECRET"]
    # STS with the instance's credentials, then Secrets Manager with the role's session.
    assert [name for name, _ in clients] == ["sts", "secretsmanager"]
    assert clients[0][1] is None
    assert clients[1][1]


def test_boot_fails_loudly_without_writing_anything(
    aws: None, serve: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    serve({**IDENTITY, "user_data": json.dumps({"secret_id": "webapp/missing"})})
    assert boot.main(paths(tmp_path)) == 1

    err = capsys.readouterr().err
    assert "webapp-boot: secret webapp/missing in us-east-1" in err
    assert "ResourceNotFoundException" in err
    assert not (tmp_path / "etc-webapp/runtime.env").exists()
    assert not (tmp_path / "webapp-listen.conf").exists()


def test_boot_never_prints_a_secret_value(aws: None, serve: Serve, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    boto3.client("secretsmanager", region_name="us-east-1").create_secret(
        Name="webapp/half", SecretString=json.dumps({"JWT_SECRET": "do-not-print-me"})
    )
    serve({**IDENTITY, "user_data": json.dumps({"secret_id": "webapp/half"})})
    assert boot.main(paths(tmp_path)) == 1

    captured = capsys.readouterr()
    assert "missing or empty DATABASE_URL" in captured.err
    assert "do-not-print-me" not in captured.err + captured.out


def test_boot_without_a_metadata_service_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Point IMDS at a closed loopback port: the test must never dial 169.254.169.254.
    monkeypatch.setattr(boot, "IMDS_URL", "http://127.0.0.1:9")
    with pytest.raises(boot.BootError, match=r"no IMDSv2 token from http://127\.0\.0\.1:9"):
        boot.run(tmp_path / "runtime.env", tmp_path / "listen.conf")


def test_the_metadata_service_is_found_where_the_aws_sdks_look(tmp_path: Path) -> None:
    """AWS_EC2_METADATA_SERVICE_ENDPOINT (what the sandbox sets) or EC2's own address."""
    code = "import sys; sys.path.insert(0, sys.argv[1]); from boot_module import load_boot; print(load_boot().IMDS_URL)"
    here = str(Path(__file__).parent)
    for value, expected in (("http://127.0.0.1:5000/_kiln/imds/i-1/", "http://127.0.0.1:5000/_kiln/imds/i-1"),
                            (None, "http://169.254.169.254")):
        env = {"PATH": "/usr/bin:/bin", **({"AWS_EC2_METADATA_SERVICE_ENDPOINT": value} if value else {})}
        out = subprocess.run([sys.executable, "-c", code, here], capture_output=True, text=True, env=env, check=True)
        assert out.stdout.strip() == expected
    assert list(tmp_path.iterdir()) == []


def test_the_script_is_lint_clean() -> None:
    # ruff's project run skips files without .py; this one ships in the image.
    ruff = str(Path(sys.executable).parent / "ruff")
    for argv in ([ruff, "check", str(SCRIPT)], [ruff, "format", "--check", str(SCRIPT)]):
        result = subprocess.run(argv, capture_output=True, text=True, cwd=SCRIPT.parents[4])
        assert result.returncode == 0, result.stdout + result.stderr
