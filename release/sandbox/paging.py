"""Pages of a listing, handed out the way AWS does: a page size and an opaque NextToken.

The contract every paginated AWS call keeps, and the only one a client may rely on: a response
that leaves items out carries a NextToken, and the token, sent back with the same request, yields
the items after the ones already returned; the last page has none. A client must follow the token
whatever page size it asked for (or did not ask for).

Here a listing is ordered by a key (a tuple: the version number, the order refreshes started in, a
creation time and id), and the token names the query it belongs to and the key of the last item
returned. The next page is whatever now sorts after that key, so an item created or deleted
between two pages neither repeats nor hides another one. A token from another query, or one that
was never issued, is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# Request parameters that do not change what is listed, only how much of it a response holds.
NOT_THE_QUERY = frozenset({"Action", "Version", "NextToken", "MaxResults", "MaxRecords", "DryRun"})


class PageTokenError(ValueError):
    """A NextToken this listing did not issue."""


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_token: str | None


def query_of(operation: str, params: Mapping[str, Any]) -> str:
    """A short fingerprint of what a request lists (its parameters but the paging ones)."""
    kept = {k: v for k, v in params.items() if k not in NOT_THE_QUERY}
    text = json.dumps([operation, kept], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def page_size(given: Any, *, default: int, low: int, high: int, invalid: Callable[[str], Exception]) -> int:
    """The page size asked for (`default` when none), refused outside low..high."""
    if given is None or given == "":
        return default
    try:
        size = int(given)
    except (TypeError, ValueError):
        raise invalid(f"Maximum results allowed are between {low} and {high}") from None
    if not low <= size <= high:
        raise invalid(f"Maximum results allowed are between {low} and {high}")
    return size


def paginate(
    items: Iterable[T],
    *,
    key: Callable[[T], tuple[Any, ...]],
    size: int,
    token: str | None,
    query: str,
) -> Page[T]:
    """The page of `items` (ordered by `key`) that `token` asks for, `size` items at most."""
    ordered = sorted(items, key=key)
    if token:
        after = _decode(token, query)
        ordered = [item for item in ordered if key(item) > after]
    chosen = ordered[:size]
    more = len(ordered) > len(chosen)
    return Page(chosen, _encode(query, key(chosen[-1])) if more and chosen else None)


def _encode(query: str, key: Sequence[Any]) -> str:
    raw = json.dumps({"q": query, "k": list(key)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(token: str, query: str) -> tuple[Any, ...]:
    try:
        padded = token + "=" * (-len(token) % 4)
        body = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(body, dict) or body.get("q") != query or not isinstance(body.get("k"), list):
            raise PageTokenError(token)
        return tuple(body["k"])
    except (binascii.Error, UnicodeError, ValueError) as exc:
        raise PageTokenError(token) from exc


MAX_RECORDS_REFRESHES = 100  # DescribeInstanceRefreshes: "The default value is 50 and the maximum value is 100."
DEFAULT_RECORDS_REFRESHES = 50


def instance_refreshes(newest_first: list[dict[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
    """DescribeInstanceRefreshes' result for one page of a group's refreshes (newest first).

    A refresh's key is its place counted from the oldest, which a newer refresh does not change:
    the pages of a listing stay consistent while refreshes start."""
    from release.sandbox.wire import WireError

    def invalid(_message: str) -> Exception:
        return WireError(
            "ValidationError",
            f"1 validation error detected: Value '{params.get('MaxRecords')}' at 'maxRecords' failed to satisfy "
            f"constraint: Member must have value between 1 and {MAX_RECORDS_REFRESHES}",
        )

    size = page_size(
        params.get("MaxRecords"), default=DEFAULT_RECORDS_REFRESHES, low=1, high=MAX_RECORDS_REFRESHES, invalid=invalid
    )
    total = len(newest_first)
    place = {id(r): total - n for n, r in enumerate(newest_first)}  # 1 = the oldest
    try:
        page = paginate(
            newest_first,
            key=lambda r: (-place[id(r)],),
            size=size,
            token=params.get("NextToken"),
            query=query_of("DescribeInstanceRefreshes", params),
        )
    except PageTokenError:
        raise WireError("InvalidNextToken", "The token is invalid.") from None
    result: dict[str, Any] = {"InstanceRefreshes": page.items}
    if page.next_token:
        result["NextToken"] = page.next_token
    return result
