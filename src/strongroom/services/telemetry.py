"""What a worker's metrics gauges show, sampled every few seconds (:func:`sample`): its logins and
PKCS#11 sessions, the objects it holds decrypted, the cluster's keys by class and, on the node's
first worker, the age of the newest backup. The names are :mod:`strongroom.metrics.names`'."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from strongroom.constants import CKA, CKO
from strongroom.metrics import node as node_metrics
from strongroom.metrics import store as store_metrics
from strongroom.services.backups import LAST_BACKUP_KEY
from strongroom.services.keyring import ClusterKeyring
from strongroom.services.sessions import Sessions
from strongroom.store.base import StoreError

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 5.0


def keys_by_class(keyring: ClusterKeyring) -> dict[str, int] | None:
    """Token objects by class (``secret_key``, ``private_key`` …), every class present; None without the key."""
    objects = keyring.objects
    if objects is None:
        return None
    counts = Counter(_class_name(obj.attributes.get(CKA.CLASS)) for obj in list(objects.tokens.by_handle.values()))
    return {name: counts.get(name, 0) for name in CLASSES} | dict(counts)


#: The classes always shown (0 when none), so that a dashboard's series exist from the start.
CLASSES = ("secret_key", "private_key", "public_key", "certificate", "data")


def _class_name(value: object) -> str:
    try:
        return CKO(value).name.lower() if isinstance(value, int) else "other"
    except ValueError:
        return "other"


async def _newest_backup(keyring: ClusterKeyring) -> tuple[bool, float | None]:
    barrier = keyring.barrier
    if barrier is None:
        return False, None
    try:
        last = await barrier.get(LAST_BACKUP_KEY)
    except StoreError:
        return False, None
    if last is None:
        return True, None
    created = last.value.get("created")
    return True, float(created) if isinstance(created, int | float) else None


def sample_once(sessions: Sessions, keyring: ClusterKeyring, *, backup: tuple[bool, float | None]) -> None:
    objects = keyring.objects
    node_metrics.set_worker_gauges(
        login_sessions=len(sessions.logins), pkcs11_sessions=len(sessions.p11),
        keys_by_class=keys_by_class(keyring),
        token_objects=0 if objects is None else len(objects.tokens),
        session_objects=0 if objects is None else len(objects.sessions),
        backup_created=backup[1], backup_known=backup[0])


async def sample(sessions: Sessions, keyring: ClusterKeyring, *, primary: bool,
                 interval: float = SAMPLE_SECONDS) -> None:
    """A worker's background task. ``primary``: the node's first worker, which also reads the newest
    backup and counts etcd elections (once per node, not once per worker)."""
    store_metrics.count_elections(primary)
    while True:
        try:
            backup = await _newest_backup(keyring) if primary else (False, None)
            sample_once(sessions, keyring, backup=backup)
        except asyncio.CancelledError:
            raise
        except Exception:  # metrics must never take a worker down
            log.exception("sampling the metrics failed")
        await asyncio.sleep(interval)
