"""Reaching the real PostgreSQL and Redis, with a message that says how to start them."""

from __future__ import annotations

import os

import psycopg
import redis

PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

PG_HINT = (
    "PostgreSQL is not answering at {url}. Start it with "
    "'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start' "
    "(or run ./dev test, which starts local services), or point TEST_PG_ADMIN_URL at one."
)
REDIS_HINT = (
    "Redis is not answering at {url}. Start it with "
    "'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no' "
    "(or run ./dev test), or point TEST_REDIS_URL at one."
)


def pg_admin_connection() -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        raise RuntimeError(PG_HINT.format(url=PG_ADMIN_URL) + f" ({exc})") from exc


def sqlalchemy_url(dbname: str) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{dbname}"


def create_database(dbname: str) -> str:
    with pg_admin_connection() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{dbname}"')
    return sqlalchemy_url(dbname)


def drop_database(dbname: str) -> None:
    with pg_admin_connection() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def redis_client() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise RuntimeError(REDIS_HINT.format(url=REDIS_URL) + f" ({exc})") from exc
    return client
