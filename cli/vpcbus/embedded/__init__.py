"""The embedded development stack behind ``vpcbus up`` and the test fixtures.

OVN part: ``ovn.OvnCentral`` runs the Northbound and Southbound ``ovsdb-server``s and
``ovn-northd`` in a private run directory (no root needed). ``chassis.Chassis`` (root only) runs
a userspace (``datapath_type=netdev``) Open vSwitch and ``ovn-controller`` inside their own
network namespace and plugs network-namespace "VMs" into it. ``procs`` holds the process
helpers both build on (pidfile-checked stops, typed ``CommandError``).
"""
