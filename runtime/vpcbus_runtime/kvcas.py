"""Compare-and-set deletes on a KV bucket, as one place that knows nats-py's error for them.

``KeyValue.update(key, value, last=n)`` turns the server's "wrong last sequence" answer
into ``KeyWrongLastSequenceError``, but ``KeyValue.delete(key, last=n)`` (nats-py 2.16)
raises it as a bare ``BadRequestError``. Every compare-and-set delete (the IPAM address
book, the member index, the record store) calls :func:`delete_if`, so a lost race is an
answer, not an internal error that fails the reconcile.
"""

from __future__ import annotations

from typing import Final

from nats.js.errors import BadRequestError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

#: JetStream's "wrong last sequence" error codes (JSStreamWrongLastSequence*).
WRONG_LAST_SEQUENCE: Final = (10071, 10164)


async def delete_if(kv: KeyValue, key: str, revision: int) -> bool:
    """Delete ``key`` if its last revision is still ``revision``; False if it was written
    since."""
    try:
        await kv.delete(key, last=revision)
    except KeyWrongLastSequenceError:  # should nats-py translate it as for update()
        return False
    except BadRequestError as exc:
        if exc.err_code in WRONG_LAST_SEQUENCE:
            return False
        raise
    return True
