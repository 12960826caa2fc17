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

    async def asking(request: dict[str, Any]) -> dict[str, Any]:
        """Answers once what the mount needs from the node changed since ``seen`` (the
        ``changes`` it last answered), or after ``within`` seconds (at most 5); at once
        without ``seen``."""
        seen, within = request.get("seen"), request.get("within")
        if not isinstance(seen, int) or isinstance(seen, bool):
            return replicator.asking_now()
        wait = min(float(within), 5.0) if isinstance(within, int | float) else 5.0
        return await replicator.asking_changes(seen, max(wait, 0.0))

    async def permit(request: dict[str, Any]) -> dict[str, Any]:
        episode, why = request.get("episode"), request.get("why")
        if not isinstance(episode, int) or not isinstance(why, str):
            raise ControlError('permit needs "episode" (a number) and "why" (a text)')
        return {"message": replicator.permit(episode, why)}

    return {
        "status": status,
        "verify": verify,
        "resync": resync,
        "fence": fence,
        "asking": asking,
        "permit": permit,
    }


def secondary_commands(receiver: Receiver, directory: str) -> dict[str, Handler]:
    async def status(_: dict[str, Any]) -> dict[str, Any]:
        return {"directory": directory, **receiver.status()}

    async def elsewhere(_: dict[str, Any]) -> dict[str, Any]:
        raise ControlError(
            "this node is the secondary of this module: run the command on the primary"
        )

    return {name: elsewhere for name in ("verify", "resync", "fence", "asking", "permit")} | {
        "status": status
    }
