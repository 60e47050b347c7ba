"""The one exception type tasklens raises for bad input.

Every message names the problem and the fix, so a user can act on it without
reading tasklens's source.
"""


class TasklensError(ValueError):
    """Bad input to tasklens: the message says what is wrong and how to fix it."""


def check_choice(what: str, value, choices) -> None:
    """Raise a `TasklensError` naming the valid choices when ``value`` is not one of them."""
    if value not in choices:
        raise TasklensError(f"Unknown {what} {value!r}; choose one of {list(choices)}")


def check_seed(seed, what: str = "seed") -> int:
    """``seed`` if it is a whole number from 0 to 2**63 - 1 (what numpy and torch take), else a
    `TasklensError` naming it."""
    import numbers

    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**63:
        raise TasklensError(f"{what} must be a whole number from 0 to 2**63 - 1, got {seed!r}")
    return int(seed)


class TasklensWarning(UserWarning):
    """Something tasklens did may not be what the user expects (prompts dropped, a fallback taken)."""
