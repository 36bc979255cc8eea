"""The whole sandbox behind `inv sandbox.*`: the cloud server, the app's PostgreSQL, the instances'
SSH key, and the seed architecture of every sandbox environment in versions.toml.

Everything lives in one directory (KILN_SANDBOX_DIR, default /var/lib/kiln/sandbox):

    server.json, server.log   the control plane process (server_process.py)
    dataplane/                instances' root filesystems and the image table (root only)
    postgres/                 the PostgreSQL cluster behind the app's DATABASE_URL
    keys/instances.pem        the private key the launch templates authorise (user admin)
    stack.json                what `up` provisioned: endpoint, database, load balancers

The base image cache is shared by every sandbox on the machine: /var/cache/kiln/images.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from release.aws import Aws, Target, client_factory
from release.config import Config, Environment
from release.errors import SandboxError, UsageError
from release.sandbox import server_process
from release.sandbox.lookup import key_file
from release.sandbox.postgres import PostgresServer
from release.sandbox.provision import SeedNames, provision

if TYPE_CHECKING:
    from types_boto3_ec2.type_defs import FilterTypeDef

KEY_NAME = "kiln-sandbox"
DATABASE = "webapp"


@dataclass(frozen=True)
class StackInfo:
    endpoint: str
    env: dict[str, str]
    dataplane: bool
    database_url: str
    key_file: str
    environments: dict[str, str]  # sandbox environment -> region
    load_balancers: list[dict[str, Any]]
    bastions: dict[str, str] = field(default_factory=dict)  # Name tag -> user@address


def can_run_instances() -> bool:
    return platform.system() == "Linux" and os.geteuid() == 0


def up(cfg: Config, state_dir: Path, *, time_scale: float = server_process.DEFAULT_TIME_SCALE,
       dataplane: bool | None = None, on_step: Callable[[str], None] = lambda s: None) -> StackInfo:
    """Start (or reuse) everything and provision every sandbox environment. Idempotent."""
    environments = [e for e in cfg.environments.values() if e.sandbox]
    if not environments:
        raise SandboxError("no environment in versions.toml has sandbox = true",
                           hint="Add [environments.sandbox] with sandbox = true (see README).")
    real = can_run_instances() if dataplane is None else dataplane
    if real and not can_run_instances():
        raise SandboxError("real sandbox instances need root on Linux (chroot, overlayfs, loopback addresses)",
                           hint="Run as root, or start a control-plane-only sandbox with --no-instances.")
    on_step("starting the control plane" + (" and the data plane (first run builds the base image)" if real else ""))
    info = server_process.start(state_dir, time_scale=time_scale, dataplane=real,
                        base_image_name=cfg.base_image.name.replace("*", "sandbox"),
                        base_image_owner=cfg.base_image.owners[0] if cfg.base_image.owners else None,
                        on_step=on_step)
    on_step("starting PostgreSQL for the app")
    database_url = _database(state_dir)
    from release.ssh import new_key_pair  # paramiko: not for `inv bake`, which only asks key_file()

    key = key_file(state_dir)
    public_key = new_key_pair(key, "kiln-sandbox") if not key.exists() else None
    bastions: dict[str, str] = {}
    for env in environments:
        on_step(f"provisioning {env.name} in {env.region}")
        aws = Aws(Target(region=env.region, endpoint_url=info.endpoint))
        _import_key(aws, key, public_key)
        names = seed_names(env, cfg)
        seed_image = base = None
        if info.dataplane:
            on_step(f"building the legacy app image in {env.region} (once)")
            base = _published_base(aws, names)
            seed_image = legacy_image(aws, base)
        seed = provision(client_factory(aws), env.region, names, base_image_id=seed_image, database_url=database_url)
        if base is not None and env.ssh.bastion_instance:
            on_step(f"starting the bastion {env.ssh.bastion_instance} in {env.region}")
            _, address = bastion(aws, env.ssh.bastion_instance, base, seed.public_subnet_ids[0],
                                 seed.security_group_ids["bastion"])
            bastions[env.ssh.bastion_instance] = f"{env.ssh.bastion_user or env.ssh.user}@{address}"
    stack = StackInfo(endpoint=info.endpoint, env=info.env, dataplane=info.dataplane, database_url=database_url,
                      key_file=str(key), environments={e.name: e.region for e in environments},
                      load_balancers=load_balancers(info.endpoint), bastions=bastions)
    (state_dir / "stack.json").write_text(json.dumps(asdict(stack), indent=2))
    return stack


def down(state_dir: Path) -> bool:
    """Stop the server (instances with it) and PostgreSQL; True when something was running."""
    stopped = server_process.stop(state_dir)
    _forget_images(state_dir / "dataplane")
    pg_dir = state_dir / "postgres"
    if (pg_dir / "port").exists():
        PostgresServer(pg_dir, int((pg_dir / "port").read_text())).stop()
    (state_dir / "stack.json").unlink(missing_ok=True)
    return stopped


def _forget_images(dataplane: Path) -> None:
    """The cloud's state lives as long as its server: with it gone, its images' layers are garbage.
    Never delete through a mount: refuse while anything is still mounted below."""
    if not dataplane.exists():
        return
    root = str(dataplane.resolve())
    mounted = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
               if line.split()[1].startswith(root + "/")]
    if mounted:
        raise SandboxError(f"{len(mounted)} mount(s) still under {root} after the server stopped (e.g. {mounted[0]})",
                           hint="Unmount them (umount -R) and run `inv sandbox.down` again.")
    shutil.rmtree(dataplane)


def status(state_dir: Path) -> StackInfo | None:
    if server_process.find(state_dir) is None:
        return None
    try:
        data = json.loads((state_dir / "stack.json").read_text())
    except (OSError, ValueError):
        return None
    data["load_balancers"] = load_balancers(data["endpoint"])
    return StackInfo(**data)


def seed_names(env: Environment, cfg: Config) -> SeedNames:
    alarms = [*env.alarms, "", ""]
    defaults = SeedNames()
    return SeedNames(
        asg=env.asg, launch_template=env.launch_template,
        target_group=env.target_groups[0] if env.target_groups else defaults.target_group,
        load_balancer=env.target_groups[0] if env.target_groups else defaults.load_balancer,
        table=env.ledger_table, secret=env.secret_id,
        alarm_target_5xx=alarms[0] or defaults.alarm_target_5xx,
        alarm_unhealthy_hosts=alarms[1] or defaults.alarm_unhealthy_hosts,
        network=env.asg, base_image=cfg.base_image.name.replace("*", "sandbox"),
        base_image_owner=cfg.base_image.owners[0] if cfg.base_image.owners else defaults.base_image_owner,
        key_name=KEY_NAME)


def bastion(aws: Aws, name: str, base_image_id: str, subnet_id: str, security_group_id: str, *,
            timeout: float = 60.0) -> tuple[str, str]:
    """The seed architecture's bastion: an instance of the base image (Debian's sshd, TCP forwarding
    on) in a public subnet, authorising the sandbox key; Kiln finds it by its Name tag. Started once;
    returns (instance id, address) when its sshd answers."""
    ec2 = aws.client("ec2")
    filters: list[FilterTypeDef] = [{"Name": "tag:Name", "Values": [name]},
                                    {"Name": "instance-state-name", "Values": ["pending", "running"]}]
    with aws.call("DescribeInstances", name):
        found = [i for r in ec2.describe_instances(Filters=filters)["Reservations"] for i in r["Instances"]]
    if found:
        instance = found[0]
    else:
        with aws.call("RunInstances", f"bastion {name}"):
            instance = ec2.run_instances(
                ImageId=base_image_id, MinCount=1, MaxCount=1, InstanceType="t3.nano", KeyName=KEY_NAME,
                SubnetId=subnet_id, SecurityGroupIds=[security_group_id],
                TagSpecifications=[{"ResourceType": "instance",
                                    "Tags": [{"Key": "Name", "Value": name}, {"Key": "Role", "Value": "bastion"}]}],
            )["Instances"][0]
    instance_id, address = str(instance["InstanceId"]), str(instance["PrivateIpAddress"])
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, 22), timeout=2) as sock:
                if sock.recv(4).startswith(b"SSH-"):
                    return instance_id, address
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SandboxError(f"the bastion {instance_id} ({address}) does not answer SSH",
                               hint="See its console output (aws ec2 get-console-output).")
        time.sleep(0.2)


def publish_base_image(endpoint: str, name: str) -> dict[str, str]:
    """Have the sandbox publish a newer base AMI called `name` in every region (admin API)."""
    request = urllib.request.Request(f"{endpoint}/_kiln/base-image", data=json.dumps({"name": name}).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return dict(json.loads(response.read())["images"])
    except (urllib.error.URLError, OSError, ValueError, KeyError) as err:
        raise SandboxError(f"the sandbox at {endpoint} did not publish a base image ({err})",
                           hint="Is it running? inv sandbox.status") from None


def faults(endpoint: str) -> dict[str, Any]:
    """The fault rules in force and the last ones that ended (admin API, faults.py)."""
    return _admin(endpoint, "GET", "faults")


def add_fault(endpoint: str, rule: dict[str, Any]) -> dict[str, Any]:
    """Add one fault rule; UsageError with the sandbox's reason when it refuses it."""
    return dict(_admin(endpoint, "POST", "faults", rule)["rule"])


def clear_faults(endpoint: str) -> int:
    """End every fault rule; how many were in force."""
    return int(_admin(endpoint, "DELETE", "faults")["cleared"])


def instance_fault(endpoint: str, instance_id: str, action: str) -> dict[str, Any]:
    """"kill" (a host failure) or "stop" (EC2 StopInstances) one instance."""
    return _admin(endpoint, "POST", f"instances/{instance_id}/{action}")


def set_target_health(endpoint: str, instance_id: str, *, healthy: bool) -> dict[str, Any]:
    """Make an instance fail (or pass again) its load balancer health checks."""
    return _admin(endpoint, "POST", "target-health", {"instance_id": instance_id, "healthy": healthy})


def _admin(endpoint: str, method: str, route: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One admin API call. The sandbox refusing (4xx) is a UsageError with its reason: nothing changed."""
    request = urllib.request.Request(f"{endpoint}/_kiln/{route}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as err:
        try:
            reason = str(json.loads(err.read())["error"])
        except (ValueError, KeyError, TypeError):
            reason = f"HTTP {err.code}"
        if 400 <= err.code < 500:
            raise UsageError(f"the sandbox refused {method} /_kiln/{route}: {reason}") from None
        raise SandboxError(f"the sandbox failed {method} /_kiln/{route}: {reason}",
                           hint="See its log (inv sandbox.status shows where).") from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise SandboxError(f"the sandbox at {endpoint} did not answer {method} /_kiln/{route} ({err})",
                           hint="Is it running? inv sandbox.status") from None


def load_balancers(endpoint: str) -> list[dict[str, Any]]:
    """The local ALB listeners (name, target group, URL) from the sandbox's admin API."""
    try:
        with urllib.request.urlopen(f"{endpoint}/_kiln/load-balancers", timeout=5) as response:
            return list(json.loads(response.read())["load_balancers"])
    except (urllib.error.URLError, OSError, ValueError, KeyError) as err:
        raise SandboxError(f"the sandbox at {endpoint} did not list its load balancers ({err})",
                           hint="Is it running? inv sandbox.status") from None


def _published_base(aws: Aws, names: SeedNames) -> str:
    with aws.call("DescribeImages", names.base_image):
        images = aws.client("ec2").describe_images(
            Owners=[names.base_image_owner], Filters=[{"Name": "name", "Values": [names.base_image]}])["Images"]
    if not images:
        raise SandboxError(f"the sandbox did not publish its base image {names.base_image!r}",
                           hint="See the server log (inv sandbox.status shows where).")
    return str(images[0]["ImageId"])


def _database(state_dir: Path) -> str:
    """Start the sandbox's PostgreSQL (same port as before when there was one) and its app database."""
    pg_dir = state_dir / "postgres"
    pg_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(pg_dir, 0o755)  # the postgres user must be able to enter it
    port_file, password_file = pg_dir / "port", pg_dir / "webapp.password"
    port = int(port_file.read_text()) if port_file.exists() else server_process.free_port()
    password = password_file.read_text().strip() if password_file.exists() else secrets.token_urlsafe(18)
    server = PostgresServer(pg_dir, port)
    server.start()
    port_file.write_text(str(port))
    fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password)
    return server.create_database(DATABASE, DATABASE, password)



def _import_key(aws: Aws, key: Path, public_key: str | None) -> None:
    """Authorise the sandbox key in this region (re-derive the public half when it already exists)."""
    ec2 = aws.client("ec2")
    with aws.call("DescribeKeyPairs", KEY_NAME):
        existing = ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [KEY_NAME]}])["KeyPairs"]
    if existing:
        return
    if public_key is None:
        import paramiko

        loaded = paramiko.Ed25519Key.from_private_key_file(str(key))
        public_key = f"{loaded.get_name()} {loaded.get_base64()} kiln-sandbox"
    with aws.call("ImportKeyPair", KEY_NAME):
        ec2.import_key_pair(KeyName=KEY_NAME, PublicKeyMaterial=public_key.encode())


# The app as the old scp deploy script left it: what the sandbox's fleet runs before Kiln's first
# release, so that fleet is healthy like the user's is, and Kiln adopts it as release 0.
LEGACY_VERSION = "0.0.0+scp"
LEGACY_IMAGE_NAME = "webapp-legacy-scp"
_LEGACY_READY = "KILN-LEGACY-IMAGE-READY"
_LEGACY_USER_DATA = f"""#!/bin/sh
set -e
mkdir -p /opt/legacy
cat > /opt/legacy/server.py <<'PY'
import http.server, json, socket
meta = json.load(open("/etc/kiln/instance-metadata.json"))
VERSION = json.dumps({{"version": "{LEGACY_VERSION}", "git_sha": "unknown", "fingerprint": "none",
                       "built_at": "unknown"}}).encode()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = {{"/health": b"ok", "/version": VERSION}}.get(self.path, socket.gethostname().encode())
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer((meta["local_ipv4"], 80), Handler).serve_forever()
PY
cat > /etc/systemd/system/legacy-webapp.service <<'UNIT'
[Unit]
Description=The web app as the scp deploy script left it
[Service]
ExecStart=/usr/bin/python3 /opt/legacy/server.py
[Install]
WantedBy=multi-user.target
UNIT
mkdir -p /etc/systemd/system/multi-user.target.wants
ln -sf /etc/systemd/system/legacy-webapp.service /etc/systemd/system/multi-user.target.wants/
echo {_LEGACY_READY}
"""


def legacy_image(aws: Aws, base_image_id: str, *, timeout: float = 120.0) -> str:
    """The legacy app's AMI in this region: built once from the base image with a user-data script
    (launch, wait for the script, CreateImage, terminate) — the way such images are made on AWS."""
    ec2 = aws.client("ec2")
    with aws.call("DescribeImages", LEGACY_IMAGE_NAME):
        found = ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [LEGACY_IMAGE_NAME]}])
    if found["Images"]:
        return str(found["Images"][0]["ImageId"])
    with aws.call("RunInstances", f"legacy image builder from {base_image_id}"):
        instance_id = ec2.run_instances(ImageId=base_image_id, MinCount=1, MaxCount=1, InstanceType="t3.micro",
                                        UserData=_LEGACY_USER_DATA)["Instances"][0]["InstanceId"]
    try:
        deadline = time.monotonic() + timeout
        while _LEGACY_READY not in _console(ec2, instance_id):
            if time.monotonic() > deadline:
                raise SandboxError(f"the legacy image builder {instance_id} did not finish its user data",
                                   hint="See its console output (aws ec2 get-console-output).")
            time.sleep(0.5)
        with aws.call("CreateImage", instance_id):
            image_id = str(ec2.create_image(InstanceId=instance_id, Name=LEGACY_IMAGE_NAME,
                                            Description="the web app as the scp deploy script left it")["ImageId"])
    finally:
        with aws.call("TerminateInstances", instance_id):
            ec2.terminate_instances(InstanceIds=[instance_id])
    return image_id


def _console(ec2: Any, instance_id: str) -> str:
    # botocore decodes GetConsoleOutput's base64 itself.
    return str(ec2.get_console_output(InstanceId=instance_id).get("Output") or "")
