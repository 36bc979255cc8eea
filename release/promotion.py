"""How `inv ami.promote` gives another environment the exact AMI that passed. Pure.

- Another account: the source AMI and its snapshots are shared with that account, and the
  target account makes its own copy. Its releases look for AMIs the account owns, and another
  account's tags on a shared AMI are invisible to it, so the copy carries Kiln's tags itself.
  An encrypted source can be copied only when its KMS key lets the target account use it (a
  customer managed key: AWS's default EBS key cannot be shared).
- The same account, another region, or a KMS key of its own: a copy in the target's region.
- The same account and region, no key of its own: the same AMI.
A copy with the source's fingerprint that the target already owns is used again, never doubled.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Promotion:
    share_with: str | None  # the other account the source AMI and its snapshots are shared with
    copy: bool  # the target makes (or already has) its own copy; False: it uses the source AMI
    why: str


def plan_promotion(*, source_region: str, source_account: str, target_region: str, target_account: str,
                   target_kms_key: str | None) -> Promotion:
    if target_account != source_account:
        return Promotion(target_account, True, f"account {target_account} gets a copy of its own")
    if target_region != source_region:
        return Promotion(None, True, f"a copy in {target_region}")
    if target_kms_key:
        return Promotion(None, True, f"a copy encrypted with {target_kms_key}")
    return Promotion(None, False, f"the same AMI: the same account and region ({target_region})")
