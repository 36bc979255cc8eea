"""GET /load?number=N: the CPU-heavy prime check, and the bounds that keep it to ~a second."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from flask import Flask
from webapp.primes import MAX_NUMBER, is_prime


def sieve(limit: int) -> set[int]:
    composite = bytearray(limit + 1)
    for n in range(2, int(limit**0.5) + 1):
        if not composite[n]:
            composite[n * n :: n] = b"\x01" * len(composite[n * n :: n])
    return {n for n in range(2, limit + 1) if not composite[n]}


def test_is_prime_agrees_with_a_sieve() -> None:
    primes = sieve(20_000)
    assert {n for n in range(20_001) if is_prime(n)} == primes


@pytest.mark.parametrize(
    ("number", "prime"),
    [(0, False), (1, False), (2, True), (3, True), (4, False), (25, False), (97, True), (7919 * 7927, False)],
)
def test_load_answers_prime_or_not(make_app: Callable[..., Flask], number: int, prime: bool) -> None:
    response = make_app().test_client().get(f"/load?number={number}")
    assert response.status_code == 200
    assert response.get_json() == {"number": number, "prime": prime}


def test_the_worst_case_stays_under_a_second_or_so(make_app: Callable[..., Flask]) -> None:
    largest_prime_below_bound = 99_999_999_999_973
    started = time.monotonic()
    response = make_app().test_client().get(f"/load?number={largest_prime_below_bound}")
    elapsed = time.monotonic() - started
    assert response.get_json() == {"number": largest_prime_below_bound, "prime": True}
    assert elapsed < 2.0  # ~0.3 s on an idle core; room for a busy shared machine


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "number is required: /load?number=N"),
        ("?n=7", "number is required: /load?number=N"),
        ("?number=", "number must be a whole number from 0 to 100000000000000, got ''"),
        ("?number=abc", "number must be a whole number from 0 to 100000000000000, got 'abc'"),
        ("?number=-7", "number must be a whole number from 0 to 100000000000000, got '-7'"),
        ("?number=7.0", "number must be a whole number from 0 to 100000000000000, got '7.0'"),
        ("?number=1e3", "number must be a whole number from 0 to 100000000000000, got '1e3'"),
        ("?number=" + "9" * 5000, "number must be a whole number from 0 to 100000000000000, got '" + "9" * 40 + "'"),
        (
            f"?number={MAX_NUMBER + 1}",
            f"number must be at most {MAX_NUMBER} (about a second of CPU), got {MAX_NUMBER + 1}",
        ),
    ],
)
def test_load_refuses_bad_numbers(make_app: Callable[..., Flask], query: str, message: str) -> None:
    response = make_app().test_client().get("/load" + query)
    assert response.status_code == 400
    assert response.get_json() == {"error": message}


def test_the_bound_itself_is_accepted(make_app: Callable[..., Flask]) -> None:
    response = make_app().test_client().get(f"/load?number={MAX_NUMBER}")
    assert response.get_json() == {"number": MAX_NUMBER, "prime": False}
