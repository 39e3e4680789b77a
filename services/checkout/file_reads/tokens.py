"""The token of a client told to come back while a large copy runs (GET /files answers 301 with
it): which file version it asked for, how many rounds it made, when it started waiting."""
from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re

from marshmallow import ValidationError

from shared.exceptions import illegal_token

from services.checkout.lifetime import DAY
from services.checkout.schemas import TokenFields

MAX_TOKEN_CHARS = 1024
TOKEN_MAX_AGE = 30 * DAY   # a client polls for minutes, not for a month
TOKEN_CLOCK_SKEW = 300.0   # a token may come from a process whose clock runs this much ahead
REFUSED = "the token is not one this service issued for this request: "
_TOKEN_ALPHABET = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclasses.dataclass(frozen=True)
class CheckoutToken:
    """What a client told to come back (301) brings back: the file version it asked for, so that
    every round serves the same version even when a newer one appears meanwhile, how many rounds
    it has made and when it started waiting. base64url of a JSON object, no padding. It grants
    nothing: a made-up token can at most ask for a copy that a plain GET would ask for too."""
    replica: str
    uuid: str
    version: str
    attempt: int
    started: int  # epoch seconds

    @classmethod
    def first(cls, replica: str, uuid: str, version: str, now: float) -> "CheckoutToken":
        return cls(replica, uuid, version, 1, int(now))

    def next(self) -> "CheckoutToken":
        return dataclasses.replace(self, attempt=self.attempt + 1)

    def waited(self, now: float) -> float:
        return max(0.0, now - self.started)

    def encode(self) -> str:
        data = json.dumps(dataclasses.asdict(self), separators=(",", ":"), sort_keys=True).encode()
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")

    @classmethod
    def decode(cls, text: str, now: float) -> "CheckoutToken":
        """The token ``text`` stands for; ``InvalidParameter`` ``illegal_token`` (400) for anything
        else: wrong alphabet or length, not JSON, unknown or missing fields, values out of range."""
        if not isinstance(text, str) or not 0 < len(text) <= MAX_TOKEN_CHARS or not _TOKEN_ALPHABET.match(text):
            raise illegal_token(REFUSED + "not base64url")
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            fields = json.loads(raw.decode("utf-8"))
        except (binascii.Error, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise illegal_token(REFUSED + "not an encoded JSON object") from None
        if not isinstance(fields, dict):
            raise illegal_token(REFUSED + "not an encoded JSON object")
        try:
            loaded = TokenFields().load(fields)
        except ValidationError as error:
            raise illegal_token(REFUSED + f"fields {sorted(error.messages)}") from None
        if not now - TOKEN_MAX_AGE <= loaded["started"] <= now + TOKEN_CLOCK_SKEW:
            raise illegal_token(REFUSED + "expired or from the future")
        return cls(**loaded)

    def check_request(self, replica: str, uuid: str, version: str | None) -> None:
        """A token serves only the request it was issued for (the version the request may omit)."""
        if (replica, uuid) != (self.replica, self.uuid) or version not in (None, self.version):
            raise illegal_token(REFUSED + "issued for another file, version or replica")
