"""The systemd units that run the node: either one unit for every module (`tandem unit
MODULE… > /etc/systemd/system/tandem.service`, the API inside it), or one unit per module from
a template (`tandem unit --template > /etc/systemd/system/tandem@.service`, then
`systemctl enable --now tandem@web tandem@db`) beside one API unit (`tandem unit --api >
/etc/systemd/system/tandem-api.service`): a module can then be restarted, or fail, alone.

The node tells systemd each module's state and why (``STATUS=``, shown by `systemctl status`)
and pings its watchdog from its event loop (``WatchdogSec``): a node whose loop hangs is
restarted like one that crashed.

Type=notify: the node says READY=1 once every module has started (serving or following) and
STOPPING=1 on the way out. KillMode=mixed: SIGTERM goes to the node alone, which runs stop_prim,
releases the VIP and unmounts (draining every acknowledged write to the peer) in that order;
only past TimeoutStopSec does everything left get SIGKILL. Restart=on-failure: a node that exits
on an error (a mount process died) comes back, drops the VIP a crash may have left, and rejoins
as the state machine decides.
"""

from __future__ import annotations

import shutil
import sys

from tandem.engine.config.modules import check_name

NODE_UNIT = """[Unit]
Description={description}
After=network-online.target local-fs.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={tandem} node --config-dir {config_dir} --state-dir {state_dir} {arguments}
KillMode=mixed
TimeoutStopSec={stop_seconds}
WatchdogSec={watchdog_seconds}
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
"""
API_UNIT = """[Unit]
Description=Tandem console and HTTP API
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={tandem} api --config-dir {config_dir} --state-dir {state_dir}
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
"""
WATCHDOG_SECONDS = 30  # pinged every 15 s; a hung loop is restarted within 30 s


def _tandem() -> str:
    return shutil.which("tandem") or f"{sys.executable} -m tandem.engine.cli"


def unit_text(modules: list[str], config_dir: str, state_dir: str, stop_seconds: int = 300) -> str:
    for module in modules:
        check_name(module)
    names = " ".join(modules)
    return _node_unit(
        f"Tandem high-availability node ({names})", names, config_dir, state_dir, stop_seconds
    )


def template_text(config_dir: str, state_dir: str, stop_seconds: int = 300) -> str:
    # one module per instance; the console runs in tandem-api.service, not in each instance
    return _node_unit(
        "Tandem high-availability module %i", "--api none %i", config_dir, state_dir, stop_seconds
    )


def _node_unit(
    description: str, arguments: str, config_dir: str, state_dir: str, stop_seconds: int
) -> str:
    return NODE_UNIT.format(
        description=description,
        arguments=arguments,
        tandem=_tandem(),
        config_dir=config_dir,
        state_dir=state_dir,
        stop_seconds=stop_seconds,
        watchdog_seconds=WATCHDOG_SECONDS,
    )


def api_unit_text(config_dir: str, state_dir: str) -> str:
    return API_UNIT.format(tandem=_tandem(), config_dir=config_dir, state_dir=state_dir)
