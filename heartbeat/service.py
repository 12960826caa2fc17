"""The heartbeat service: sends this node's heartbeat on every configured network every
``interval`` seconds, hears the peer's, and keeps the failure detector's verdict.

One UDP socket per network, bound to this node's address on it and connected to the peer's:
the kernel then delivers only datagrams from the peer's address and port, so a flood from any
other host never reaches the service nor its buffer (it cannot crowd out the real heartbeats).
What does arrive is drained in one go per wake-up (no scheduler turn per packet), and refused
packets (forged, replayed, malformed) are counted and logged as one line per period, never one
per packet. The same sequence number goes out on every network at each tick (a receiver takes
it once per network). The verdict is re-evaluated every tick and on every packet; whoever runs
the service is told of each change.

    python -m tandem.heartbeat.service --node a --peer b --secret-file F \\
        --link net1=198.18.1.1,198.18.1.2 [--link net2=…] [--port 7399] [--interval 0.2] \\
        [--timeout 1.0]

prints a JSON line at each change of verdict or of the rejected-packet counters (a tool to try
networks with; the node process runs the service itself).
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from tandem.heartbeat.detector import FailureDetector, Verdict
from tandem.heartbeat.packet import BeatChecker, Heartbeat, encode, new_incarnation

log = logging.getLogger(__name__)

DEFAULT_PORT = 7399
DEFAULT_INTERVAL = 0.2
DEFAULT_TIMEOUT = 1.0
RECEIVE_SIZE = 2048
RECEIVE_BUFFER = 1 << 21  # room for a burst of packets the service has not read yet
DRAIN_AT_MOST = 256  # packets read in one go before other tasks get a turn
REFUSALS_LOGGED_EVERY = 10.0  # seconds: refused packets are summed up, one line per period


@dataclass(frozen=True)
class Link:
    """One heartbeat network: this node's address on it and the peer's."""

    name: str
    local: str
    peer: str

    @classmethod
    def parse(cls, text: str) -> Link:
        name, sep, addresses = text.partition("=")
        local, comma, peer = addresses.partition(",")
        if not sep or not comma or not name or not local or not peer:
            raise ValueError(f"{text!r} is not NAME=LOCAL_ADDRESS,PEER_ADDRESS")
        return cls(name, local, peer)


class HeartbeatService:
    def __init__(
        self,
        node: str,
        peer: str,
        secret: bytes | Callable[[], Sequence[bytes]],
        links: list[Link],
        *,
        port: int = DEFAULT_PORT,
        interval: float = DEFAULT_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
        payload: Callable[[], bytes] = lambda: b"",
        on_change: Callable[[HeartbeatService], None] = lambda service: None,
    ) -> None:
        if not links:
            raise ValueError("at least one heartbeat network is needed")
        if not 0 < interval < timeout:
            raise ValueError("the interval must be positive and shorter than the timeout")
        self.node, self.peer = node, peer
        # the first secret signs, any of them is accepted (a rotation: `packet`)
        self._secrets: Callable[[], Sequence[bytes]] = (
            (lambda: (secret,)) if isinstance(secret, bytes) else secret
        )
        self.links = links
        self._port = port
        self._interval = interval
        self._payload = payload
        self._on_change = on_change
        self._incarnation = new_incarnation()
        self._seq = 0
        self._receiver = BeatChecker(self._secrets, {peer})
        self._timeout = timeout
        self._detector = FailureDetector([link.name for link in links], timeout, 0.0)
        self.verdict = Verdict.UNKNOWN
        self.peer_payload = b""
        self.last_heard: float | None = None  # trio time of the peer's last accepted heartbeat
        self._wake = trio.Event()
        self.send_errors: dict[str, str] = {}
        self._told: tuple[Verdict, int] = (Verdict.UNKNOWN, 0)
        self._connected: set[str] = set()  # networks whose socket is connected to the peer
        self._sockets: list[socket.socket] = []  # one per link, in the order of `links`
        self._refusals_logged = 0  # rejects counted when the last summary was logged
        self._refusals_logged_at = -REFUSALS_LOGGED_EVERY

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # the peer gets one timeout from our start before it counts as lost
        self._detector = FailureDetector(
            [link.name for link in self.links], self._timeout, trio.current_time()
        )
        self._sockets.clear()
        try:
            for link in self.links:
                self._sockets.append(self._open(link))
            async with trio.open_nursery() as nursery:
                for index in range(len(self.links)):
                    nursery.start_soon(self._listen, index)
                nursery.start_soon(self._beat, self._sockets)
                task_status.started()
        finally:
            for sock in self._sockets:
                sock.close()

    def _open(self, link: Link) -> socket.socket:
        family = socket.AF_INET6 if ":" in link.local else socket.AF_INET
        # plain non-blocking sockets: a burst is drained without a scheduler turn per packet,
        # and a datagram send never waits
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.bind((link.local, self._port))
        except BaseException:
            sock.close()
            raise
        self._connected.discard(link.name)
        self._connect(link, sock)
        return sock

    async def _reopen(self, index: int, why: OSError) -> None:
        """A socket the kernel broke (destroyed by `ss -K`, an interface gone): a new one in
        its place, retried until it binds. The node must outlive its sockets."""
        link = self.links[index]
        log.warning("heartbeat on %s: %s; opening the socket again", link.name, why.strerror or why)
        self._sockets[index].close()
        while True:
            try:
                self._sockets[index] = self._open(link)
                return
            except OSError as exc:
                self.send_errors[link.name] = exc.strerror or str(exc)
                await trio.sleep(self._interval)

    async def _beat(self, sockets: list[socket.socket]) -> None:
        while True:
            self._seq += 1
            data = encode(
                self._secrets()[0],
                Heartbeat(self.node, self._incarnation, self._seq, self._payload()),
            )
            for link, sock in zip(self.links, sockets, strict=True):
                if link.name not in self._connected and not self._connect(link, sock):
                    continue
                try:
                    sock.send(data)
                    self.send_errors.pop(link.name, None)
                except BlockingIOError:
                    self.send_errors[link.name] = "send buffer full"
                except ConnectionRefusedError:
                    pass  # the peer's port was closed a moment ago (it restarts): not a link fault
                except OSError as exc:  # a link that is down: the others may still carry it
                    self.send_errors[link.name] = exc.strerror or str(exc)
            self._evaluate()
            with trio.move_on_after(self._interval):
                await self._wake.wait()
            self._wake = trio.Event()

    def _connect(self, link: Link, sock: socket.socket) -> bool:
        """Only the peer's packets from now on: the kernel drops everyone else's. A network
        without a route yet (its interface down at start) is retried at every tick."""
        try:
            sock.connect((link.peer, self._port))
        except OSError as exc:
            self.send_errors[link.name] = exc.strerror or str(exc)
            return False
        self._connected.add(link.name)
        return True

    def current_verdict(self) -> Verdict:
        """The verdict now (``verdict`` is as of the last tick or packet)."""
        return self._detector.verdict(trio.current_time())

    def poke(self) -> None:
        """Send the next heartbeat now (this node's news should not wait for the tick)."""
        self._wake.set()

    async def _listen(self, index: int) -> None:
        link = self.links[index]
        while True:
            sock = self._sockets[index]
            await trio.lowlevel.wait_readable(sock)
            for _ in range(DRAIN_AT_MOST):
                try:
                    data = sock.recv(RECEIVE_SIZE)
                except BlockingIOError:
                    break
                except ConnectionRefusedError:
                    continue  # an ICMP "port unreachable" for a beat the peer was not up for
                except OSError as exc:
                    await self._reopen(index, exc)
                    break
                self._take(link, data)
            self._evaluate()
            self._log_refusals()
            await trio.lowlevel.checkpoint()

    def _take(self, link: Link, data: bytes) -> None:
        heartbeat = self._receiver.take(link.name, data)
        if heartbeat is not None:
            self.last_heard = trio.current_time()
            self._detector.heard(link.name, self.last_heard)
            self.peer_payload = heartbeat.payload

    def _log_refusals(self) -> None:
        total = sum(self._receiver.rejected.values())
        now = trio.current_time()
        if total == self._refusals_logged or now - self._refusals_logged_at < REFUSALS_LOGGED_EVERY:
            return
        kinds = ", ".join(
            f"{kind} {count}" for kind, count in sorted(self._receiver.rejected.items())
        )
        log.warning(
            "heartbeat: %d packet(s) refused since %s (in all: %s); last: %s",
            total - self._refusals_logged,
            "the start"
            if self._refusals_logged_at < 0
            else f"{now - self._refusals_logged_at:.0f} s ago",
            kinds,
            self._receiver.last_reject,
        )
        self._refusals_logged, self._refusals_logged_at = total, now

    def _evaluate(self) -> None:
        self.verdict = self._detector.verdict(trio.current_time())
        told = (self.verdict, sum(self._receiver.rejected.values()))
        if told != self._told:
            self._told = told
            if told[0] is not Verdict.UNKNOWN or told[1]:
                self._on_change(self)

    def status(self) -> dict[str, Any]:
        now = trio.current_time()
        return {
            "peer": self.peer,
            "verdict": self.verdict.value,
            "networks": {
                s.network: {
                    "silent_for_s": s.silent_for,
                    "send_error": self.send_errors.get(s.network),
                }
                for s in self._detector.statuses(now)
            },
            "rejected": dict(self._receiver.rejected),
            "last_rejected": self._receiver.last_reject or None,
        }

    def peer_signer(self) -> bytes | None:
        """The secret the peer's newest accepted heartbeat was signed with (None: none heard)."""
        return self._receiver.signer.get(self.peer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tandem.heartbeat.service")
    parser.add_argument("--node", required=True)
    parser.add_argument("--peer", required=True)
    parser.add_argument("--secret-file", required=True)
    parser.add_argument("--link", action="append", required=True, type=Link.parse)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    args = parser.parse_args(argv)
    with open(args.secret_file, "rb") as handle:
        secret = handle.read().strip()

    def tell(service: HeartbeatService) -> None:
        print(json.dumps(service.status()), flush=True)

    service = HeartbeatService(
        args.node,
        args.peer,
        secret,
        args.link,
        port=args.port,
        interval=args.interval,
        timeout=args.timeout,
        on_change=tell,
    )
    try:
        trio.run(service.run)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
