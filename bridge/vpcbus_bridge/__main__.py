"""``python -m vpcbus_bridge``: run the Kubernetes bridge (wiring only).

Kubernetes: ``--kubeconfig``, else ``KUBECONFIG`` or ``~/.kube/config``, else the pod's
service account. NATS and logging: the services' environment (``NATS_URL``, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace

import structlog

from vpcbus_bridge import bridging, state
from vpcbus_runtime import bus, logs, natsauth
from vpcbus_runtime.errors import PermanentError
from vpcbus_runtime.kube import KubeClient
from vpcbus_runtime.settings import Settings

log = structlog.get_logger()


async def serve(settings: Settings, kubeconfig: str | None, field_manager: str) -> None:
    logs.configure("bridge", fmt=settings.log_format, level=settings.log_level)
    kube = KubeClient.from_config(kubeconfig)
    nc = await bus.connect(
        settings.nats_url,
        name=f"vpcbus-bridge-{settings.instance}",
        user=settings.nats_user,
        password=settings.nats_password,
    )
    js = nc.jetstream()
    await bus.ensure_streams(js)
    kv = await bus.ensure_bucket(js, state.BUCKET)
    bridge = bridging.Bridge(kube, js, state.BridgeState(kv), field_manager=field_manager)
    running = asyncio.create_task(bridge.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, running.cancel)
    log.info("bridge started", nats=natsauth.redacted(settings.nats_url),
             field_manager=field_manager)  # fmt: skip
    try:
        await running
    except asyncio.CancelledError:
        log.info("bridge stopping")
    finally:
        await kube.close()
        with contextlib.suppress(Exception):
            await nc.flush(timeout=2)
        await nc.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m vpcbus_bridge",
        description="Kube-DC Project/EIp/FIp, LoadBalancer Services, pods and VMIs in; "
        "vpcbus lifecycle events out; the services' statuses back into Kubernetes",
    )
    parser.add_argument("--kubeconfig", help="default: KUBECONFIG, ~/.kube/config, in-cluster")
    parser.add_argument("--field-manager", default=bridging.FIELD_MANAGER)
    parser.add_argument("--log-format", choices=logs.FORMATS)
    parser.add_argument("--log-level", choices=logs.LEVELS)
    args = parser.parse_args(argv)
    settings = Settings()
    if args.log_format is not None:
        settings = replace(settings, log_format=args.log_format)
    if args.log_level is not None:
        settings = replace(settings, log_level=args.log_level)
    try:
        asyncio.run(serve(settings, args.kubeconfig, args.field_manager))
    except PermanentError as exc:
        print(f"vpcbus-bridge: {exc.message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
