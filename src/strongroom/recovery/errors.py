"""The one exception of the recovery package."""

from __future__ import annotations


class RecoveryError(Exception):
    """A recovery share, custodian key or combination is unusable.

    The message is meant for the person at the keyboard: it says what is wrong and,
    where there is something to do about it, what.
    """
