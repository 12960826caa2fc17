"""What ended a group of tasks: trio reports failures as (nested) exception groups; policies
and messages want the individual exceptions."""

from __future__ import annotations


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc`` (itself, if it is not a group), in order."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]
