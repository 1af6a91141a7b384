#!/usr/bin/env python3
"""A Python client of org.nsbroker.Broker1, with nothing but Debian's
python3-dbus: opens a UDP socket in a namespace and proves where it lives.

    open_socket.py BUS_ADDRESS NETNS

Prints the inode of the socket's network namespace (ioctl SIOCGSKNS) and the
port it was bound to.
"""
import fcntl
import os
import socket
import sys

import dbus

SIOCGSKNS = 0x894C


def main():
    address, netns = sys.argv[1], sys.argv[2]
    bus = dbus.bus.BusConnection(address)
    broker = dbus.Interface(bus.get_object("org.nsbroker.Broker1", "/org/nsbroker/Broker1"),
                            "org.nsbroker.Broker1")
    options = dbus.Dictionary({"bind": "127.0.0.1:0"}, signature="sv")
    fd = broker.OpenSocket(netns, socket.AF_INET, socket.SOCK_DGRAM, 0, options).take()
    with socket.socket(fileno=fd) as sock:
        netns_fd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
        try:
            print(os.fstat(netns_fd).st_ino, sock.getsockname()[1])
        finally:
            os.close(netns_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
