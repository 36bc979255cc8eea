"""A real sandbox server for the whole session, reached through boto3 like any AWS client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from aws_sandbox_kit import Clients, Kit, unique

from release.sandbox import server_process
from release.sandbox.provision import SeedNames, SeedResources, provision
from release.sandbox.server_process import SandboxInfo

REGION = "us-east-1"


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxInfo]:
    state_dir = tmp_path_factory.mktemp("sandbox")
    info = server_process.start(state_dir, time_scale=0.1)
    try:
        yield info
    finally:
        server_process.stop(state_dir)


@pytest.fixture(scope="session")
def client(sandbox: SandboxInfo) -> Clients:
    made: dict[str, Any] = {}

    def get(service: str, region: str = REGION) -> Any:
        key = f"{service}/{region}"
        if key not in made:
            made[key] = boto3.client(
                service,
                region_name=region,
                endpoint_url=sandbox.endpoint,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
        return made[key]

    return get


@pytest.fixture(scope="session")
def kit(sandbox: SandboxInfo, client: Clients) -> Kit:
    return Kit(sandbox, client)


@pytest.fixture
def seed_names() -> SeedNames:
    """Unique names for one test's copy of the seed architecture (the session server is shared)."""
    name = unique("web")
    return SeedNames(
        asg=name,
        launch_template=name,
        target_group=name,
        load_balancer=name,
        table=f"{name}-ledger",
        secret=f"kiln/{name}/webapp",
        alarm_target_5xx=f"{name}-target-5xx",
        alarm_unhealthy_hosts=f"{name}-unhealthy-hosts",
        network=name,
    )


@pytest.fixture
def seed(client: Clients, seed_names: SeedNames) -> SeedResources:
    return provision(lambda service, region: client(service, region), REGION, seed_names)
