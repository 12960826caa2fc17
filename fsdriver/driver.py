"""Which implementation serves the FUSE requests: ``TANDEM_FSDRIVER=python|native``.

``python`` is the reference (pyfuse3 on the trio loop, every request in Python); ``native``
is the C data plane (``native/dataplane.c``: C threads answer the hot requests, the cold ones
reach the same Python handlers). Asking for the native driver where it is not built is an
error, never a silent fallback: a test or a benchmark that believes it measures C must not
measure Python.
"""

from __future__ import annotations

import os

ENVIRONMENT_VARIABLE = "TANDEM_FSDRIVER"
DRIVERS = ("python", "native")
DEFAULT_DRIVER = "python"


class DriverUnavailable(RuntimeError):
    """The driver asked for does not exist or is not built here; the message is for a user."""


def native_built() -> bool:
    try:
        from tandem.native import _dataplane  # type: ignore[attr-defined]  # noqa: F401
    except ImportError:
        return False
    return True


def chosen_driver() -> str:
    wanted = os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower() or DEFAULT_DRIVER
    if wanted not in DRIVERS:
        raise DriverUnavailable(
            f"{ENVIRONMENT_VARIABLE}={wanted!r}: expected one of {', '.join(DRIVERS)}"
        )
    if wanted == "native" and not native_built():
        raise DriverUnavailable(
            f"{ENVIRONMENT_VARIABLE}=native but the native data plane is not built "
            "(reinstall with a C compiler and libfuse3-dev present)"
        )
    return wanted
