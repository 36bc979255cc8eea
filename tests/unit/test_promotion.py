"""Which AMI `inv ami.promote` gives the target environment (release/promotion.py)."""

from __future__ import annotations

import pytest

from release.promotion import plan_promotion

DEV, STAGE = "111111111111", "222222222222"


@pytest.mark.parametrize(("target_region", "target_account", "kms", "share_with", "copy"), [
    ("eu-central-1", DEV, None, None, False),  # same account and region: the same AMI
    ("eu-west-1", DEV, None, None, True),  # another region: a copy there
    ("eu-central-1", DEV, "arn:aws:kms:eu-central-1:111111111111:key/k", None, True),  # its own key: re-encrypted
    ("eu-central-1", STAGE, None, STAGE, True),  # another account, same region: shared, then its own copy
    ("us-east-1", STAGE, "alias/stage", STAGE, True),
])
def test_a_promotion_shares_and_copies_what_the_target_needs(target_region: str, target_account: str,
                                                             kms: str | None, share_with: str | None,
                                                             copy: bool) -> None:
    how = plan_promotion(source_region="eu-central-1", source_account=DEV, target_region=target_region,
                         target_account=target_account, target_kms_key=kms)
    assert (how.share_with, how.copy) == (share_with, copy)
    assert how.why  # said to the user


def test_another_account_always_gets_a_copy_it_owns() -> None:
    """Its releases list the AMIs it owns, and a shared AMI's tags are invisible to it."""
    how = plan_promotion(source_region="eu-central-1", source_account=DEV, target_region="eu-central-1",
                         target_account=STAGE, target_kms_key=None)
    assert how.copy and how.share_with == STAGE and STAGE in how.why
