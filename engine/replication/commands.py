"""The commands each replication stream's process answers on its control socket
(`tandem.engine.control.channel`): status everywhere; verify and resync on the primary, which
owns both the comparison and the resync."""

from __future__ import annotations

from typing import Any

from tandem.engine.control.channel import ControlError, Handler
from tandem.engine.replication.receiver import Receiver
from tandem.engine.replication.replicator import Refused, Replicator


def primary_commands(replicator: Replicator, directory: str) -> dict[str, Handler]:
    async def status(_: dict[str, Any]) -> dict[str, Any]:
        return {"directory": directory, **replicator.status()}

    async def verify(_: dict[str, Any]) -> dict[str, Any]:
        try:
            return await replicator.verify()
        except Refused as exc:
            raise ControlError(str(exc)) from None

    async def resync(request: dict[str, Any]) -> dict[str, Any]:
        if request.get("full") is not True:
            raise ControlError("only a full resync can be requested (resyncs start by themselves)")
        return {"message": replicator.request_full_resync()}

    async def fence(_: dict[str, Any]) -> dict[str, Any]:
        return {"message": replicator.fence()}

    return {"status": status, "verify": verify, "resync": resync, "fence": fence}


def secondary_commands(receiver: Receiver, directory: str) -> dict[str, Handler]:
    async def status(_: dict[str, Any]) -> dict[str, Any]:
        return {"directory": directory, **receiver.status()}

    async def elsewhere(_: dict[str, Any]) -> dict[str, Any]:
        raise ControlError(
            "this node is the secondary of this module: run the command on the primary"
        )

    return {"status": status, "verify": elsewhere, "resync": elsewhere, "fence": elsewhere}
