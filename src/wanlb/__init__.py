"""wanlb: a connection-sticky, health-aware multi-WAN gateway.

The kernel does the per-packet work (nftables marks, conntrack, policy routing);
this package decides which ISP NEW connections get, watches ISP health, and
inspects/cleans the conntrack table.
"""

__version__ = "0.1.0"
