"""The one place a FUSE handler's errors are translated (pyfuse3 lets any other exception end
the whole mount)."""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, Protocol, TypeVar

from pyfuse3 import FUSEError

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_P = ParamSpec("_P")


class CountsRequests(Protocol):
    requests_in_progress: int


def boundary(
    handler: Callable[_P, Coroutine[Any, Any, _T]],
) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """The one place errors are translated: an OSError keeps its errno, anything else is a bug
    that is logged and becomes EIO, so a handler can never take the mount down. It also counts
    the requests in progress (`Passthrough.requests_in_progress`)."""
    name = handler.__name__

    @functools.wraps(handler)
    async def guarded(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        ops: CountsRequests = args[0]  # type: ignore[assignment]
        ops.requests_in_progress += 1
        try:
            return await handler(*args, **kwargs)
        except FUSEError:
            raise
        except OSError as exc:
            raise FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            shown = tuple(
                f"<{len(a)} bytes>" if isinstance(a, bytes | memoryview) and len(a) > 64 else a
                for a in args[1:]
            )
            log.exception("unexpected error in %s%r; answering EIO", name, shown)
            raise FUSEError(errno.EIO) from None
        finally:
            ops.requests_in_progress -= 1

    return guarded
