"""The access policy of a deployment: which operations of the API need a token, and who may read.

``swagger.yml`` declares ``security`` on the operations that always need a token: writes, and the
operations that act for their caller (subscriptions, collections, bundle checkout). That is the
``public`` policy of ``DSS_ACCESS_POLICY``, the store's default, where every other read is
anonymous. ``private`` protects every operation but the description itself (``getSwagger``:
clients read it to learn which operations want their token), the DRS routes included; a
comma-separated list of operationIds protects those besides the default ones. A name the
description does not have stops the gateway at start-up: a typo must not leave data open.

With ``DSS_AUTH_READ_GROUPS`` set, a token opens the operations that need one but write nothing
only to members of those groups or of ``DSS_AUTH_ALLOWED_GROUPS`` (writers read what they
write); writes keep their own check (``Authenticator.require_writer``).

The gateway builds one ``AccessPolicy`` at start (``dependencies.Auth``); each route's auth step
asks it (``AuthAPI.reader``), and ``apidoc`` declares ``security`` on exactly
``AccessPolicy.protected``, so that the dbio and hca clients send their tokens where needed.
The page at ``/``, its assets, ``/internal/*`` and the metrics stay open in every mode.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

from nameko.exceptions import ConfigurationError

from services.gateway import apidoc
from shared.exceptions import Forbidden

PUBLIC = "public"
PRIVATE = "private"
# Never protected: the description tells clients which operations need their token.
ALWAYS_OPEN = frozenset({"getSwagger"})


def _template_operations() -> tuple[frozenset[str], frozenset[str]]:
    """(every operationId of the description, those it declares ``security`` on)."""
    template = apidoc.template()
    every, secured = set(), set()
    for _, _, operation in apidoc.operations(template):
        every.add(operation["operationId"])
        if operation.get("security"):
            secured.add(operation["operationId"])
    return frozenset(every), frozenset(secured)


def protected_operations(value: str | Iterable[str]) -> frozenset[str]:
    """The operationIds that need a token under the ``DSS_ACCESS_POLICY`` value ``value``."""
    every, secured = _template_operations()
    names = [part.strip() for part in (value.split(",") if isinstance(value, str) else value) if part.strip()]
    if names == [PUBLIC]:
        return secured
    if names == [PRIVATE]:
        return every - ALWAYS_OPEN
    if not names or PUBLIC in names or PRIVATE in names:
        raise ConfigurationError(f"DSS_ACCESS_POLICY must be `{PUBLIC}`, `{PRIVATE}` or a comma-separated list "
                                 f"of operationIds, not {','.join(names)!r}")
    unknown = sorted(set(names) - every)
    if unknown:
        raise ConfigurationError(f"DSS_ACCESS_POLICY names operations the API does not have: {', '.join(unknown)} "
                                 f"(operationIds of /v1/swagger.json: {', '.join(sorted(every))})")
    always_open = sorted(set(names) & ALWAYS_OPEN)
    if always_open:
        raise ConfigurationError(f"DSS_ACCESS_POLICY cannot protect {', '.join(always_open)}: clients read the "
                                 "description to learn which operations need a token")
    return secured | frozenset(names)


@dataclasses.dataclass(frozen=True)
class AccessPolicy:
    protected: frozenset[str]          # operationIds that need a token
    read_groups: tuple[str, ...] = ()  # empty: any valid token reads
    write_groups: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings) -> "AccessPolicy":
        return cls(protected=protected_operations(settings.access_policy),
                   read_groups=tuple(settings.auth_read_groups),
                   write_groups=tuple(settings.auth_allowed_groups))

    @classmethod
    def public(cls) -> "AccessPolicy":
        return cls(protected=protected_operations(PUBLIC))

    def needs_token(self, operation_id: str) -> bool:
        return operation_id in self.protected

    def require_reader(self, caller: dict) -> dict:
        """``caller`` if it may use an operation that needs a token and writes nothing."""
        if self.read_groups and not set(caller.get("groups") or ()) & {*self.read_groups, *self.write_groups}:
            raise Forbidden("you are in no group allowed to read from this store (DSS_AUTH_READ_GROUPS)",
                            "read_not_allowed")
        return caller
