# syntax=docker/dockerfile:1
#
# One image for the four services (python -m vpcbus_<service>), the CLI (vpcbus) and the
# OVN central container (vpcbus ovn-central). Built and used by compose.yaml:
#
#   docker compose up --build
#
# Layers, from the least to the most often changed: Debian packages, the pinned third-party
# Python packages (from requirements.txt without its -e lines), then our nine packages.
# Editing source code therefore reinstalls only the last layer.
#
# Only the paths needed are copied (no `COPY . .`), so .venv/, .git/ and caches stay out of
# the build even without a .dockerignore.

FROM debian:bookworm-slim

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/vpcbus \
    PATH=/opt/vpcbus/bin:$PATH

# Debian's python3 (3.11, the project's version; openvswitch-common needs it anyway) and the
# OVN/OVS tools: ovsdb-server, ovsdb-tool, ovn-northd, ovn-nbctl, ovn-sbctl, ovn-appctl; for
# the chassis container also ovs-vswitchd, ovs-vsctl, ovn-controller, ip, ethtool and ping.
# policy-rc.d stops the packages' maintainer scripts from starting daemons during the build.
# Versions come from bookworm (+ security); pinning them would break on each Debian update.
# hadolint ignore=DL3008
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d \
    && chmod +x /usr/sbin/policy-rc.d \
    && apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates \
        dnsutils \
        ethtool \
        iproute2 \
        iputils-ping \
        openvswitch-common \
        openvswitch-switch \
        ovn-central \
        ovn-common \
        ovn-host \
        python3 \
        python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV"

# The runtime user. /var/lib/vpcbus/ovn is the ovn-central container's database volume and
# /var/lib/vpcbus/nats-auth the NATS users' (compose.yaml): a named volume mounted there
# starts as a copy of this directory, owner included.
RUN useradd --system --user-group --uid 10001 --home-dir /var/lib/vpcbus \
        --shell /usr/sbin/nologin vpcbus \
    && mkdir -p /var/lib/vpcbus/ovn /var/lib/vpcbus/nats-auth \
    && chown -R vpcbus:vpcbus /var/lib/vpcbus

WORKDIR /src

# Third-party packages first: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt ./
RUN grep -vE '^[[:space:]]*-e[[:space:]]' requirements.txt > /tmp/requirements-pinned.txt \
    && pip install --no-cache-dir -r /tmp/requirements-pinned.txt \
    && rm /tmp/requirements-pinned.txt

# Our nine distributions, installed exactly as requirements.txt says (editable, from /src).
COPY proto/ proto/
COPY kubeovn/ kubeovn/
COPY runtime/ runtime/
COPY services/ services/
COPY cli/ cli/
COPY bridge/ bridge/
RUN pip install --no-cache-dir -r requirements.txt \
    && python -m compileall -q proto kubeovn runtime services cli bridge

USER vpcbus
WORKDIR /var/lib/vpcbus

CMD ["vpcbus", "--help"]
