"""The one exception type tasklens raises for bad input.

Every message names the problem and the fix, so a user can act on it without
reading tasklens's source.
"""


class TasklensError(ValueError):
    """Bad input to tasklens: the message says what is wrong and how to fix it."""
