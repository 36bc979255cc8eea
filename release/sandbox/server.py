"""The sandbox control plane: moto's multi-service app plus what moto lacks, in one process.

    python -m release.sandbox.server --port N --state-dir DIR [--time-scale F] [--dataplane]

Requests first meet `SandboxServer` (a WSGI middleware). It serves:
- /_kiln/… — the admin API (admin.py);
- every AWS request is counted by service and operation (calls.py; GET /_kiln/requests);
- faults injected into AWS calls (faults.py): an error instead of the call, a delay before it, or
  its response held past the client's read timeout — before anything below;
- the AWS operations moto lacks (instance refresh, DeleteLaunchTemplateVersions, image
  deprecation) or only fakes (SSM Run Command: ssm.py), parsed and rendered from botocore's models
  by wire.py, over the same wire as AWS;
- everything else goes to moto, whose behaviour patches/ corrects in place.
It also publishes the base AMI in each region on first use (like Debian's public AMIs).

One lock serialises request handling and the background ticker (refresh engines, local ALB
listeners and their metrics, alarm evaluation, target health checks, ELB health of group
members), so every request sees a consistent world. Time in the sandbox is AWS time multiplied
by `time_scale` (0.1: a 300 s instance warmup takes 30 s). With `--dataplane`, instances are real
(docs/dataplane.md). The fidelity record is docs/sandbox.md.

Binds 127.0.0.1 only.

Why one module (~700 lines): the WSGI entry point of the sandbox: routing, the one lock and the
ticker; each AWS behaviour it serves lives in engines/ or patches/.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl

from release.clock import Clock, SystemClock
from release.errors import KilnError
from release.sandbox import paging, patches
from release.sandbox.admin import AdminApi, AdminError
from release.sandbox.calls import CallCounter
from release.sandbox.contracts import DataPlane
from release.sandbox.engines import imds, ingress
from release.sandbox.engines.refresh import RefreshEngine, RefreshError
from release.sandbox.engines.ssm import Agent, RunCommand, SsmError
from release.sandbox.faults import Call, FaultBook, Injection, identify, render_error
from release.sandbox.patches import images, launch_templates
from release.sandbox.patches.addresses import LoopbackAddresses
from release.sandbox.patches.cloudwatch import AlarmEvaluator
from release.sandbox.patches.fleet import MotoFleet, sweep_elb_health
from release.sandbox.patches.loadbalancers import LoadBalancers
from release.sandbox.patches.managed import MotoNodes
from release.sandbox.patches.targets import TargetHealthBook
from release.sandbox.provision import BASE_IMAGE_NAME, DEBIAN_OWNER_ID
from release.sandbox.wire import JsonWire, Reply, RequestContext, ServiceWire, WireError, new_request_id, wire_for

log = logging.getLogger("kiln.sandbox")

DEFAULT_TIME_SCALE = 0.1
TICK_SECONDS = 0.2
# How long a RunInstances answer may wait for its instances to boot (real seconds; _until_booted).
RUN_INSTANCES_BOOT_WAIT = 3.0
DEFAULT_ACCOUNT_ID = "123456789012"  # moto's account for any access key it does not know
DEFAULT_REGION = "us-east-1"
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 409: "Conflict", 500: "Internal Server Error",
            503: "Service Unavailable"}


@dataclass(frozen=True)
class BaseImage:
    """The base AMI the sandbox publishes in every region (versions.toml [base_image] finds it)."""

    name: str = BASE_IMAGE_NAME
    owner: str = DEBIAN_OWNER_ID
    description: str = "Debian 12 (bookworm) amd64, the Kiln sandbox's base image"


Handler = Callable[[RequestContext, dict[str, Any]], dict[str, Any]]
StartResponse = Callable[..., Any]

# (SigV4 signing name, API version or None for any) -> botocore service name
SERVICES: dict[tuple[str, str | None], str] = {
    ("autoscaling", None): "autoscaling",
    ("ec2", None): "ec2",
    ("elasticloadbalancing", "2015-12-01"): "elbv2",
    ("ssm", None): "ssm",
}
RUN_COMMAND_OPERATIONS = ("SendCommand", "GetCommandInvocation", "ListCommandInvocations", "ListCommands",
                          "CancelCommand")


def _backends(backend_dict: Any) -> list[Any]:
    """Every backend moto has created so far (never creates one for an unused region)."""
    return [backend for _, _, backend in _located_backends(backend_dict)]


def _located_backends(backend_dict: Any) -> list[tuple[str, str, Any]]:
    """(account id, region, backend) of every backend moto has created so far."""
    return [(str(account), str(region), backend) for account, region, backend in backend_dict.iter_backends()]


def _credential_scope(environ: dict[str, Any]) -> tuple[str, str] | None:
    """(region, signing service) from a SigV4 Authorization header."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    marker = "Credential="
    if marker not in auth:
        return None
    credential = auth.split(marker, 1)[1].split(",", 1)[0]
    parts = credential.split("/")
    if len(parts) < 5:
        return None
    return parts[2], parts[3]


class SandboxServer:
    """WSGI app: admin API, Kiln's operations, then moto."""

    def __init__(
        self,
        *,
        time_scale: float = DEFAULT_TIME_SCALE,
        clock: Clock | None = None,
        dataplane: DataPlane | None = None,
        addresses: LoopbackAddresses | None = None,
        base_image: BaseImage | None = None,
    ) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        # AWS's managed policies exist in every account (AmazonSSMManagedInstanceCore makes an
        # instance's role SSM-capable); moto loads them only when asked (0.07 s per account).
        os.environ.setdefault("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
        self.clock: Clock = clock or SystemClock()
        self.time_scale = time_scale
        self.lock = threading.RLock()
        self.started_at = self.clock.now()
        self.targets = TargetHealthBook(self.clock, time_scale)
        self.alarms = AlarmEvaluator(self.clock, time_scale)
        self.runtime = patches.Runtime(
            clock=self.clock,
            time_scale=time_scale,
            targets=self.targets,
            alarms=self.alarms,
            addresses=addresses or LoopbackAddresses(),
        )
        self.load_balancers = LoadBalancers(self.clock, time_scale, self.targets.tracker)
        patches.install(self.runtime)
        self.plug_dataplane(dataplane)
        self.moto: Callable[[dict[str, Any], StartResponse], Iterable[bytes]] = DomainDispatcherApplication(
            create_backend_app
        )
        self.wires: dict[str, ServiceWire | JsonWire] = {name: wire_for(name) for name in set(SERVICES.values())}
        self.handlers: dict[tuple[str, str], Handler] = {}
        self.faults = FaultBook(self.clock)
        self.requests = CallCounter(self.clock)
        self.admin = AdminApi(
            health=self.health, policy=self.targets.policy, load_balancers=self.describe_load_balancers,
            publish_base_image=self.publish_newer_base_image, faults=self.faults, instance_action=self.instance_fault,
            ssh_ingress=self.ssh_ingress, requests=self.requests,
        )
        self.engines: dict[tuple[str, str], RefreshEngine] = {}
        self.run_commands: dict[tuple[str, str], RunCommand] = {}
        self.base_image = base_image or BaseImage()
        self.metadata = imds.InstanceMetadataService(self.clock)
        self._base_rootfs: Path | None = None
        self._published: dict[str, str] = {}  # region -> base AMI id
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self.register("ec2", "DeleteLaunchTemplateVersions", launch_templates.delete_launch_template_versions)
        self.register("ec2", "EnableImageDeprecation", images.enable_image_deprecation)
        self.register("ec2", "DisableImageDeprecation", images.disable_image_deprecation)
        self._register_refresh_operations()
        self._register_run_command()

    # ---- plugging ------------------------------------------------------------------------------

    def register(self, service: str, operation: str, handler: Handler) -> None:
        """Serve `operation` of `service` (botocore names) with `handler` instead of moto."""
        if not self.wires[service].has_operation(operation):
            raise ValueError(f"{service} has no operation {operation}")
        self.handlers[(service, operation)] = handler

    def plug_dataplane(self, dataplane: DataPlane | None) -> None:
        """Attach the real machines: EC2 hooks call it, and target health uses its probes."""
        from release.sandbox.patches.targets import dataplane_probe

        with self.lock:
            self.runtime.dataplane = dataplane
            self.targets.probe = dataplane_probe(dataplane, self.targets.policy) if dataplane else self.targets.policy
            for key in list(getattr(self, "run_commands", {})):  # made again, with the new data plane
                del self.run_commands[key]

    # ---- the base image -----------------------------------------------------------------------

    def prepare_base_image(self) -> None:
        """With a data plane: build (first time) or reuse its Debian root filesystem."""
        dataplane = self.runtime.dataplane
        ensure = getattr(dataplane, "ensure_base_image", None)
        if callable(ensure):
            built = ensure()
            self._base_rootfs = Path(built.rootfs)
            log.info("base image rootfs %s%s", built.rootfs, " (built now)" if built.built else "")

    def publish_base_image(self, region: str) -> str | None:
        """Publish the base AMI in `region` (once): owned by its publisher's account and public,
        as Debian publishes its AMIs in every region; backed by the data plane's rootfs if any."""
        if region in self._published:
            return self._published[region]
        from moto.ec2.models import ec2_backends

        with self.lock:
            if region in self._published:
                return self._published[region]
            account: Any = ec2_backends[DEFAULT_ACCOUNT_ID]
            if region not in account.regions:
                return None
            self._published[region] = self._register_base(account[region])
            return self._published[region]

    def publish_newer_base_image(self, name: str) -> dict[str, str]:
        """What Debian does with a point release or security update: a newer base AMI, `name`, in
        every region the base is published in (same root filesystem, a later CreationDate), which
        from then on is what versions.toml's [base_image] filter resolves to. Region -> AMI id."""
        from moto.ec2.models import ec2_backends

        with self.lock:
            self.base_image = replace(self.base_image, name=name)
            account: Any = ec2_backends[DEFAULT_ACCOUNT_ID]
            for region in list(self._published):
                self._published[region] = self._register_base(account[region])
            return dict(self._published)

    def _register_base(self, backend: Any) -> str:
        wanted = self.base_image
        ami: Any = next(
            (a for a in backend.amis.values() if a.name == wanted.name and a.owner_id == wanted.owner), None
        )
        if ami is None:
            older = [a.creation_date for a in backend.amis.values() if a.owner_id == wanted.owner]
            ami = backend.register_image(None, wanted.description)
            ami.name, ami.owner_id = wanted.name, wanted.owner
            ami.architecture, ami.virtualization_type, ami.root_device_name = "x86_64", "hvm", "/dev/xvda"
            ami.root_device_type = "ebs"  # like Debian's AMIs; Packer's amazon-ebs refuses anything else
            ami.launch_permissions.append({"Group": "all"})
            # "Most recent" must be this one, and CreationDate is shown to the second.
            if older and ami.creation_date.replace(microsecond=0) <= max(older).replace(microsecond=0):
                ami.creation_date = max(older).replace(microsecond=0) + timedelta(seconds=1)
        if self._base_rootfs is not None and self.runtime.dataplane is not None:
            self.runtime.dataplane.register_image(str(ami.id), self._base_rootfs)
        log.info("base image %s published in %s as %s", wanted.name, backend.region_name, ami.id)
        return str(ami.id)

    # ---- instance refresh ---------------------------------------------------------------------

    def _register_refresh_operations(self) -> None:
        def guarded(call: Callable[[RefreshEngine, dict[str, Any]], dict[str, Any]]) -> Handler:
            def handler(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
                try:
                    return call(self.engine(ctx.account_id, ctx.region), params)
                except RefreshError as exc:
                    raise WireError(exc.code, exc.message, exc.status) from exc

            return handler

        def start(engine: RefreshEngine, p: dict[str, Any]) -> dict[str, Any]:
            refresh_id = engine.start(
                p["AutoScalingGroupName"],
                strategy=p.get("Strategy", "Rolling"),
                preferences=p.get("Preferences"),
                desired_configuration=p.get("DesiredConfiguration"),
            )
            return {"InstanceRefreshId": refresh_id}

        def describe(engine: RefreshEngine, p: dict[str, Any]) -> dict[str, Any]:
            found = engine.describe(p["AutoScalingGroupName"], tuple(p.get("InstanceRefreshIds", ())))
            return paging.instance_refreshes(found, p)

        def cancel(engine: RefreshEngine, p: dict[str, Any]) -> dict[str, Any]:
            return {"InstanceRefreshId": engine.cancel(p["AutoScalingGroupName"])}

        def rollback(engine: RefreshEngine, p: dict[str, Any]) -> dict[str, Any]:
            return {"InstanceRefreshId": engine.rollback(p["AutoScalingGroupName"])}

        self.register("autoscaling", "StartInstanceRefresh", guarded(start))
        self.register("autoscaling", "DescribeInstanceRefreshes", guarded(describe))
        self.register("autoscaling", "CancelInstanceRefresh", guarded(cancel))
        self.register("autoscaling", "RollbackInstanceRefresh", guarded(rollback))

    def engine(self, account_id: str, region: str) -> RefreshEngine:
        """The refresh engine of one account and region (made on first use)."""
        key = (account_id, region)
        if key not in self.engines:
            fleet = MotoFleet(account_id, region, clock=self.clock, time_scale=self.time_scale, targets=self.targets)
            self.engines[key] = RefreshEngine(fleet, self.clock, time_scale=self.time_scale)
        return self.engines[key]

    # ---- SSM Run Command ----------------------------------------------------------------------

    def _register_run_command(self) -> None:
        def handler(operation: str) -> Handler:
            def handle(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
                engine = self.run_command(ctx.account_id, ctx.region)
                call = {"SendCommand": engine.send, "GetCommandInvocation": engine.get_invocation,
                        "ListCommandInvocations": engine.list_invocations, "ListCommands": engine.list_commands,
                        "CancelCommand": engine.cancel}[operation]  # fmt: skip
                try:
                    return call(params)
                except SsmError as exc:
                    raise WireError(exc.code, exc.message, exc.status) from exc

            return handle

        for operation in RUN_COMMAND_OPERATIONS:
            self.register("ssm", operation, handler(operation))

    def run_command(self, account_id: str, region: str) -> RunCommand:
        """The Run Command engine of one account and region (made on first use). Scripts run in
        the data plane's instances; without one, every invocation is Undeliverable."""
        key = (account_id, region)
        if key not in self.run_commands:
            dataplane = self.runtime.dataplane
            agent = cast(Agent, dataplane) if callable(getattr(dataplane, "run_script", None)) else None
            self.run_commands[key] = RunCommand(
                self.clock, MotoNodes(account_id, region, dataplane), agent,
                account_id=account_id, region=region, time_scale=self.time_scale,
            )  # fmt: skip
        return self.run_commands[key]

    # ---- the ticker ---------------------------------------------------------------------------

    def tick(self) -> None:
        """One step of everything time drives. Probes run outside the lock (they may be HTTP)."""
        from moto.autoscaling.models import autoscaling_backends
        from moto.cloudwatch.models import cloudwatch_backends
        from moto.elbv2.models import elbv2_backends

        with self.lock:
            for engine in list(self.engines.values()):
                try:
                    engine.tick()
                except Exception:  # one broken refresh must not stop the others
                    log.exception("refresh engine tick failed")
            for run_command in list(self.run_commands.values()):
                try:
                    run_command.tick()
                except Exception:
                    log.exception("run command tick failed")
            if self.runtime.dataplane is not None:  # without real targets a proxy has nowhere to go
                self.load_balancers.sync(
                    _backends(elbv2_backends), lambda b: cloudwatch_backends[b.account_id][b.region_name]
                )
                self.load_balancers.publish()
            for account, region, backend in _located_backends(cloudwatch_backends):
                self.alarms.evaluate_due(account, region, list(backend.alarms.values()))
            due = self.targets.collect_due()
        results = self.targets.run_probes(due)
        with self.lock:
            self.targets.record(results)
            for account, region, backend in _located_backends(autoscaling_backends):
                for group in list(backend.autoscaling_groups.values()):
                    refreshing = self._refreshing(account, region, group.name)
                    replaced = sweep_elb_health(
                        group, self.targets, self.clock, self.time_scale, replace=not refreshing
                    )
                    if replaced:
                        log.info("%s: replaced unhealthy instances %s", group.name, ", ".join(replaced))

    def _refreshing(self, account_id: str, region: str, group_name: str) -> bool:
        engine = self.engines.get((account_id, region))
        if engine is None:
            return False
        active = ("Pending", "InProgress", "Baking", "Cancelling", "RollbackInProgress")
        return any(r["Status"] in active for r in engine.describe(group_name))

    def start_ticker(self, interval: float = TICK_SECONDS) -> None:
        def run() -> None:
            while not self._stop.wait(interval):
                try:
                    self.tick()
                except Exception:
                    log.exception("sandbox tick failed")

        self._ticker = threading.Thread(target=run, name="kiln-sandbox-ticker", daemon=True)
        self._ticker.start()

    def stop_ticker(self) -> None:
        """Stop the background loop and the load balancers' listeners."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
        with self.lock:
            self.load_balancers.stop_all()

    # ---- admin ------------------------------------------------------------------------------

    def describe_load_balancers(self) -> list[dict[str, Any]]:
        with self.lock:
            return self.load_balancers.describe()

    def health(self) -> dict[str, Any]:
        from moto.autoscaling.models import autoscaling_backends
        from moto.ec2.models import ec2_backends

        with self.lock:
            instances = len([i for b in _backends(ec2_backends) for i in b.all_instances() if i.state != "terminated"])
            groups = sum(len(b.autoscaling_groups) for b in _backends(autoscaling_backends))
        return {
            "ok": True,
            "pid": os.getpid(),
            "time_scale": self.time_scale,
            "started_at": self.started_at.isoformat(),
            "dataplane": self.runtime.dataplane is not None,
            "counts": {"instances": instances, "auto_scaling_groups": groups, "refresh_engines": len(self.engines)},
        }

    def instance_fault(self, action: str, instance_id: str) -> dict[str, Any]:
        """The admin API's instance faults: "kill" (a host failure) or "stop" (EC2 StopInstances)."""
        from moto.ec2.models import ec2_backends

        with self.lock:
            found = [
                (region, backend, instance)
                for _, region, backend in _located_backends(ec2_backends)
                if (instance := backend.get_instance_by_id(instance_id)) is not None
            ]
            if not found:
                raise AdminError(404, f"no instance {instance_id} in the sandbox")
            region, backend, instance = found[0]
            if instance.state in ("terminated", "shutting-down"):
                raise AdminError(409, f"instance {instance_id} is {instance.state}")
            if action == "stop":
                backend.stop_instances([instance_id])
                log.info("fault: instance %s stopped (admin API)", instance_id)
                return {"instance_id": instance_id, "region": region, "action": "stop", "state": instance.state}
            if instance.state != "running":
                raise AdminError(409, f"instance {instance_id} is {instance.state}; only a running one can be killed")
            kill = getattr(self.runtime.dataplane, "kill", None)
        if callable(kill):
            try:
                kill(instance_id)
            except KilnError as err:
                raise AdminError(409, f"instance {instance_id} could not be killed: {err}") from None
            effect = "its processes were killed; health checks will fail"
        else:
            self.targets.policy.set(instance_id=instance_id, healthy=False)
            effect = "no data plane: its health checks fail from now on"
        log.info("fault: instance %s killed (%s)", instance_id, effect)
        return {"instance_id": instance_id, "region": region, "action": "kill", "effect": effect}

    def ssh_ingress(self, instance_id: str, client: tuple[str, int], server: tuple[str, int]) -> dict[str, Any]:
        """Do `instance_id`'s security groups admit this SSH connection (its sshd asks at each login)?
        The source is the instance whose process opened the connection (the data plane finds it),
        or this machine; the rules are the groups' ingress rules as they are now (ingress.py)."""
        from moto.ec2.models import ec2_backends

        finder = getattr(self.runtime.dataplane, "connection_source", None)
        source_id = finder(client, server) if callable(finder) else None  # reads /proc: outside the lock
        with self.lock:
            found = {
                i.id: i for b in _backends(ec2_backends) for i in b.all_instances() if i.id in (instance_id, source_id)
            }
            target = found.get(instance_id)
            if target is None:
                raise AdminError(404, f"no instance {instance_id} in the sandbox")
            groups = {group.id: _permissions(group) for group in target.security_groups}
            labels = {g.id: f"{g.id} ({g.name})" for b in _backends(ec2_backends) for g in b.describe_security_groups()}
            peer = found.get(source_id or "")
            source = (
                ingress.Source(str(peer.private_ip), peer.id, tuple(g.id for g in peer.security_groups))
                if peer is not None else ingress.Source(client[0])
            )  # fmt: skip
        verdict = ingress.admits(groups, source, port=server[1], labels=labels)
        if not verdict.allowed:
            log.info("SSH to %s refused: %s", instance_id, verdict.reason)
        return {"allowed": verdict.allowed, "source": source.describe(labels), "reason": verdict.reason}

    # ---- WSGI -----------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith(imds.PREFIX):
            return self._metadata_service(environ, start_response, path[len(imds.PREFIX):])
        if self.admin.handles(path):
            body = self._read_body(environ)
            status, payload = self.admin.handle(environ.get("REQUEST_METHOD", "GET"), path, body)
            return self._send(start_response, Reply(status, json.dumps(payload).encode(), "application/json"))
        scope = _credential_scope(environ)
        call = identify(environ, self._read_body(environ), scope[1] if scope else None)
        self.requests.count(call)
        injection = self._fault_for(call)
        if injection is None and call is not None and (call.service, call.operation) == ("ec2", "RunInstances"):
            answer = list(self._dispatch(environ, start_response))
            self._until_booted(answer)
            return answer
        if injection is None:
            return self._dispatch(environ, start_response)
        fault = injection.fault
        if fault.kind == "error":
            error = render_error(injection)
            start_response(f"{error.status} {_REASONS.get(error.status, 'Error')}",
                           [*error.headers, ("Content-Length", str(len(error.body)))])
            return [error.body]
        if fault.kind == "latency":
            self.clock.sleep(fault.delay)  # outside the lock: the rest of the cloud keeps answering
        answer = list(self._dispatch(environ, start_response))  # performed; nothing is sent yet
        if fault.kind == "timeout":
            self.clock.sleep(fault.delay)  # the client's read timeout fires; the call took effect
        return answer

    def _until_booted(self, answer: list[bytes]) -> None:
        """RunInstances answers once its instances have booted (at most RUN_INSTANCES_BOOT_WAIT
        seconds), outside the lock. On EC2 an instance is `pending` for several seconds and a client
        connects after that; here it is `running` at once while its init takes a second or so, and
        a client's first connection (Packer's, right away) was refused and retried 5 s later.
        Group launches (the refresh engines') do not wait: they never come through here."""
        wait = getattr(self.runtime.dataplane, "wait_until_booted", None)
        if not callable(wait):
            return
        deadline = time.monotonic() + RUN_INSTANCES_BOOT_WAIT
        for instance_id in re.findall(rb"<instanceId>(i-[0-9a-f]+)</instanceId>", b"".join(answer)):
            try:
                wait(instance_id.decode(), timeout=max(0.0, deadline - time.monotonic()))
            except Exception as exc:  # still booting, or could not start: the answer goes out as it is
                log.info("RunInstances answered before %s booted: %s", instance_id.decode(), exc)
                return

    def _metadata_service(self, environ: dict[str, Any], start_response: StartResponse, path: str) -> Iterable[bytes]:
        """An instance's IMDSv2 (imds.py), from what the data plane wrote for it at launch."""
        lookup = getattr(self.runtime.dataplane, "instance_metadata", None)
        metadata = lookup(path.partition("/")[0]) if callable(lookup) else None
        # WSGI hands a request header X-Y as environ["HTTP_X_Y"].
        headers = {name: environ.get("HTTP_" + name.upper().replace("-", "_"), "")
                   for name in (imds.TOKEN_HEADER, imds.TTL_HEADER)}
        answer = self.metadata.handle(environ.get("REQUEST_METHOD", "GET"), path, headers, metadata)
        return self._send(start_response, Reply(answer.status, answer.body, answer.content_type))

    def _fault_for(self, call: Call | None) -> Injection | None:
        injection = self.faults.take(call) if call is not None else None
        if injection is not None:
            log.info("fault %s: %s %s", injection.rule_id, call.name if call else "?", injection.fault.describe())
        return injection

    def _dispatch(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        scope = _credential_scope(environ)
        if scope is not None:
            self.publish_base_image(scope[0])
        routed = self._route(environ)
        if routed is not None:
            service, operation, params_form, scope = routed
            return self._send(start_response, self._serve(service, operation, params_form, scope))
        with self.lock:
            # moto's response may be a lazy iterable; materialise it while the lock is held.
            return list(self.moto(environ, start_response))

    def _read_body(self, environ: dict[str, Any]) -> bytes:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)  # moto reads it again when the request is its
        return bytes(body)

    def _route(self, environ: dict[str, Any]) -> tuple[str, str, dict[str, str] | bytes, tuple[str, str]] | None:
        scope = _credential_scope(environ)
        if scope is None:
            return None
        target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
        if "." in target:  # a JSON service: X-Amz-Target names the operation, the body is JSON
            json_service = SERVICES.get((scope[1], None))
            operation = target.rsplit(".", 1)[1]
            if json_service is None or (json_service, operation) not in self.handlers:
                return None
            return json_service, operation, self._read_body(environ), scope
        form: dict[str, str] = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
        if environ.get("REQUEST_METHOD") == "POST" and "form-urlencoded" in environ.get("CONTENT_TYPE", ""):
            form.update(parse_qsl(self._read_body(environ).decode(), keep_blank_values=True))
        action = form.get("Action")
        if not action:
            return None
        service = SERVICES.get((scope[1], None)) or SERVICES.get((scope[1], form.get("Version")))
        if service is None or (service, action) not in self.handlers:
            return None
        return service, action, form, scope

    def _serve(self, service: str, operation: str, payload: dict[str, str] | bytes, scope: tuple[str, str]) -> Reply:
        from moto.core.exceptions import ServiceException

        wire = self.wires[service]
        ctx = RequestContext(service, operation, DEFAULT_ACCOUNT_ID, scope[0], new_request_id())
        try:
            if isinstance(wire, JsonWire):
                params = wire.parse(operation, payload if isinstance(payload, bytes) else b"")
            else:
                params = wire.parse(operation, payload if isinstance(payload, dict) else {})
            with self.lock:
                result = self.handlers[(service, operation)](ctx, params)
            return wire.render(operation, result, ctx.request_id)
        except WireError as exc:
            return wire.render_error(exc, ctx.request_id)
        except ServiceException as exc:
            return wire.render_error(WireError(str(exc.code), str(exc.message)), ctx.request_id)
        except (KeyError, TypeError) as exc:
            log.exception("bad %s %s request", service, operation)
            return wire.render_error(WireError(wire.validation_code, f"Invalid request: {exc}"), ctx.request_id)
        except Exception:  # a bug in the sandbox: say so the way AWS does, keep serving
            log.exception("%s %s failed", service, operation)
            failure = WireError("InternalFailure", "The sandbox failed to process the request.", 500, sender=False)
            return wire.render_error(failure, ctx.request_id)

    @staticmethod
    def _send(start_response: StartResponse, reply: Reply) -> list[bytes]:
        start_response(
            f"{reply.status} {_REASONS.get(reply.status, 'Error')}",
            [("Content-Type", reply.content_type), ("Content-Length", str(len(reply.body))), *reply.headers],
        )
        return [reply.body]


def _permissions(group: Any) -> list[ingress.Permission]:
    """A moto security group's ingress rules (one source each, as moto keeps them)."""
    return [
        ingress.Permission(
            protocol=str(rule.ip_protocol), from_port=rule.from_port, to_port=rule.to_port,
            cidr=(rule.ip_range or {}).get("CidrIp") or (rule.ip_range or {}).get("CidrIpv6"),
            group_id=(rule.source_group or {}).get("GroupId"),
        )
        for rule in group.ingress_rules
    ]


def serve(
    port: int,
    state_dir: Path,
    time_scale: float,
    *,
    dataplane: DataPlane | None = None,
    base_image: BaseImage | None = None,
) -> None:
    """Run the sandbox in this process until SIGTERM/SIGINT; the data plane, if any, is shut down
    with it (its `terminate_all`, when it has one)."""
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import make_server

    state_dir.mkdir(parents=True, exist_ok=True)
    # moto reads these; keep its default AMIs (the sandbox lists them like AWS's public images).
    os.environ.setdefault("MOTO_PORT", str(port))
    app = SandboxServer(
        time_scale=time_scale,
        dataplane=dataplane,
        addresses=LoopbackAddresses.for_port(port),
        base_image=base_image or BaseImage(),
    )
    app.prepare_base_image()  # with a data plane, a cold start builds the Debian rootfs here
    app.publish_base_image(DEFAULT_REGION)
    httpd = make_server("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler)

    def stop(signum: int, frame: Any) -> None:
        # shutdown() waits for serve_forever to return, so it must not run on the serving thread.
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    app.start_ticker()
    log.info("sandbox serving on http://127.0.0.1:%d (time scale %s, state %s)", port, time_scale, state_dir)
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        app.stop_ticker()
        httpd.server_close()
        terminate_all = getattr(dataplane, "terminate_all", None)
        if callable(terminate_all):
            terminate_all()
        log.info("sandbox stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m release.sandbox.server", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="loopback port to listen on")
    parser.add_argument("--state-dir", type=Path, required=True, help="where the sandbox keeps its files")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=DEFAULT_TIME_SCALE,
        help=f"real seconds per AWS second for warmups, checks, delays (default {DEFAULT_TIME_SCALE})",
    )
    parser.add_argument("--base-image-name", default=BASE_IMAGE_NAME, help="name of the published base AMI")
    parser.add_argument("--base-image-owner", default=DEBIAN_OWNER_ID, help="account that owns the published base AMI")
    parser.add_argument(
        "--dataplane",
        action="store_true",
        help="run real instances (root on Linux): images, instances, health probes (docs/dataplane.md)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.time_scale <= 1:
        parser.error("--time-scale must be in (0, 1]")
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.Formatter.converter = time.gmtime
    # werkzeug logs one access line per API call (nine in ten lines of a release's log); what the
    # sandbox itself does (refreshes, health, alarms, instances) is logged by its own loggers.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    try:
        dataplane = None
        if args.dataplane:
            from release.sandbox.dataplane import LocalDataPlane

            endpoint = f"http://127.0.0.1:{args.port}"
            dataplane = LocalDataPlane(args.state_dir / "dataplane", aws_endpoint_url=endpoint)
        base_image = BaseImage(name=args.base_image_name, owner=args.base_image_owner)
        serve(args.port, args.state_dir, args.time_scale, dataplane=dataplane, base_image=base_image)
    except KilnError as err:  # one clear line in server.log, which `up` shows
        log.error("%s", err)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
