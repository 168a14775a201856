"""API tokens in the database: issue, look up, list, revoke, and the first-start bootstrap.

A token is `ltk_` and 43 characters of URL-safe base64 (256 random bits). Only its SHA-256
is stored. Looking a token up is one probe of a unique index on that hash, and the final
comparison is constant-time, so neither the stored value nor timing tells an attacker
anything. Every request looks its token up afresh (no cache), which is what makes a
revocation effective at once in every gunicorn worker and on every host.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Connection, bindparam, func, select, update

from llm_train_api.domain import Principal, Role
from llm_train_api.store.database import Database
from llm_train_api.store.rows import from_us, now_us
from llm_train_api.store.tables import api_tokens

log = logging.getLogger("llm_train_api.auth")

TOKEN_PREFIX = "ltk_"
BOOTSTRAP_FILENAME = "admin-token"
BOOTSTRAP_NAME = "admin"
# Principal names become folder names (a user's datasets) and appear in events.
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
# Serialises issuing tokens (the bootstrap, a name's role) across processes and hosts.
_PG_BOOTSTRAP_LOCK = 0x6C6C6D5F626F  # "llm_bo"

_LOOKUP = select(api_tokens.c.id, api_tokens.c.name, api_tokens.c.role,
                 api_tokens.c.token_hash).where(
    api_tokens.c.token_hash == bindparam("token_hash"), api_tokens.c.revoked_us.is_(None))
_INSERT = api_tokens.insert().returning(api_tokens.c.id)
_LIST = select(api_tokens).order_by(api_tokens.c.id)
_COUNT = select(func.count()).select_from(api_tokens)
# The roles a name already has, revoked tokens included: their jobs and datasets still
# belong to the name.
_ROLES_OF = select(api_tokens.c.role).where(api_tokens.c.name == bindparam("name")).distinct()


class TokenError(ValueError):
    """A token operation that cannot be done as asked (bad name or role, unknown token)."""


class NameTaken(TokenError):
    """The name belongs to a principal of another role."""


@dataclass(frozen=True)
class TokenInfo:
    id: int
    name: str
    role: Role
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name or "") or name in (".", ".."):
        raise TokenError(
            f"Invalid name {name!r}: 1-64 characters, lowercase letters, digits, '.', '_' "
            "and '-', starting with a letter or digit.")
    return name


def check_role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise TokenError(
            f"Invalid role {role!r}: one of {', '.join(r.value for r in Role)}.") from None


class TokenRepository:
    """Tokens live in the jobs database, written through its write path."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def create(self, name: str, role: str | Role) -> tuple[TokenInfo, str]:
        """Issue a token; returns its record and the secret, which is never stored.

        A principal is its name: jobs and datasets belong to the name, whatever token made
        them. Another token for a name is another key of the same principal (rotation),
        so its role must be the one the name already has (NameTaken otherwise), whether
        the earlier tokens are active or revoked. The check and the insert share one
        transaction under the database's lock (SQLite's write lock, an advisory lock on
        PostgreSQL), so two processes cannot give one name two roles.
        """
        name, role = check_name(name), check_role(str(getattr(role, "value", role)))
        secret = new_secret()

        def work(conn: Connection) -> TokenInfo:
            self.database.lock(conn, _PG_BOOTSTRAP_LOCK)
            roles = set(conn.execute(_ROLES_OF, {"name": name}).scalars()) - {role.value}
            if roles:
                raise NameTaken(
                    f"The name {name!r} already belongs to a principal with role "
                    f"{', '.join(sorted(roles))}; a token for it must have that role. "
                    "Choose another name.")
            return self._insert(conn, name, role, secret)

        return self.database.write(work), secret

    def _insert(self, conn: Connection, name: str, role: Role, secret: str) -> TokenInfo:
        ts = now_us()
        prefix = secret[: len(TOKEN_PREFIX) + 6]
        token_id = conn.execute(_INSERT, {
            "name": name, "role": role.value, "token_hash": hash_token(secret),
            "prefix": prefix, "created_us": ts}).scalar_one()
        return TokenInfo(token_id, name, role, prefix, from_us(ts), None)

    def authenticate(self, secret: str) -> Principal | None:
        """The principal a presented token stands for; None if unknown or revoked."""
        if not secret.startswith(TOKEN_PREFIX) or len(secret) > 256:
            return None
        digest = hash_token(secret)
        with self.database.reading() as conn:
            row = conn.execute(_LOOKUP, {"token_hash": digest}).first()
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            return None
        return Principal(row.name, Role(row.role), row.id)

    def list(self) -> list[TokenInfo]:
        with self.database.reading() as conn:
            rows = conn.execute(_LIST).all()
        return [TokenInfo(r.id, r.name, Role(r.role), r.prefix, from_us(r.created_us),
                          from_us(r.revoked_us)) for r in rows]

    def revoke(self, *, token_id: int | None = None, name: str | None = None) -> int:
        """Revoke one token by id, or every token of a name; returns how many."""
        if (token_id is None) == (name is None):
            raise TokenError("give a token id or a name")
        where = (api_tokens.c.id == token_id) if token_id is not None \
            else (api_tokens.c.name == name)
        stmt = (update(api_tokens).where(where, api_tokens.c.revoked_us.is_(None))
                .values(revoked_us=now_us()))
        count = self.database.write(lambda conn: conn.execute(stmt).rowcount)
        if not count:
            what = f"id {token_id}" if token_id is not None else f"name {name!r}"
            raise TokenError(f"No active token with {what}.")
        return count

    def bootstrap(self, instance_path: str | os.PathLike[str]) -> Path | None:
        """On the very first start (no token was ever issued), write an admin token to a
        0600 file in the instance folder. Returns its path when this call wrote it.

        Several gunicorn workers (or hosts) start at once: the check and the insert share
        one transaction under the database's lock (SQLite's write lock, an advisory lock
        on PostgreSQL), so exactly one of them issues it. The file is written under that
        lock before the token is committed, so the token never exists without its file.
        """
        path = Path(instance_path) / BOOTSTRAP_FILENAME

        def work(conn: Connection) -> bool:
            self.database.lock(conn, _PG_BOOTSTRAP_LOCK)
            if conn.execute(_COUNT).scalar_one():
                return False
            secret = new_secret()
            _write_private(path, secret + "\n")
            self._insert(conn, BOOTSTRAP_NAME, Role.ADMIN, secret)
            return True

        if not self.database.write(work):
            return None
        log.warning("No API token existed: wrote an admin token to %s (mode 0600). Use it "
                    "as `Authorization: Bearer <token>`; create others with `llm-train-api "
                    "tokens create`.", path)
        return path


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by the owner only, atomically (tmp + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
