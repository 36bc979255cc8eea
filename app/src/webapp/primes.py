"""The CPU-heavy part of the app: a deliberately naive prime check, to generate load."""

from __future__ import annotations

# Trial division costs about sqrt(N)/3 steps: the largest prime below this bound takes ~0.26 s
# of one core on the 2-core sandbox machine, so one request cannot hog a worker for long.
MAX_NUMBER = 10**14


def is_prime(number: int) -> bool:
    """Trial division by 2, 3 and every 6k±1 up to the square root."""
    if number < 2:
        return False
    if number % 2 == 0:
        return number == 2
    if number % 3 == 0:
        return number == 3
    divisor = 5
    while divisor * divisor <= number:
        if number % divisor == 0 or number % (divisor + 2) == 0:
            return False
        divisor += 6
    return True
