"""Who a request acts for: a principal (a token's name) and its role."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(str, enum.Enum):
    ADMIN = "admin"  # everything, everyone's jobs and datasets; publishes datasets
    USER = "user"  # creates jobs; sees and changes only its own jobs and datasets
    WORKER = "worker"  # an external executor: reads any job, makes any legal status change


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    token_id: int | None = None  # None: auth is disabled and nobody is identified

    @property
    def anonymous(self) -> bool:
        return self.token_id is None

    @property
    def actor(self) -> str:
        """How the principal appears in job events: `role:name`."""
        return f"{self.role.value}:{self.name}"

    @property
    def owner(self) -> str | None:
        """What new jobs and datasets record as their owner (None when anonymous)."""
        return None if self.anonymous else self.name


ANONYMOUS = Principal("anonymous", Role.ADMIN)
