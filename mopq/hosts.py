"""This host's address and a process's listening port, as a worker's identity names them.

Read from the interface and connection tables (``psutil``); no packet is sent.
Workers name themselves ``ip:port:start_time:pid`` with these, and doorbells
(``mopq.doorbell``) say where writers can ring them.
"""

from __future__ import annotations

import ipaddress
import socket

import psutil


def host_ip() -> str:
    """The first non-loopback IPv4 address of this host's interfaces, else 127.0.0.1.

    Read from the interface table; no packet is sent anywhere. Interfaces that
    are down and link-local addresses are passed over while a better one exists.
    """
    try:
        interfaces = psutil.net_if_addrs()
        stats = psutil.net_if_stats()
    except (OSError, psutil.Error):
        return "127.0.0.1"
    fallback = None
    for name, addresses in interfaces.items():
        up = stats[name].isup if name in stats else True
        for address in addresses:
            if address.family != socket.AF_INET:
                continue
            try:
                ip = ipaddress.IPv4Address(address.address)
            except ValueError:
                continue
            if ip.is_loopback or ip.is_unspecified:
                continue
            if up and not ip.is_link_local:
                return str(ip)
            fallback = fallback or str(ip)
    return fallback or "127.0.0.1"


def listening_port(process: psutil.Process | None = None) -> int:
    """The lowest TCP port this process listens on, or 0 if it listens on none."""
    process = process or psutil.Process()
    try:
        connections = process.net_connections(kind="tcp")
    except (OSError, psutil.Error):
        return 0
    ports = sorted(c.laddr.port for c in connections
                   if c.status == psutil.CONN_LISTEN and c.laddr)
    return ports[0] if ports else 0
