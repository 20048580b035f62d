"""ctnetlink: our own NETLINK_NETFILTER conntrack client."""
