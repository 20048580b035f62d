"""Network-namespace lab: a whole multi-WAN gateway (clients, gateway, ISP routers, internet) on one machine.

`Lab.up()` builds it, `Lab.load(name)` attaches to a running one; `wanlb lab ...` (see `cli`) is the
command-line face. Names and addresses are in the pure `topology` module. See docs/lab.md.
"""

from wanlb.lab.lab import Lab, LabError, TrafficReport, down_all, list_labs, python_module, remove_lab
from wanlb.lab.topology import FailMode, Topology, TopologyError

__all__ = [
    "FailMode",
    "Lab",
    "LabError",
    "Topology",
    "TopologyError",
    "TrafficReport",
    "down_all",
    "list_labs",
    "python_module",
    "remove_lab",
]
