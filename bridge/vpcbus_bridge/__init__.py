"""vpcbus's Kubernetes bridge: Kube-DC resources in, lifecycle events out, status back.

It watches ``kube-dc.com/v1`` Project, EIp and FIp, LoadBalancer Services, pods and KubeVirt
VMIs, publishes the events that describe them and writes the services' verdicts into their
``status``. It reaches the services only through the bus (an import contract says so).
"""
