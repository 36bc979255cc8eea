"""AMI cleanup decisions: what a careful person keeps, and why."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from packaging.version import Version

from release.catalogue import Action, CatalogueImage, Decision, References, decide
from release.model import AmiRef

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def image(n: int, *, region: str = "us-east-1", image_id: str | None = None, state: str = "available",
          app: bool = True) -> CatalogueImage:
    ami = AmiRef(image_id=image_id or f"ami-{n:03d}", name=f"webapp-1.{n}.0", region=region, state=state,
                 created_at=T0 + timedelta(days=n), version=Version(f"1.{n}.0") if app else None,
                 fingerprint=f"fp{n}", validated=True)
    return CatalogueImage(ami, (f"snap-{image_id or n}",))


NONE = References({}, {}, {}, {})
EIGHT = [image(n) for n in range(8)]


def actions(decisions: list[Decision]) -> dict[str, str]:
    return {d.image.ami.image_id: d.action.value for d in decisions}


def test_keeps_the_newest_versions_and_deletes_the_rest() -> None:
    result = actions(decide(EIGHT, NONE, keep=3))
    assert [i for i, a in result.items() if a == "keep"] == ["ami-007", "ami-006", "ami-005"]
    assert sum(a == "delete" for a in result.values()) == 5


@pytest.mark.parametrize(("refs", "kept", "reason"), [
    (References({"ami-001": ("live in prod",)}, {}, {}, {}), "ami-001", "live in prod"),
    (References({"ami-000": ("previous in dev",)}, {}, {}, {}), "ami-000", "previous in dev"),
    (References({}, {"ami-002": ("web-prod v4 (used by web-prod)",)}, {}, {}), "ami-002",
     "launch template web-prod v4 (used by web-prod)"),
    (References({}, {}, {"ami-003": ("i-0abc",)}, {}), "ami-003", "instance i-0abc"),
    (References({}, {}, {}, {"ami-004": ("/webapp/golden",)}), "ami-004", "SSM parameter /webapp/golden"),
])
def test_every_kind_of_reference_keeps_an_image(refs: References, kept: str, reason: str) -> None:
    decisions = {d.image.ami.image_id: d for d in decide(EIGHT, refs, keep=3)}
    assert decisions[kept].action is Action.KEEP
    assert reason in decisions[kept].reasons


def test_a_copy_in_another_region_shares_its_lineage() -> None:
    home = image(1)
    copy = image(1, region="eu-west-1", image_id="ami-eu1")
    refs = References({"ami-001": ("live in prod",)}, {}, {}, {})
    decisions = {d.image.ami.image_id: d for d in decide([*EIGHT, copy], refs, keep=3)}
    assert decisions["ami-eu1"].action is Action.KEEP
    assert decisions["ami-eu1"].reasons == ("copy of ami-001 (live in prod)",)
    assert home.ami.image_id in decisions


def test_pending_images_and_foreign_images_are_left_alone() -> None:
    pending = image(0, image_id="ami-pend", state="pending")
    foreign = image(0, image_id="ami-base", app=False)
    decisions = {d.image.ami.image_id: d for d in decide([pending, foreign, *EIGHT[4:]], NONE, keep=1)}
    assert decisions["ami-pend"].action is Action.KEEP
    assert "ami-base" not in decisions  # not Kiln's: never even considered


def test_rebakes_of_one_version_count_once() -> None:
    rebake = image(7, image_id="ami-007b")
    result = actions(decide([*EIGHT, rebake], NONE, keep=2))
    assert result["ami-007"] == result["ami-007b"] == "keep" and result["ami-006"] == "keep"
    assert result["ami-005"] == "delete"


def test_keep_zero_keeps_only_references() -> None:
    refs = References({"ami-003": ("live in sandbox",)}, {}, {}, {})
    result = actions(decide(EIGHT, refs, keep=0))
    assert [i for i, a in result.items() if a == "keep"] == ["ami-003"]


def foundation(n: int, *, region: str = "us-east-1") -> CatalogueImage:
    ami = AmiRef(image_id=f"ami-f{n:02d}", name=f"webapp-foundation-{n}", region=region, state="available",
                 created_at=T0 + timedelta(days=n), version=None, fingerprint=f"ffp{n}", validated=True,
                 tags={"kiln:layer": "foundation"})
    return CatalogueImage(ami, (f"snap-f{n}",))


def on(app: CatalogueImage, base: CatalogueImage) -> CatalogueImage:
    tags = {**app.ami.tags, "kiln:foundation": base.ami.image_id, "kiln:layer": "app"}
    return CatalogueImage(replace(app.ami, tags=tags), app.snapshot_ids)


def test_a_foundation_stays_while_a_kept_app_image_was_baked_on_it_or_it_is_the_newest() -> None:
    old, middle, newest = foundation(0), foundation(1), foundation(2)
    apps = [on(image(n), old if n < 4 else middle) for n in range(8)]  # nothing baked on the newest yet
    decisions = decide([*apps, old, middle, newest], NONE, keep=3)
    assert actions(decisions)["ami-f00"] == "delete"  # only deleted app images were baked on it
    why = {d.image.ami.image_id: d.reasons for d in decisions}
    assert actions(decisions)["ami-f01"] == "keep" and "foundation of kept ami-007 (1.7.0)" in why["ami-f01"]
    assert actions(decisions)["ami-f02"] == "keep" and "the newest foundation" in why["ami-f02"][0]
    # A reference to an old app image keeps its foundation too.
    refs = References({"ami-001": ("previous in prod",)}, {}, {}, {})
    assert actions(decide([*apps, old, middle, newest], refs, keep=3))["ami-f00"] == "keep"
