"""Publishing each external pool's accounting on ``vpcbus.usage.pool.<pool>``.

The status stream keeps the last message per subject, so ``vpcbus get pool`` and
dashboards read the current figures with one direct get. Published when they change, and
at least every ``REFRESH`` seconds (quarantines end with time alone).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import structlog
from nats.js import JetStreamContext

from vpcbus_ipam.reconciler import IpamReconciler
from vpcbus_proto import subjects
from vpcbus_proto.status import PoolUsage

INTERVAL = 2.0
REFRESH = 60.0

log = structlog.get_logger()


def pool_usage(reconciler: IpamReconciler, name: str) -> PoolUsage:
    pool = reconciler.policy.pools[name]
    return PoolUsage(
        pool=name,
        gateway=str(pool.gateway),
        exclude=[
            str(r.first) if r.first == r.last else f"{r.first}..{r.last}" for r in pool.exclude
        ],
        usage=reconciler.usage(pool),
        observed_at=datetime.now(UTC),
    )


async def publish_pool_usage(js: JetStreamContext, reconciler: IpamReconciler) -> None:
    """The IPAM's janitor loop: expire finished quarantines of gone projects, then publish
    each pool's accounting when it changed."""
    last: dict[str, tuple[object, float]] = {}
    loop = asyncio.get_running_loop()
    while True:
        for name in sorted(reconciler.policy.pools):
            try:
                expired = await reconciler.expire_pool(name)
                if expired:
                    log.info("quarantine ended", pool=name, addresses=expired)
                usage = pool_usage(reconciler, name)
                seen = last.get(name)
                if seen is not None and seen[0] == usage.usage and loop.time() - seen[1] < REFRESH:
                    continue
                await js.publish(
                    subjects.pool_usage_subject(name),
                    usage.model_dump_json(by_alias=True).encode(),
                    stream=subjects.STATUS_STREAM,
                )
                last[name] = (usage.usage, loop.time())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS down: the next round tries again
                log.warning("pool usage not published", pool=name, error=repr(exc))
        await asyncio.sleep(INTERVAL)
