"""Operator actions on accounts, run from the CLI straight against the backends."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from livecomments.comment_service.auth import ROLES, Accounts, change_role, check_credentials
from livecomments.comment_service.passwords import check_new_password
from livecomments.coord import ZK
from livecomments.coord.membership import WorkerLease
from livecomments.kernel.errors import NotFound, ValidationError
from livecomments.kernel.ids import Snowflake
from livecomments.kernel.redis.timed import connect as connect_redis
from livecomments.kernel.settings import BackendSettings
from livecomments.kernel.store import Store

# Accounts needs a signing secret for tokens; these commands never issue one.
_UNUSED_SECRET = "x" * 32


async def create_admin(settings: BackendSettings, username: str, password: str) -> dict[str, Any]:
    """A new user with the admin role (the first admin of a fresh installation)."""
    username, password = check_credentials({"username": username, "password": password})
    check_new_password(username, password)
    store = Store(settings.mongo_uri, settings.mongo_db, settings.mongo_timeout)
    redis: Redis = connect_redis(settings)
    zk = ZK(settings.zk_hosts, settings.zk_root, timeout=settings.zk_timeout, auth=settings.zk_auth)
    lease = WorkerLease(zk)  # user ids are Snowflakes: this process needs a worker id too
    await store.start(create_indexes=True)
    try:
        await zk.start()
        worker = await lease.acquire()
        accounts = Accounts(
            store, redis, settings.redis_prefix, _UNUSED_SECRET, 60, settings.password_hashing
        )
        return await accounts.register(username, password, Snowflake(worker), role="admin")
    finally:
        await lease.release()
        await zk.stop()
        await redis.aclose()
        await store.stop()


async def set_role(settings: BackendSettings, username: str, role: str) -> dict[str, Any]:
    if role not in ROLES:
        raise ValidationError(f"roles are {', '.join(ROLES)}", code="invalid_role")
    store = Store(settings.mongo_uri, settings.mongo_db, settings.mongo_timeout)
    await store.start(create_indexes=False)
    try:
        user = await store.find_user(username.lower())
        if user is None:
            raise NotFound(f"no user named {username!r}", code="user_not_found")
        return await change_role(store, user["_id"], role)  # never the last admin
    finally:
        await store.stop()
