"""`tandem lab`: a throwaway two-node cluster on this one machine.

Each node gets its own network namespace (one veth into a bridge that lives in a third, "switch"
namespace, so the host's own network is never touched), and at every boot fresh mount and PID
namespaces: the replicated directory has the same path on both nodes, backed by each node's own
copy, and killing the node's first process kills all of it at once. Everything lives under the
lab directory (default /var/lib/tandem-lab) and is removed by `tandem lab down`.

Addresses: node a 198.18.0.1, node b 198.18.0.2, a client 198.18.0.3 (network only: no Tandem
runs there), and the switch 198.18.0.254, which doubles as the split-brain witness (a router
both nodes normally reach) (/24, RFC 2544 range). Faults: a cut cable (`cut`/`heal NODE`), and
a partition between the two nodes in which each side keeps or loses the witness as asked
(`partition --witness a|b|both|none`, `heal`), made of nftables rules on the switch's bridge.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tandem.engine.api.users import set_password, users_file
from tandem.engine.config.paths import (
    CONFIG_DIR_VARIABLE,
    DEFAULT_API_PORT,
    STATE_DIR_VARIABLE,
    module_socket,
)
from tandem.engine.control.channel import ControlError, ask
from tandem.fsdriver.mount import mounts_at

DEFAULT_LAB_DIR = "/var/lib/tandem-lab"
MODULE = "demo"
NODES = {"a": "198.18.0.1", "b": "198.18.0.2"}
SWITCH_ADDRESS = "198.18.0.254"  # also the witness
CLIENT = "client"
CLIENT_ADDRESS = "198.18.0.3"
PARTITION_TABLE = "tandem_lab_partition"
IMPAIR_TABLE = "tandem_lab_impair"
DELAY_TABLE = "tandem_lab_delay"
RELAY_PORT = 17400  # where a node's delaying relay listens (`impair delay`)
RELAY_MARK = 0x7461  # the relay's own packets: not redirected to itself
DELAY = 0.03  # seconds each way
MIN_DISK_MIB = 16
FILLER = "filler"  # beside a node's copy, on its own disk: what `fill` writes
VIP = "198.18.0.100"
APP_PORT = 7000
SETTLE_TIMEOUT = 60.0
APP_NAME = "tandem-demoapp"  # its process name, for the process checker
START_PRIM = """#!/bin/sh
# the lab's demo application: a key-value service on port {port}, data in the replicated directory
setsid {python} -m tandem.engine.lab.demoapp serve {shared} {port} --name {name} \\
    >> {out} 2>&1 < /dev/null &
echo $! > {pidfile}
"""
STOP_PRIM = """#!/bin/sh
pid=$(cat {pidfile} 2>/dev/null) || exit 0
rm -f {pidfile}
# a pid from an earlier boot may name another process now: only ever stop the demo app
grep -q demoapp /proc/$pid/cmdline 2>/dev/null || exit 0
kill $pid
while kill -0 $pid 2>/dev/null; do sleep 0.02; done
"""
PREFIX = 24
FIRST_ROLES = {"a": "primary", "b": "secondary"}
BOOT_TIMEOUT = 30.0
API_PORT = DEFAULT_API_PORT  # each node's console and API, inside its namespace
CONSOLE_PORTS = {"a": 9453, "b": 9454}  # on this machine's loopback, through the relay
CONSOLE_USER = "admin"


class LabError(Exception):
    pass


def _run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise LabError(f"{' '.join(command)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _nft(netns: str, ruleset: str) -> None:
    done = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "-f", "-"],
        input=ruleset,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise LabError(f"nft: {done.stderr.strip()}")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # a zombie has exited: it only waits for its parent to reap it
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before or while we read
        return False


@dataclass(frozen=True)
class Lab:
    directory: Path

    @classmethod
    def at(cls, directory: str | None) -> Lab:
        return cls(Path(os.path.abspath(directory or DEFAULT_LAB_DIR)))

    # -- names and paths --------------------------------------------------------------------

    @property
    def tag(self) -> str:
        if str(self.directory) == DEFAULT_LAB_DIR:
            return "lab"
        return "lab" + hashlib.sha256(str(self.directory).encode()).hexdigest()[:6]

    def netns(self, node: str) -> str:
        return f"tandem-{self.tag}-{node}"

    @property
    def shared_path(self) -> Path:
        """The replicated directory: the same path on both nodes, each with its own copy."""
        return self.directory / "app"

    def node_dir(self, node: str) -> Path:
        return self.directory / "nodes" / node

    @property
    def command(self) -> str:
        """How to name this lab on the command line: hints must work as printed."""
        if self.directory == Path(DEFAULT_LAB_DIR):
            return "tandem lab"
        return f"tandem lab --dir {shlex.quote(str(self.directory))}"

    def log_path(self, node: str) -> Path:
        return self.node_dir(node) / "node.log"

    def config_dir(self, node: str) -> Path:
        return self.node_dir(node) / "etc"

    def state_dir(self, node: str) -> Path:
        return self.node_dir(node) / "state"

    @property
    def _state_file(self) -> Path:
        return self.directory / "lab.json"

    def check_up(self) -> None:
        """A LabError (how to start one) unless a lab is up here."""
        self._state()

    def _state(self) -> dict[str, object]:
        try:
            state: dict[str, object] = json.loads(self._state_file.read_text())
        except FileNotFoundError:
            raise LabError(
                f"no lab in {self.directory} (start one with: {self.command} up)"
            ) from None
        return state

    def _save(self, state: dict[str, object]) -> None:
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self._state_file)

    def _check_node(self, node: str) -> None:
        if node not in NODES:
            raise LabError(f"no node {node!r} in the lab (nodes: {', '.join(NODES)})")

    def init_pid(self, node: str) -> int | None:
        self._check_node(node)
        pids = self._state().get("pids", {})
        assert isinstance(pids, dict)
        pid = pids.get(node)
        return pid if isinstance(pid, int) and _alive(pid) else None

    # -- up / down --------------------------------------------------------------------------

    def up(
        self,
        ack: str = "applied",
        timeout: float = 5.0,
        static: bool = False,
        sync: str = "write",
        heartbeat: tuple[float, float] | None = None,
        disk_mib: int | None = None,
    ) -> str:
        """``heartbeat``: (interval, timeout) instead of the defaults; ``disk_mib``: each node's
        copy on a filesystem of its own of that size, which `fill` can make full."""
        if self._state_file.exists():
            raise LabError(f"a lab is already up in {self.directory} ({self.command} down first)")
        if disk_mib is not None and disk_mib < MIN_DISK_MIB:
            raise LabError(f"--disk: at least {MIN_DISK_MIB} MiB, not {disk_mib}")
        if self.directory.exists() and any(self.directory.iterdir()):
            raise LabError(f"{self.directory} exists and is not empty; choose another --dir")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)
        self._save(
            {
                "ack": ack,
                "sync": sync,
                "timeout": timeout,
                "pids": {},
                "roles": dict(FIRST_ROLES),
                "managed": not static,
                "disk_mib": disk_mib,
            }
        )
        try:
            self._network_up()
            self.shared_path.mkdir()
            secret = secrets.token_hex(32).encode()
            for node in NODES:
                self._provision(node, secret, ack, sync, timeout, not static, heartbeat)
                self._make_copy(node, disk_mib)
            for node in ("b", "a"):  # the secondary first, so the primary finds it listening
                self.start(node)
            self._console_relay_up()
            if not static:
                self.settle()
        except BaseException:
            self.down()
            raise
        return self.describe()

    def _network_up(self) -> None:
        switch = self.netns("sw")
        _run("ip", "netns", "add", switch)
        _run("ip", "-n", switch, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", switch, "addr", "add", f"{SWITCH_ADDRESS}/{PREFIX}", "dev", "br0")
        _run("ip", "-n", switch, "link", "set", "br0", "up")
        for node, address in {**NODES, CLIENT: CLIENT_ADDRESS}.items():
            netns = self.netns(node)
            _run("ip", "netns", "add", netns)
            _run(
                "ip",
                "-n",
                switch,
                "link",
                "add",
                "name",
                f"to-{node}",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
            )
            _run("ip", "-n", switch, "link", "set", "eth0", "netns", netns)
            _run("ip", "-n", switch, "link", "set", f"to-{node}", "master", "br0", "up")
            _run("ip", "-n", netns, "addr", "add", f"{address}/{PREFIX}", "dev", "eth0")
            _run("ip", "-n", netns, "link", "set", "eth0", "up")
            _run("ip", "-n", netns, "link", "set", "lo", "up")

    def _provision(
        self,
        node: str,
        secret: bytes,
        ack: str,
        sync: str,
        timeout: float,
        managed: bool,
        heartbeat: tuple[float, float] | None,
    ) -> None:
        config = self.config_dir(node)
        (config / "modules").mkdir(parents=True)
        secret_file = config / "secret"
        secret_file.touch(0o600)
        secret_file.write_bytes(secret)
        nodes = "\n".join(f'{name} = "{address}"' for name, address in NODES.items())
        failover = ""
        if managed:
            failover = (
                f'default_primary = "a"\nvip = "{VIP}/{PREFIX}"\nwitness = ["{SWITCH_ADDRESS}"]\n'
                f"maxloop = 3\nloop_interval = 300\n"
                + (
                    f"heartbeat_interval = {heartbeat[0]!r}\nheartbeat_timeout = {heartbeat[1]!r}\n"
                    if heartbeat
                    else ""
                )
                + f'[[checker]]\nkind = "process"\ntarget = "{APP_NAME}"\ninterval = 1.0\n'
            )
            scripts = config / "modules" / MODULE
            scripts.mkdir()
            where = {
                "python": sys.executable,
                "shared": self.shared_path,
                "port": APP_PORT,
                "out": self.node_dir(node) / "demoapp.out",
                "pidfile": self.node_dir(node) / "demoapp.pid",
                "name": APP_NAME,
            }
            for name, text in (("start_prim", START_PRIM), ("stop_prim", STOP_PRIM)):
                (scripts / name).write_text(text.format(**where))
                (scripts / name).chmod(0o755)
        password = self._console_password()
        set_password(users_file(config), CONSOLE_USER, password, "admin")
        (config / "modules" / f"{MODULE}.toml").write_text(
            f'directories = ["{self.shared_path}"]\n'
            f'ack = "{ack}"\nsync = "{sync}"\n'
            f"timeout = {timeout!r}\n{failover}\n[nodes]\n{nodes}\n"
        )

    def _make_copy(self, node: str, disk_mib: int | None) -> None:
        data = self.node_dir(node) / "data"
        if disk_mib is None:
            data.mkdir()
            data.chmod(0o755)
            return
        disk = self._disk(node)
        disk.mkdir()
        size = f"size={disk_mib}m,mode=0755"
        _run("mount", "-t", "tmpfs", "-o", size, f"tandem-{self.tag}-{node}", str(disk))
        (disk / "data").mkdir(mode=0o755)
        data.symlink_to("disk/data")  # the node binds it over the shared path

    def _disk(self, node: str) -> Path:
        return self.node_dir(node) / "disk"

    @property
    def has_disks(self) -> bool:
        return bool(self._state().get("disk_mib"))

    def fill(self, node: str) -> None:
        """Make the filesystem of the node's copy full (a file beside the copy takes every
        free byte); `unfill` frees it. Needs a lab made with a disk of its own per node."""
        self._check_node(node)
        if not self.has_disks:
            raise LabError(
                f"this lab's copies share the host's disk: `{self.command} up --disk MIB`"
            )
        filler = self._disk(node) / FILLER
        with open(filler, "ab") as out:
            for chunk in (4 << 20, 64 << 10, 4 << 10):
                while True:
                    try:
                        os.posix_fallocate(out.fileno(), os.fstat(out.fileno()).st_size, chunk)
                    except OSError:
                        break

    def unfill(self, node: str) -> None:
        self._check_node(node)
        (self._disk(node) / FILLER).unlink(missing_ok=True)

    def down(self) -> None:
        if not self._state_file.exists() and not any(
            Path("/run/netns", self.netns(n)).exists() for n in (*NODES, CLIENT, "sw")
        ):
            raise LabError(f"no lab in {self.directory}")
        if self._state_file.exists():
            self.mend()
            for node in NODES:
                self.kill(node)
            self._console_relay_down()
        for name in (*NODES, CLIENT, "sw"):
            if Path("/run/netns", self.netns(name)).exists():
                _run("ip", "netns", "delete", self.netns(name))
        # nodes mount only inside their own namespaces; this catches anything left by hand
        while mounts_at(str(self.shared_path)):
            subprocess.run(["umount", "-l", str(self.shared_path)], check=False)
        for node in NODES:
            while mounts_at(str(self._disk(node))):
                subprocess.run(["umount", "-l", str(self._disk(node))], check=False)
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- the console ----------------------------------------------------------------------

    def _console_password(self) -> str:
        path = self.directory / "console-password"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(12))
        return path.read_text().strip()

    def _console_relay_up(self) -> None:
        ports = {node: _free_port(wanted) for node, wanted in CONSOLE_PORTS.items()}
        pairs = [f"127.0.0.1:{ports[n]}={NODES[n]}:{API_PORT}" for n in NODES]
        namespace = f"/run/netns/{self.netns(CLIENT)}"
        relay = subprocess.Popen(
            [sys.executable, "-m", "tandem.engine.lab.console_relay", namespace, *pairs],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            text=True,
        )
        assert relay.stdout is not None
        said = relay.stdout.readline().strip()
        if said != "relaying":
            relay.kill()
            relay.wait()
            raise LabError(f"the console relay did not start: {said or relay.wait()}")
        relay.stdout.close()
        state = self._state()
        state["console_ports"] = ports
        state["console_relay"] = relay.pid
        self._save(state)

    def _console_relay_down(self) -> None:
        pid = self._state().get("console_relay")
        if not isinstance(pid, int):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            return
        if b"console_relay" in cmdline:  # a pid from another boot may name another process
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)

    def console_url(self, node: str) -> str:
        ports = self._state().get("console_ports")
        if not isinstance(ports, dict):
            raise LabError("this lab has no console relay")
        return f"https://127.0.0.1:{ports[node]}/"

    # -- nodes ------------------------------------------------------------------------------

    def start(self, node: str, role: str | None = None) -> None:
        self._check_node(node)
        if self.init_pid(node) is not None:
            raise LabError(f"node {node} is already running")
        state = self._state()
        roles = state["roles"]
        assert isinstance(roles, dict)
        managed = state.get("managed") is True
        if role is not None:
            if managed:
                raise LabError(
                    f"this lab fails over: roles are elected ({self.command} up --static)"
                )
            roles[node] = role
        assignment = MODULE if managed else f"{MODULE}={roles[node]}"
        command = [
            "nsenter",
            f"--net=/run/netns/{self.netns(node)}",
            "--",
            "unshare",
            "--mount-proc",
            "--pid",
            "--fork",
            "--kill-child",
            "--propagation",
            "private",
            "--",
            sys.executable,
            "-m",
            "tandem.engine.lab.labnode",
            str(self.node_dir(node) / "data"),
            str(self.shared_path),
            sys.executable,
            "-m",
            "tandem.engine.cli",
            "node",
            "--config-dir",
            str(self.config_dir(node)),
            "--state-dir",
            str(self.state_dir(node)),
            "--node",
            node,
            assignment,
        ]
        log_path = self.log_path(node)
        with open(log_path, "ab") as log:
            role_text = "with failover" if managed else f"as {roles[node]}"
            log.write(f"--- boot {time.strftime('%Y-%m-%d %H:%M:%S')} {role_text}\n".encode())
            log.flush()
            launcher = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        init = self._await_init(launcher)
        pids = state["pids"]
        assert isinstance(pids, dict)
        pids[node] = init
        self._save(state)
        self._await_ready(node, launcher, log_path.stat().st_size)

    def _await_init(self, launcher: subprocess.Popen[bytes]) -> int:
        children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children")
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            if launcher.poll() is not None:
                raise LabError(f"the node could not boot (exit code {launcher.returncode})")
            try:
                found = children.read_text().split()
            except FileNotFoundError:
                found = []
            if found:
                return int(found[0])
            time.sleep(0.01)
        raise LabError("the node did not boot")

    def _await_ready(self, node: str, launcher: subprocess.Popen[bytes], since: int) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            with open(self.log_path(node), "rb") as log:
                log.seek(since)
                text = log.read().decode(errors="replace")
            if f"node {node} ready" in text:
                return
            if "node process exited" in text or launcher.poll() is not None:
                raise LabError(f"node {node} failed to start; see {self.log_path(node)}")
            time.sleep(0.05)
        raise LabError(f"node {node} was not ready within {BOOT_TIMEOUT:g} s")

    def kill(self, node: str) -> bool:
        """SIGKILL the node's PID namespace: every process of the node dies at once."""
        pid = self.init_pid(node)
        if pid is None:
            return False
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + BOOT_TIMEOUT
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        # a server losing power loses its addresses too; the namespace outlives the processes
        subprocess.run(
            ["ip", "-n", self.netns(node), "addr", "del", f"{VIP}/{PREFIX}", "dev", "eth0"],
            capture_output=True,
        )
        return True

    def exec_command(self, node: str, command: list[str]) -> list[str]:
        if node == CLIENT:
            self._state()  # a lab must be up
            return ["nsenter", f"--net=/run/netns/{self.netns(CLIENT)}", "--", *command]
        pid = self.init_pid(node)
        if pid is None:
            raise LabError(f"node {node} is not running ({self.command} start {node})")
        enter = ["nsenter", f"--target={pid}", "--mount", "--net", "--pid"]
        # `tandem state/verify/resync` run there find that node's streams by themselves, and
        # `tandem` is the one running this lab even when its virtualenv is not on PATH
        environment = [
            "env",
            f"{STATE_DIR_VARIABLE}={self.state_dir(node)}",
            f"{CONFIG_DIR_VARIABLE}={self.config_dir(node)}",
            f"PATH={_with_own_scripts(os.environ.get('PATH', ''))}",
        ]
        return [*enter, f"--wd={os.getcwd()}", "--", *environment, *command]

    def cut(self, node: str, connected: bool = False) -> None:
        """Unplug (or plug back) the node's network cable: its veth on the switch goes down."""
        self._check_node(node)
        _run(
            "ip", "-n", self.netns("sw"), "link", "set", f"to-{node}", "up" if connected else "down"
        )

    def partition(self, witness: str = "both") -> None:
        """The two nodes stop reaching each other; ``witness`` says which side(s) still reach
        the switch's address (the witness). The client still reaches both."""
        sides = {"a": ("a",), "b": ("b",), "both": ("a", "b"), "none": ()}
        if witness not in sides:
            raise LabError(f"--witness must be a, b, both or none, not {witness!r}")
        self._state()
        cut_off = [node for node in NODES if node not in sides[witness]]
        rules = [
            f"table bridge {PARTITION_TABLE} {{",
            "  chain forward { type filter hook forward priority 0; policy accept;",
            '    iifname "to-a" oifname "to-b" drop',
            '    iifname "to-b" oifname "to-a" drop',
            "  }",
            "  chain input { type filter hook input priority 0; policy accept;",
            *(f'    iifname "to-{node}" drop' for node in cut_off),
            "  }",
            "}",
        ]
        self.heal_partition()
        _nft(self.netns("sw"), "\n".join(rules))

    def impair(self, how: str, delay: float = DELAY) -> None:
        """Make what the two nodes send each other go bad, the client untouched: ``reset``
        answers every TCP segment from the peer with a reset, ``loss`` drops 10 % of the
        peer's packets, ``delay`` holds every TCP byte between them ``delay`` seconds each way
        (new connections go through `relay`; the current ones are ended so that the next go
        there too). This kernel has no netem: nftables in each node's namespace, and a relay
        process there for the delay. `mend` ends it. (Heavier loss on the only heartbeat
        network can pass for a dead peer: D20's known limit.)"""
        rules = {
            "reset": "meta l4proto tcp reject with tcp reset",
            "loss": "numgen random mod 10 < 1 drop",
        }
        if how not in (*rules, "delay"):
            raise LabError(f"impair: reset, loss or delay, not {how!r}")
        self._state()
        self.mend()
        if how == "delay":
            self._delay(delay)
            return
        for node in NODES:
            _nft(
                self.netns(node),
                "\n".join(
                    [
                        f"table inet {IMPAIR_TABLE} {{",
                        "  chain input { type filter hook input priority 0; policy accept;",
                        f"    ip saddr {self._peer_address(node)} {rules[how]}",
                        "  }",
                        "}",
                    ]
                ),
            )

    def _peer_address(self, node: str) -> str:
        return next(address for other, address in NODES.items() if other != node)

    def _delay(self, delay: float) -> None:
        state = self._state()
        relays: dict[str, int] = {}
        state["relays"] = relays
        for node in NODES:
            netns = self.netns(node)
            relay = [sys.executable, "-m", "tandem.engine.lab.relay", "--port", str(RELAY_PORT)]
            command = " ".join([*relay, "--delay", str(delay), "--mark", hex(RELAY_MARK)])
            # started in the background (its own session): `mend` stops it by its PID
            started = _run(
                "ip",
                "netns",
                "exec",
                netns,
                "sh",
                "-c",
                f"{command} < /dev/null > /dev/null 2>&1 & echo $!",
            )
            relays[node] = pid = int(started.strip())
            self._save(state)
            deadline = time.monotonic() + BOOT_TIMEOUT
            while f":{RELAY_PORT} " not in _run("ip", "netns", "exec", netns, "ss", "-Hltn"):
                if not _alive(pid) or time.monotonic() > deadline:
                    raise LabError(f"the delaying relay on {node} did not start")
                time.sleep(0.02)
            peer = self._peer_address(node)
            _nft(
                netns,
                "\n".join(
                    [
                        f"table ip {DELAY_TABLE} {{",
                        "  chain output { type nat hook output priority -100; policy accept;",
                        f"    meta mark != {RELAY_MARK:#x} ip daddr {peer} meta l4proto tcp "
                        f"redirect to :{RELAY_PORT}",
                        "  }",
                        "}",
                    ]
                ),
            )
            # the connections already open would keep their direct path
            subprocess.run(
                ["ip", "netns", "exec", netns, "ss", "-K", "dst", peer], capture_output=True
            )

    def mend(self) -> None:
        for node in NODES:
            listed = subprocess.run(
                ["ip", "netns", "exec", self.netns(node), "nft", "list", "tables"],
                capture_output=True,
                text=True,
            )
            if IMPAIR_TABLE in listed.stdout:
                _nft(self.netns(node), f"delete table inet {IMPAIR_TABLE}")
            if DELAY_TABLE in listed.stdout:
                _nft(self.netns(node), f"delete table ip {DELAY_TABLE}")
        if not self._state_file.exists():
            return
        state = self._state()
        relays = state.pop("relays", None)
        if isinstance(relays, dict):
            for pid in relays.values():
                if isinstance(pid, int) and _alive(pid):
                    os.kill(pid, signal.SIGKILL)
                    while _alive(pid):
                        time.sleep(0.01)
            self._save(state)

    def heal_partition(self) -> None:
        switch = self.netns("sw")
        listed = subprocess.run(
            ["ip", "netns", "exec", switch, "nft", "list", "tables"], capture_output=True, text=True
        )
        if PARTITION_TABLE in listed.stdout:
            _nft(switch, f"delete table bridge {PARTITION_TABLE}")

    def module_state(self, node: str) -> dict[str, Any] | None:
        """The node's failover state of the demo module, or None if it does not answer."""
        try:
            return ask(module_socket(str(self.state_dir(node)), MODULE), "state", timeout=5)
        except ControlError:
            return None

    def serving_nodes(self) -> list[str]:
        """The nodes whose demo module says it serves (PRIM or ALONE): one, normally."""
        states = {node: self.module_state(node) for node in NODES}
        return [n for n, s in states.items() if s is not None and s["state"] in ("PRIM", "ALONE")]

    def settle(self, timeout: float = SETTLE_TIMEOUT) -> None:
        """Wait until one node serves and the other is an up-to-date secondary."""
        deadline = time.monotonic() + timeout
        states: dict[str, Any] = {}
        while time.monotonic() < deadline:
            states = {node: self.module_state(node) for node in NODES}
            found = sorted((s["state"], s["up_to_date"]) for s in states.values() if s is not None)
            # and the serving node has heard that: `up` prints both nodes' words, which must
            # not contradict each other ("b follows (resyncing)" beside "b: SECOND, in sync")
            if found == [("PRIM", True), ("SECOND", True)] and any(
                s is not None and s["state"] == "PRIM" and s["reason"].endswith("(in sync)")
                for s in states.values()
            ):
                return
            if found == [("ALONE", True), ("SECOND", True)]:
                return
            time.sleep(0.1)
        described = {n: s and f"{s['state']}: {s['reason']}" for n, s in states.items()}
        raise LabError(f"the module did not settle within {timeout:g} s: {described}")

    def describe(self) -> str:
        state = self._state()
        roles = state["roles"]
        assert isinstance(roles, dict)
        managed = state.get("managed") is True
        lines = [
            f"lab in {self.directory} (ack {state['ack']}, sync at each "
            f"{state.get('sync', 'write')}, timeout {state['timeout']} s)"
        ]
        for node, address in NODES.items():
            running = "running" if self.init_pid(node) else "down"
            role = roles[node]
            if managed:
                found = self.module_state(node) if running == "running" else None
                role = f"{found['state']} ({found['reason']})" if found else "-"
                if running == "running" and found is None:
                    # the node's namespaces are there, its `tandem node` does not answer
                    running = "its tandem node does not answer (exited? see the log)"
            lines.append(f"  node {node}: {role}, {address}, {running}, log {self.log_path(node)}")
        lab = self.command
        if managed:
            lines.append(
                f"  virtual IP {VIP} (on the serving node), demo app on port {APP_PORT}: "
                f"{lab} exec client -- {sys.executable} -m tandem.engine.lab.demoapp "
                f"get {VIP} {APP_PORT} KEY"
            )
        ports = state.get("console_ports")
        if isinstance(ports, dict):
            urls = ", ".join(f"https://127.0.0.1:{port}/ (node {n})" for n, port in ports.items())
            lines.append(f"  console: {urls}")
            lines.append(
                f"    log in as {CONSOLE_USER}, password {self._console_password()} "
                "(self-signed certificates: the browser asks once)"
            )
        lines.append(f"  client ({lab} exec client -- …): {CLIENT_ADDRESS}")
        lines.append(f"  witness (the switch): {SWITCH_ADDRESS}")
        lines.append(f"  replicated directory (same path on both nodes): {self.shared_path}")
        lines.append(f"  try: {lab} exec a -- sh -c 'date > {self.shared_path}/hello'")
        lines.append(f"       {lab} exec b -- cat {self.shared_path}/hello")
        lines.append(f"       {lab} logs a        {lab} exec a -- tandem state")
        return "\n".join(lines)


def _free_port(wanted: int) -> int:
    """``wanted`` if nothing listens there on loopback, else one the kernel picks."""
    import socket

    for port in (wanted, 0):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the relay binds
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            found: int = probe.getsockname()[1]
            return found
    raise LabError("no free port on loopback for the console")


def _with_own_scripts(path: str) -> str:
    """PATH with the directory of this Python's scripts (where `tandem` is) first."""
    scripts = os.path.dirname(sys.executable)
    rest = [entry for entry in path.split(os.pathsep) if entry and entry != scripts]
    return os.pathsep.join([scripts, *rest])
