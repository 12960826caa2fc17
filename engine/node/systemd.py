"""The systemd unit that runs the node process: `tandem unit MODULE… > /etc/systemd/system/
tandem.service`, then `systemctl enable --now tandem`.

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

UNIT = """[Unit]
Description=Tandem high-availability node ({modules})
After=network-online.target local-fs.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={tandem} node --config-dir {config_dir} --state-dir {state_dir} {modules}
KillMode=mixed
TimeoutStopSec={stop_seconds}
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
"""


def unit_text(modules: list[str], config_dir: str, state_dir: str, stop_seconds: int = 300) -> str:
    for module in modules:
        check_name(module)
    tandem = shutil.which("tandem") or f"{sys.executable} -m tandem.engine.cli"
    return UNIT.format(
        modules=" ".join(modules),
        tandem=tandem,
        config_dir=config_dir,
        state_dir=state_dir,
        stop_seconds=stop_seconds,
    )
