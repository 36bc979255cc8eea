"""EC2 instance fixes: loopback private IPs, no public IPs, data-plane hooks, console output.

- Every instance's primary network interface gets a unique 127.100.x.y address as its
  PrivateIpAddress (and PrivateIpAddresses), so clients that connect to "the private IP" reach this
  machine. moto's made-up 10.x/54.x addresses are never reported, so nothing dials them.
- A terminated instance gives its subnet address back, as EC2 does when it deletes the instance's
  network interface. (moto frees the interface's address, which here is the loopback one, so the
  subnet address it set aside for the instance stayed taken: the seed's private /24 subnets ran
  out after about 500 launches, and every launch after that failed.)
- No instance gets a public IP or public DNS name, whatever the subnet or request says: there is
  nothing on this machine such an address could reach. Use the private IP (documented).
- RunInstances, StopInstances, StartInstances and TerminateInstances call the data plane, when one
  is plugged in, after moto has recorded the change. Without one the sandbox is control plane only.
  An instance the data plane cannot start (e.g. its AMI has no root filesystem) ends `terminated`
  with StateReason Server.InternalError, as EC2 reports instances it could not launch.
- TerminateInstances returns at once, as EC2's does (the instance is shutting down): the data
  plane halts the instance in the background, outside the server's lock. Halting waits for the
  instance's units to stop (up to 30 s for one that does not), and a refresh or health sweep that
  terminated instances under the lock froze every API call for that long.
- GetConsoleOutput returns the data plane's console text (base64, as EC2 sends it); without a
  data plane, moto's sample text.
- Instances launched here let SSH in only from sources their security groups admit: each login
  asks the server (POST /_kiln/ssh-ingress, server.ssh_ingress; docs/dataplane.md).
- An instance launched from a launch template whose data names an IamInstanceProfile (Arn or
  Name) gets that instance profile, as on EC2, when the request names none itself: group launches
  and the bake's smoke test launch so. (moto associates a profile only when RunInstances names it
  directly, so their instances had none, and Systems Manager could not manage them.) A profile that
  does not exist is logged and left out.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from typing import Any

from release.sandbox.contracts import LaunchedInstance
from release.sandbox.patches._replace import replace

log = logging.getLogger("kiln.sandbox.instances")


def _halt_in_background(dataplane: Any, instance_id: str) -> None:
    def halt() -> None:
        started = time.monotonic()
        try:
            dataplane.terminate(instance_id)
        except Exception:
            log.exception("terminating %s in the data plane failed", instance_id)
            return
        took = time.monotonic() - started
        if took > 5:
            log.info("%s: halting took %.1f s", instance_id, took)

    threading.Thread(target=halt, name=f"terminate-{instance_id}", daemon=True).start()


def _runtime() -> Any:
    from release.sandbox.patches import runtime

    return runtime()


def _user_data(instance: Any) -> str | None:
    data = instance.user_data
    if isinstance(data, list):  # moto keeps a one-element list for some callers
        data = data[0] if data else None
    if data is None:
        return None
    raw = data if isinstance(data, bytes) else str(data).encode()
    try:
        return base64.b64decode(raw, validate=True).decode(errors="replace")
    except ValueError:
        return raw.decode(errors="replace")


def _launched(backend: Any, instance: Any) -> LaunchedInstance:
    key_name = getattr(instance, "key_name", None)
    public_key = None
    if key_name:
        pair = backend.key_pairs.get(key_name)
        material = getattr(pair, "material_public", None) if pair else None
        # ImportKeyPair stores the bytes it was sent; CreateKeyPair a str.
        public_key = material.decode().strip() if isinstance(material, bytes) else material
    return LaunchedInstance(
        instance_id=instance.id,
        image_id=instance.image_id,
        private_ip=instance.private_ip,
        key_name=key_name,
        public_key=public_key,
        user_data=_user_data(instance),
        region=backend.region_name,
        ssh_by_security_groups=True,
    )


def _give_back_subnet_addresses(instance: Any) -> None:
    """Free the subnet addresses moto set aside for `instance` (only while they are still its own)."""
    try:
        subnet = instance.ec2_backend.get_subnet(instance.subnet_id) if instance.subnet_id else None
    except Exception:  # the subnet is gone: nothing to give back
        subnet = None
    for address in list(instance._private_ips):
        if subnet is not None and subnet._subnet_ips.get(address) is instance:
            subnet.del_subnet_ip(address)
        instance._private_ips.discard(address)


def _profile_from_template(backend: Any, reservation: Any, kwargs: dict[str, Any]) -> None:
    """Associate the launch template's IamInstanceProfile with instances launched from it."""
    if not kwargs.get("launch_template") or kwargs.get("iam_instance_profile_name") or \
            kwargs.get("iam_instance_profile_arn"):
        return  # fmt: skip
    try:
        data = backend._get_template_from_args(kwargs["launch_template"]).data
    except Exception:  # moto already refused or resolved the template; nothing more to add
        return
    profile = data.get("IamInstanceProfile") or {}
    name, arn = profile.get("Name"), profile.get("Arn")
    if not (name or arn):
        return
    for instance in reservation.instances:
        if instance.id in backend.iam_instance_profile_associations:
            continue
        try:
            backend.associate_iam_instance_profile(instance.id, iam_instance_profile_name=name,
                                                   iam_instance_profile_arn=arn)  # fmt: skip
        except Exception as exc:
            log.warning("instance %s: launch template's instance profile %s not associated: %s", instance.id,
                        arn or name, exc)  # fmt: skip


def apply() -> None:
    from moto.ec2.models.instances import Instance, InstanceBackend, StateReason
    from moto.ec2.responses.general import General

    original_prep_nics: Any = Instance.prep_nics
    original_instance_terminate: Any = Instance.terminate

    def prep_nics(self: Any, *args: Any, **kwargs: Any) -> None:
        original_prep_nics(self, *args, **kwargs)
        primary = self.nics[0]
        address = _runtime().addresses.allocate()
        primary.private_ip_address = address
        primary.private_ip_addresses = [{"Primary": True, "PrivateIpAddress": address}]
        primary.public_ip_auto_assign = False
        primary.public_ip = None
        self.associate_public_ip = False

    def terminate(self: Any) -> Any:
        previous_state = original_instance_terminate(self)
        _give_back_subnet_addresses(self)
        return previous_state

    original_run: Any = InstanceBackend.run_instances
    original_stop: Any = InstanceBackend.stop_instances
    original_start: Any = InstanceBackend.start_instances
    original_terminate: Any = InstanceBackend.terminate_instances

    def run_instances(self: Any, *args: Any, **kwargs: Any) -> Any:
        reservation = original_run(self, *args, **kwargs)
        _profile_from_template(self, reservation, kwargs)
        now = _runtime().clock.now()
        for instance in reservation.instances:
            if not hasattr(instance, "kiln_launched_at"):
                instance.kiln_launched_at = now
        dataplane = _runtime().dataplane
        if dataplane is not None:
            for instance in reservation.instances:
                try:
                    dataplane.launch(_launched(self, instance))
                except Exception as exc:  # e.g. an AMI with no root filesystem behind it
                    # As EC2 does when it cannot start an instance: it ends terminated, with the reason.
                    log.warning("instance %s could not be launched: %s", instance.id, exc)
                    instance.terminate()
                    instance.state_reason = StateReason(f"Server.InternalError: {exc}", "Server.InternalError")
                    instance.kiln_launch_error = str(exc)
        return reservation

    def stop_instances(self: Any, instance_ids: list[str]) -> Any:
        result = original_stop(self, instance_ids)
        for instance, _ in result:
            _runtime().targets.stopped(instance.id, True)
        dataplane = _runtime().dataplane
        if dataplane is not None:
            for instance, _ in result:
                dataplane.stop(instance.id)
        return result

    def start_instances(self: Any, instance_ids: list[str]) -> Any:
        result = original_start(self, instance_ids)
        for instance, _ in result:
            _runtime().targets.stopped(instance.id, False)
        dataplane = _runtime().dataplane
        if dataplane is not None:
            for instance, _ in result:
                dataplane.start(instance.id)
        return result

    def terminate_instances(self: Any, instance_ids: list[str]) -> Any:
        result = original_terminate(self, instance_ids)
        dataplane = _runtime().dataplane
        if dataplane is not None:
            for instance, _ in result:
                _halt_in_background(dataplane, instance.id)
        return result

    original_console: Any = General.get_console_output

    def get_console_output(self: Any) -> Any:
        result = original_console(self)
        dataplane = _runtime().dataplane
        if dataplane is not None:
            from moto.core.types import Base64EncodedString

            text = dataplane.console_output(self._get_param("InstanceId"))
            result.result["Output"] = Base64EncodedString.from_raw_string(text)
        return result

    replace(Instance, "prep_nics", prep_nics)
    replace(Instance, "terminate", terminate)
    replace(InstanceBackend, "run_instances", run_instances)
    replace(InstanceBackend, "stop_instances", stop_instances)
    replace(InstanceBackend, "start_instances", start_instances)
    replace(InstanceBackend, "terminate_instances", terminate_instances)
    replace(General, "get_console_output", get_console_output)
