"""The commands a module's control socket answers (`tandem start|stop|restart|prim|second|swap
|state`): each becomes an event of the state machine, stepped in order with every other event;
what the machine refuses comes back to the operator as one line."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from tandem.engine.control.channel import ControlError, Handler
from tandem.engine.failover.module_state import (
    Module,
    ModuleEvent,
    Prim,
    Second,
    Start,
    State,
    Stop,
    Swap,
)
from tandem.engine.failover.store import ModuleStore

Ask = Callable[[ModuleEvent], Awaitable[list[str]]]


def module_commands(
    ask: Ask,
    module: Callable[[], Module],
    store: ModuleStore,
    status: Callable[[], dict[str, Any]],
    start_event: Callable[[], Awaitable[Start]],
) -> dict[str, Handler]:
    async def carry_out(event: ModuleEvent) -> dict[str, Any]:
        refusals = await ask(event)
        if refusals:
            raise ControlError("; ".join(refusals))
        return status()

    async def state(_: dict[str, Any]) -> dict[str, Any]:
        return status()

    async def start(_: dict[str, Any]) -> dict[str, Any]:
        if module().state is not State.STOP:
            raise ControlError(f"already started ({module().state.value})")
        return await carry_out(await start_event())

    async def stop(_: dict[str, Any]) -> dict[str, Any]:
        answer = await carry_out(Stop())
        store.stopped(module())
        return answer

    async def restart(_: dict[str, Any]) -> dict[str, Any]:
        await stop({})
        return await start({})

    async def prim(request: dict[str, Any]) -> dict[str, Any]:
        return await carry_out(Prim(force=request.get("force") is True))

    async def second(_: dict[str, Any]) -> dict[str, Any]:
        return await carry_out(Second())

    async def swap(_: dict[str, Any]) -> dict[str, Any]:
        return await carry_out(Swap())

    return {
        "state": state,
        "start": start,
        "stop": stop,
        "restart": restart,
        "prim": prim,
        "second": second,
        "swap": swap,
    }
