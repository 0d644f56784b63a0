"""The fullnat-4to4 shape in Mininet (Linux bridge, no controller), timed.

Run with Debian's python3, where the mininet package lives; prints one JSON
line with every up+down time in seconds.  Addresses and routes are set as
toalab sets them, so both sides do the same work.
"""

import json
import time

from mininet.log import setLogLevel
from mininet.net import Mininet
from mininet.nodelib import LinuxBridge
from mininet.topo import Topo


class Fullnat(Topo):
    def build(self):
        client = self.addHost("client", ip="198.51.100.10/24", defaultRoute="via 198.51.100.1")
        lb = self.addHost("lb", ip="198.51.100.1/24")
        rs1 = self.addHost("rs1", ip="192.0.2.11/24", defaultRoute="via 192.0.2.1")
        rs2 = self.addHost("rs2", ip="192.0.2.12/24", defaultRoute="via 192.0.2.1")
        sw = self.addSwitch("s1")
        self.addLink(client, lb)
        self.addLink(lb, sw, params1={"ip": "192.0.2.1/24"})
        self.addLink(sw, rs1)
        self.addLink(sw, rs2)


def main():
    setLogLevel("error")
    times = []
    for _ in range(10):
        t = time.perf_counter()
        net = Mininet(topo=Fullnat(), switch=LinuxBridge, controller=None, autoSetMacs=True)
        net.start()
        net["lb"].cmd("sysctl -qw net.ipv4.ip_forward=1")
        net.stop()
        times.append(time.perf_counter() - t)
    print(json.dumps(times))


if __name__ == "__main__":
    main()
