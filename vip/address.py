"""The virtual IP: add it to an interface, tell the LAN (gratuitous ARP), check it is there,
remove it. Idempotent: adding an address already held, or removing one not held, is fine and
says so. It decides nothing; the module state machine says when.

    python -m tandem.vip.address add|remove|check INTERFACE ADDRESS/PREFIX

(a tool to try it; the node does the same through these functions).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
import threading
import time

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

GARP_COUNT = 3  # a switch or a neighbour may miss one
GARP_SPACING = 0.05


class VipError(Exception):
    """Worded for the operator."""


def _parse(address: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    try:
        parsed = ipaddress.ip_interface(address)
    except ValueError:
        raise VipError(f"{address!r} is not ADDRESS/PREFIX (e.g. 192.0.2.10/24)") from None
    if "/" not in address:
        raise VipError(f"{address!r} needs its prefix length (e.g. {address}/24)")
    return parsed


def _index(ipr: IPRoute, interface: str) -> int:
    found = ipr.link_lookup(ifname=interface)
    if not found:
        raise VipError(f"no network interface {interface!r} on this node")
    return int(found[0])


def interface_of(address: str) -> str:
    """The interface holding ``address`` (a node's own address): where its VIP goes by default."""
    with IPRoute() as ipr:
        for message in ipr.get_addr():
            if message.get_attr("IFA_ADDRESS") == address:
                (name,) = (link.get_attr("IFLA_IFNAME") for link in ipr.get_links(message["index"]))
                return str(name)
    raise VipError(f"no interface of this node holds {address} (set vip_interface)")


def networks_of(interface: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The subnets of the addresses ``interface`` holds (raises VipError if there is none)."""
    with IPRoute() as ipr:
        index = _index(ipr, interface)
        found = []
        for message in ipr.get_addr(index=index):
            address = message.get_attr("IFA_ADDRESS")
            found.append(ipaddress.ip_interface(f"{address}/{message['prefixlen']}").network)
        return found


def holds(interface: str, address: str) -> bool:
    vip = _parse(address)
    with IPRoute() as ipr:
        index = _index(ipr, interface)
        for message in ipr.get_addr(index=index):
            if message.get_attr("IFA_ADDRESS") == str(vip.ip):
                return True
    return False


def acquire(interface: str, address: str) -> str:
    """Hold ``address`` on ``interface`` and announce it; what was done, for the log."""
    vip = _parse(address)
    with IPRoute() as ipr:
        index = _index(ipr, interface)
        try:
            ipr.addr("add", index=index, address=str(vip.ip), prefixlen=vip.network.prefixlen)
            done = f"added {address} to {interface}"
        except NetlinkError as exc:
            if exc.code != 17:  # EEXIST: already held, which is what we want
                raise VipError(f"cannot add {address} to {interface}: {exc}") from None
            done = f"{address} already on {interface}"
    if not holds(interface, address):
        raise VipError(f"{address} is not on {interface} after adding it")
    if vip.version == 4:
        # the first announcement at once; the repeats (for a neighbour that missed it) must not
        # hold up the application's start, which is the rest of a failover
        announce(interface, str(vip.ip), count=1)
        threading.Thread(target=_announce_again, args=(interface, str(vip.ip)), daemon=True).start()
        done += f"; announced by {GARP_COUNT} gratuitous ARPs"
    return done


def _announce_again(interface: str, ip: str) -> None:
    time.sleep(GARP_SPACING)
    try:
        announce(interface, ip, count=GARP_COUNT - 1)
    except OSError:
        pass  # the address or the interface went meanwhile: nothing left to announce


def release(interface: str, address: str) -> str:
    vip = _parse(address)
    with IPRoute() as ipr:
        index = _index(ipr, interface)
        try:
            ipr.addr("del", index=index, address=str(vip.ip), prefixlen=vip.network.prefixlen)
        except NetlinkError as exc:
            if exc.code != 99:  # EADDRNOTAVAIL: not held, which is what we want
                raise VipError(f"cannot remove {address} from {interface}: {exc}") from None
            return f"{address} was not on {interface}"
    if holds(interface, address):
        raise VipError(f"{address} is still on {interface} after removing it")
    return f"removed {address} from {interface}"


def announce(interface: str, ip: str, count: int = GARP_COUNT) -> None:
    """Gratuitous ARP (a request for our own address, broadcast): neighbours and switches
    learn at once that the address now lives behind this interface's MAC."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806)) as raw:
        raw.bind((interface, 0))
        mac = raw.getsockname()[4]
        if len(mac) != 6:
            return  # not an Ethernet interface (loopback, tun): nothing to announce
        packed_ip = socket.inet_aton(ip)
        broadcast = b"\xff" * 6
        arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + packed_ip + broadcast + packed_ip
        frame = broadcast + mac + struct.pack("!H", 0x0806) + arp
        for attempt in range(count):
            raw.send(frame)
            if attempt < count - 1:
                time.sleep(GARP_SPACING)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("add", "remove", "check"):
        print("usage: python -m tandem.vip.address add|remove|check INTERFACE ADDRESS/PREFIX")
        return 2
    action, interface, address = argv
    try:
        if action == "add":
            print(acquire(interface, address))
        elif action == "remove":
            print(release(interface, address))
        else:
            held = holds(interface, address)
            print(f"{address} {'is' if held else 'is not'} on {interface}")
            return 0 if held else 1
    except VipError as exc:
        print(f"tandem: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
