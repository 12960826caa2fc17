"""Send UDP datagrams with any source address and port (a raw socket, IP header included), as an
attacker on the same network can: `spoof.py SRC SPORT DST DPORT HEX [HEX ...] [--repeat N]`.
Tests use it to reach a heartbeat socket that only accepts the peer's address and port."""

from __future__ import annotations

import socket
import struct
import sys


def datagram(source: str, sport: int, destination: str, dport: int, payload: bytes) -> bytes:
    udp = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload  # no UDP checksum
    # with IP_HDRINCL the kernel fills in the IP checksum and the total length
    header = struct.pack(
        ">BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        0,
        0,
        64,
        socket.IPPROTO_UDP,
        0,
        socket.inet_aton(source),
        socket.inet_aton(destination),
    )
    return header + udp


def send(source: str, sport: int, destination: str, dport: int, payloads: list[bytes]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        for payload in payloads:
            raw.sendto(datagram(source, sport, destination, dport, payload), (destination, 0))


if __name__ == "__main__":
    args = sys.argv[1:]
    repeat = 1
    if "--repeat" in args:
        at = args.index("--repeat")
        repeat = int(args[at + 1])
        del args[at : at + 2]
    src, sport, dst, dport, *hexes = args
    send(src, int(sport), dst, int(dport), [bytes.fromhex(h) for h in hexes] * repeat)
