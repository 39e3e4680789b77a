"""Webhook delivery: one signed HTTP attempt to a subscription's callback URL, safe against SSRF.

The notifier calls ``deliver(subscription, payload, attempt, settings)`` once per attempt; broker
retries (``shared.retry``) call it again after each delay of ``DSS_NOTIFY_RETRY_DELAYS`` (by
default 1 min, 10 min, 1 h, 6 h, 17 h, then daily for six days, as the original DSS: about a
week in all; then dead-lettered).
``deliver`` returns a ``DeliveryResult`` for a 2xx answer and otherwise raises a
``DeliveryFailed``: ``RetryableDeliveryError`` for anything that may work later (timeouts,
connection errors, TLS errors, every non-2xx answer including 3xx, 408, 429 and 5xx: the original
DSS retried them all), ``PermanentDeliveryError`` when trying again cannot help (the destination is
refused by policy, the subscription is malformed). ``give_up_on=(PermanentDeliveryError,)``
dead-letters those at once.

What one attempt sends (the original DSS's contract, plus RFC 9421):
- ``method`` POST (default) or PUT; ``encoding`` application/json (default) or
  multipart/form-data with the subscription's ``form_fields`` plus the payload JSON in the field
  ``payload_form_field`` (default ``payload``);
- headers ``User-Agent``, ``X-DSS-Delivery-Attempt`` (1 for the first attempt), ``Date``,
  ``Digest`` (SHA-256 of the body, draft-cavage) and ``Content-Digest`` (RFC 9530);
- with ``hmac_secret_key``: two HMAC-SHA256 signatures with key id ``hmac_key_id`` (default: the
  subscription's uuid): ``Signature-Input``/``Signature`` (RFC 9421, label ``dss``, tag
  ``dss-webhook``, over ``@method @target-uri content-type content-digest``, ``created``, made with
  the ``http-message-signatures`` library) and the draft-cavage ``Authorization: Signature
  keyId=…,algorithm="hmac-sha256",headers="(request-target) host date digest",signature=…`` that
  receivers of the original DSS verify.
Redirects are never followed, and only a 2xx counts.

Bounds of one attempt, whatever the receiver does: ``DSS_NOTIFY_CONNECT_TIMEOUT`` and
``DSS_NOTIFY_READ_TIMEOUT`` for each wait, ``DSS_NOTIFY_ATTEMPT_TIMEOUT`` in all (DNS included:
an answer trickled a byte at a time passes the per-wait timeouts), no byte of a 2xx answer's body
read and ``ERROR_EXCERPT_BYTES`` of another's, the status line and headers limited by
``http.client`` (100 headers, 64 KiB a line). What is sent is bounded by the subscription's
limits (attachments ``ATTACHMENT_MAX_BYTES`` in all, form fields, query lengths).

SSRF: the callback host is resolved once; loopback, private (RFC 1918, ULA), link-local (the
cloud metadata address 169.254.169.254 included), unspecified, multicast, reserved and other
non-public addresses are refused unless ``DSS_NOTIFY_ALLOWED_HOSTS`` names the host or a CIDR
containing the address. The connection then goes to the very address that was checked (the TCP
connection is made to the IP; ``Host``, TLS SNI and certificate checks keep the name), so a DNS
answer that changes between check and connect (DNS rebinding) cannot redirect it. No proxy from
the environment is used: a proxy would make the connection the check did not see.
``validate_callback_url`` applies the same rules when a subscription is made (typed 400s).

Secrets: the key, signatures and callback URL queries (which may hold tokens) are never logged.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime
import email.utils
import functools
import hashlib
import hmac
import ipaddress
import logging
import socket
import time
import urllib.parse
from typing import Any, Callable, Iterable, Mapping, Sequence

import certifi
import eventlet
import requests
import urllib3
from http_message_signatures import ContentDigest, HTTPMessageSigner, MappingKeyResolver, algorithms
from prometheus_client import Counter, Histogram
from urllib3.exceptions import (ConnectTimeoutError, HTTPError, NewConnectionError, ProtocolError,
                                ReadTimeoutError, SSLError)

from shared import tracing
from shared.config import Settings
from shared.exceptions import InvalidParameter, Unavailable
from shared.schemas import (DEFAULT_WEBHOOK_ENCODING, DEFAULT_WEBHOOK_METHOD, MAX_CALLBACK_URL_LENGTH,
                            WEBHOOK_ENCODINGS, WEBHOOK_METHODS)

from services.notifier.notifications import (jmespath_limits, to_json_bytes, validate_attachments,
                                             validate_jmespath_query)

logger = logging.getLogger(__name__)

USER_AGENT = "dss-notifier/1.0"
ATTEMPT_HEADER = "X-DSS-Delivery-Attempt"
SIGNATURE_LABEL = "dss"
SIGNATURE_TAG = "dss-webhook"  # lets a receiver pick our signature with expect_tag among others
SIGNED_COMPONENTS = ("@method", "@target-uri", "content-type", "content-digest")
CAVAGE_HEADERS = ("(request-target)", "host", "date", "digest")
DEFAULT_PAYLOAD_FORM_FIELD = "payload"
MAX_FORM_FIELDS = 64
MAX_FORM_FIELD_BYTES = 8192
ERROR_EXCERPT_BYTES = 200  # of a failed answer's body, for the operator reading the dead letter

DELIVERIES = Counter("dss_webhook_deliveries_total", "Webhook delivery attempts, by outcome (`delivered` or "
                     "the failure code).", ["outcome"])
DELIVERY_SECONDS = Histogram("dss_webhook_delivery_seconds", "Duration of webhook delivery attempts.",
                             buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))


# --- errors and results -------------------------------------------------------------------------

class DeliveryFailed(Exception):
    """One delivery attempt failed. ``code`` says why (machine-readable), ``retryable`` whether
    another attempt may succeed, ``status`` the HTTP status when the receiver answered."""

    retryable = True

    def __init__(self, title: str, code: str, status: int | None = None):
        super().__init__(title, code, status)

    @property
    def title(self) -> str:
        return self.args[0]

    @property
    def code(self) -> str:
        return self.args[1]

    @property
    def status(self) -> int | None:
        return self.args[2]

    def __str__(self) -> str:
        return f"{self.code}: {self.title}"


class RetryableDeliveryError(DeliveryFailed):
    retryable = True


class PermanentDeliveryError(DeliveryFailed):
    retryable = False


@dataclasses.dataclass(frozen=True)
class DeliveryResult:
    status: int
    attempt: int
    address: str  # the IP the request went to
    elapsed: float  # seconds
    signed: bool


# --- callback URLs and addresses -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CallbackTarget:
    url: str  # normalised: lower-case scheme and host, no default port, no fragment
    scheme: str
    host: str  # lower-case; IDNA-encoded; an IPv6 literal without brackets
    port: int
    authority: str  # what Host carries: host[:port], an IPv6 literal in brackets
    target: str  # path?query, the request target

    @property
    def safe_url(self) -> str:
        """The URL without its query (which may carry a token): what logs show."""
        return f"{self.scheme}://{self.authority}{self.target.split('?', 1)[0]}"


def parse_callback_url(url: Any) -> CallbackTarget:
    """Check the form of a callback URL and normalise it; InvalidParameter (``callback_url_invalid``,
    ``callback_url_scheme``) otherwise. Does not resolve the host."""
    if not isinstance(url, str) or not url:
        raise InvalidParameter("callback_url must be a non-empty string", "callback_url_invalid")
    if len(url) > MAX_CALLBACK_URL_LENGTH:
        raise InvalidParameter(f"callback_url is longer than {MAX_CALLBACK_URL_LENGTH} characters",
                               "callback_url_invalid")
    if any(ord(c) <= 0x20 or ord(c) == 0x7f for c in url):
        raise InvalidParameter("callback_url contains spaces or control characters", "callback_url_invalid")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise InvalidParameter(f"callback_url is malformed: {error}", "callback_url_invalid") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidParameter("callback_url must be an http or https URL", "callback_url_scheme")
    if parts.username is not None or parts.password is not None:
        # Credentials in the URL would have to become an Authorization header, which the signature
        # uses; a receiver that needs a secret gets the HMAC key instead.
        raise InvalidParameter("callback_url must not contain credentials (user:password@)", "callback_url_invalid")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise InvalidParameter("callback_url has no host", "callback_url_invalid")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
        try:
            host = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise InvalidParameter("callback_url has an invalid host name", "callback_url_invalid") from None
        if not all(c.isalnum() or c in "-." for c in host):
            raise InvalidParameter("callback_url has an invalid host name", "callback_url_invalid")
    if ip is not None and ip.version == 6 and "%" in host:
        raise InvalidParameter("callback_url must not carry an IPv6 zone", "callback_url_invalid")
    default_port = 443 if scheme == "https" else 80
    port = port or default_port
    shown_host = f"[{host}]" if ip is not None and ip.version == 6 else host
    authority = shown_host if port == default_port else f"{shown_host}:{port}"
    # requote_uri escapes what must be escaped (non-ASCII, spaces) and leaves valid escapes alone:
    # the target sent, the one signed and the one a receiver reconstructs must be the same string.
    path = requests.utils.requote_uri(parts.path or "/")
    target = path + (f"?{requests.utils.requote_uri(parts.query)}" if parts.query else "")
    return CallbackTarget(url=f"{scheme}://{authority}{target}", scheme=scheme, host=host, port=port,
                          authority=authority, target=target)


@functools.lru_cache(maxsize=64)
def _allowed(entries: tuple[str, ...]) -> tuple[frozenset[str], tuple]:
    names, networks = set(), []
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names.add(entry.lower().rstrip("."))
    return frozenset(names), tuple(networks)


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def address_category(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why ``address`` is not a public unicast address (``loopback``, ``private``, ``link-local``,
    ``unspecified``, ``multicast``, ``reserved``, ``non-public``), or None when it is public."""
    if address.version == 6:
        # IPv6 forms that carry an IPv4 address reach that address: judge the embedded one.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return address_category(embedded)
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    if address.is_reserved:
        return "reserved"
    if not address.is_global:  # e.g. 100.64.0.0/10, the carrier-grade NAT range
        return "non-public"
    return None


def permitted(host: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address,
              allowed_hosts: Iterable[str]) -> bool:
    """Whether a delivery to ``host`` may connect to ``address``: it is public, or the host name or
    a CIDR of ``DSS_NOTIFY_ALLOWED_HOSTS`` permits it."""
    if address_category(address) is None:
        return True
    names, networks = _allowed(tuple(allowed_hosts))
    if host.lower().rstrip(".") in names:
        return True
    candidates = [address]
    if address.version == 6 and address.ipv4_mapped:
        candidates.append(address.ipv4_mapped)
    return any(candidate in network for candidate in candidates for network in networks
               if candidate.version == network.version)


Resolver = Callable[[str, int], Sequence[str]]


def resolve_host(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, in the resolver's order, without duplicates."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(info[4][0] for info in infos))


class _Refused(Exception):
    """No address of the host may be used; args: (code, title)."""


def _resolve_checked(target: CallbackTarget, allowed_hosts: Iterable[str], resolve: Resolver):
    """The permitted addresses of ``target`` (resolved once), in order; _Refused when none is."""
    try:
        addresses = [ipaddress.ip_address(target.host)]
    except ValueError:
        addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in resolve(target.host, target.port)]
    if not addresses:
        raise socket.gaierror(socket.EAI_NONAME, "no address")
    usable = [a for a in addresses if permitted(target.host, a, allowed_hosts)]
    if not usable:
        refused = addresses[0]
        raise _Refused("callback_url_forbidden_address",
                       f"callback host {target.host} resolves to {refused}, a {address_category(refused)} address; "
                       "such destinations need DSS_NOTIFY_ALLOWED_HOSTS")
    return usable


def validate_callback_url(url: Any, settings: Settings, *, resolve: Resolver = resolve_host) -> str:
    """Subscription-time check of a callback URL with the rules of delivery; returns the normalised
    URL. InvalidParameter: ``callback_url_invalid``, ``callback_url_scheme``,
    ``callback_url_forbidden_address``, ``callback_url_unresolvable`` (no such host); Unavailable
    when DNS fails temporarily."""
    target = parse_callback_url(url)
    try:
        _resolve_checked(target, settings.notify_allowed_hosts, resolve)
    except _Refused as refused:
        code, title = refused.args
        raise InvalidParameter(title, code) from None
    except socket.gaierror as error:
        if error.errno == socket.EAI_AGAIN:
            raise Unavailable(f"could not resolve callback host {target.host} now; try again",
                              "dns_unavailable") from None
        raise InvalidParameter(f"callback host {target.host} does not resolve", "callback_url_unresolvable") from None
    except OSError as error:
        raise Unavailable(f"could not resolve callback host {target.host}: {error}", "dns_unavailable") from None
    return target.url


# --- subscription fields that shape the request -------------------------------------------------

def _key_id(subscription: Mapping[str, Any]) -> str:
    return subscription.get("hmac_key_id") or str(subscription["uuid"])


def _option(subscription: Mapping[str, Any], name: str, default: str) -> Any:
    # A stored subscription may carry an optional field as null: that means its default.
    value = subscription.get(name)
    return default if value is None else value


def validate_delivery_options(subscription: Mapping[str, Any]) -> None:
    """InvalidParameter unless method, encoding, form fields and HMAC fields are usable. Codes:
    ``invalid_method``, ``invalid_encoding``, ``invalid_form_fields``, ``invalid_payload_form_field``,
    ``invalid_hmac_secret_key``, ``invalid_hmac_key_id``."""
    method = _option(subscription, "method", DEFAULT_WEBHOOK_METHOD)
    if method not in WEBHOOK_METHODS:
        raise InvalidParameter(f"method must be one of {', '.join(WEBHOOK_METHODS)}", "invalid_method")
    encoding = _option(subscription, "encoding", DEFAULT_WEBHOOK_ENCODING)
    if encoding not in WEBHOOK_ENCODINGS:
        raise InvalidParameter(f"encoding must be one of {', '.join(WEBHOOK_ENCODINGS)}", "invalid_encoding")
    form_fields = subscription.get("form_fields")
    if form_fields is not None:
        if not isinstance(form_fields, Mapping) or len(form_fields) > MAX_FORM_FIELDS:
            raise InvalidParameter(f"form_fields must be an object of at most {MAX_FORM_FIELDS} string fields",
                                   "invalid_form_fields")
        for name, value in form_fields.items():
            if (not isinstance(name, str) or not name or not isinstance(value, str)
                    or len(name.encode()) + len(value.encode()) > MAX_FORM_FIELD_BYTES
                    or any(c in name for c in '"\r\n')):
                raise InvalidParameter(
                    f"form field {str(name)[:64]!r} must have a non-empty name without quotes or line breaks and a "
                    f"string value (at most {MAX_FORM_FIELD_BYTES} bytes together)", "invalid_form_fields")
    payload_field = _option(subscription, "payload_form_field", DEFAULT_PAYLOAD_FORM_FIELD)
    if not isinstance(payload_field, str) or not payload_field or any(c in payload_field for c in '"\r\n'):
        raise InvalidParameter("payload_form_field must be a non-empty name without quotes or line breaks",
                               "invalid_payload_form_field")
    if form_fields and payload_field in form_fields:
        raise InvalidParameter(f"form_fields must not contain the payload field {payload_field!r}",
                               "invalid_payload_form_field")
    key = subscription.get("hmac_secret_key")
    if key is not None and (not isinstance(key, str) or not key):
        raise InvalidParameter("hmac_secret_key must be a non-empty string", "invalid_hmac_secret_key")
    key_id = subscription.get("hmac_key_id")
    if key_id is not None and (not isinstance(key_id, str) or not key_id or len(key_id) > 256
                               or not all(0x20 <= ord(c) < 0x7f and c not in '"\\' for c in key_id)):
        # It travels as a quoted string in two headers: printable ASCII without quotes or backslashes.
        raise InvalidParameter("hmac_key_id must be 1-256 printable ASCII characters without quotes or backslashes",
                               "invalid_hmac_key_id")


def validate_subscription(subscription: Mapping[str, Any], settings: Settings, *,
                          resolve: Resolver = resolve_host) -> str:
    """Subscription-time checks of everything delivery and attachments depend on (not ``es_query``,
    which the search backend judges): the callback URL, method, encoding, form fields, HMAC fields,
    attachments and, for a JMESPath subscription, ``jmespath_query`` (expressions within the cost
    model's ``DSS_NOTIFY_JMESPATH_MAX_GROWTH``). Returns the normalised callback URL; raises
    InvalidParameter (400) or Unavailable (DNS down)."""
    validate_delivery_options(subscription)
    limits = jmespath_limits(settings)
    if subscription.get("es_query") is None and subscription.get("jmespath_query") is not None:
        validate_jmespath_query(subscription["jmespath_query"], limits)
    validate_attachments(subscription.get("attachments"), limits)
    return validate_callback_url(subscription.get("callback_url"), settings, resolve=resolve)


# --- building and signing the request ------------------------------------------------------------

def encode_body(subscription: Mapping[str, Any], payload: Any) -> tuple[bytes, str]:
    """(body, content type) of ``payload`` in the subscription's encoding."""
    payload_json = to_json_bytes(payload)
    if _option(subscription, "encoding", DEFAULT_WEBHOOK_ENCODING) == "multipart/form-data":
        fields = list((subscription.get("form_fields") or {}).items())
        fields.append((_option(subscription, "payload_form_field", DEFAULT_PAYLOAD_FORM_FIELD),
                       payload_json.decode("utf-8")))
        return urllib3.encode_multipart_formdata(fields)
    return payload_json, "application/json"


def cavage_signing_string(method: str, target: str, headers: Mapping[str, str]) -> bytes:
    """The draft-cavage (HTTP Signatures draft 10) signing string over
    ``(request-target) host date digest``."""
    lower = {name.lower(): value for name, value in headers.items()}
    lines = [f"(request-target): {method.lower()} {target}"]
    lines += [f"{name}: {lower[name]}" for name in CAVAGE_HEADERS[1:]]
    return "\n".join(lines).encode("utf-8")


def cavage_authorization(key: bytes, key_id: str, method: str, target: str, headers: Mapping[str, str]) -> str:
    signature = base64.b64encode(hmac.new(key, cavage_signing_string(method, target, headers),
                                          hashlib.sha256).digest()).decode("ascii")
    return (f'Signature keyId="{key_id}",algorithm="hmac-sha256",headers="{" ".join(CAVAGE_HEADERS)}",'
            f'signature="{signature}"')


def build_request(subscription: Mapping[str, Any], payload: Any, attempt: int, target: CallbackTarget,
                  now: float | None = None) -> requests.PreparedRequest:
    """The request of one attempt, signed when the subscription has a key. ``now`` (epoch seconds)
    fixes the clock of ``Date`` and ``created``."""
    now = time.time() if now is None else now
    method = _option(subscription, "method", DEFAULT_WEBHOOK_METHOD)
    body, content_type = encode_body(subscription, payload)
    headers = {
        "Host": target.authority,
        "User-Agent": USER_AGENT,
        "Content-Type": content_type,
        ATTEMPT_HEADER: str(int(attempt)),
        "Date": email.utils.formatdate(now, usegmt=True),
        "Digest": "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii"),
    }
    prepared = requests.Request(method, target.url, data=body, headers=headers).prepare()
    if prepared.url != target.url:
        # The signature would cover another target than the one sent: never send such a request.
        raise PermanentDeliveryError("callback_url does not survive normalisation unchanged", "callback_url_invalid")
    key = subscription.get("hmac_secret_key")
    if key:
        key_bytes = key.encode("utf-8")
        key_id = _key_id(subscription)
        signer = HTTPMessageSigner(signature_algorithm=algorithms.HMAC_SHA256,
                                   key_resolver=MappingKeyResolver(public_keys={}, private_keys={key_id: key_bytes}))
        # body= makes the library add Content-Digest (RFC 9530, sha-256) and cover it.
        signer.sign(prepared, key_id=key_id, label=SIGNATURE_LABEL, tag=SIGNATURE_TAG,
                    created=datetime.datetime.fromtimestamp(now, datetime.timezone.utc),
                    covered_component_ids=SIGNED_COMPONENTS, body=body)
        prepared.headers["Authorization"] = cavage_authorization(key_bytes, key_id, method, target.target,
                                                                 prepared.headers)
    else:
        prepared.headers["Content-Digest"] = ContentDigest.create(body)  # the same integrity check, unsigned
    return prepared


# --- one attempt -----------------------------------------------------------------------------------

def _pool(target: CallbackTarget, address, timeout: urllib3.Timeout, ca_bundle: str):
    # The pool's host is the checked IP: urllib3 connects there without resolving anything. The
    # name stays in Host (set by build_request), in TLS SNI and in the certificate check.
    if target.scheme == "https":
        return urllib3.HTTPSConnectionPool(str(address), target.port, maxsize=1, timeout=timeout, retries=False,
                                           server_hostname=target.host, assert_hostname=target.host,
                                           cert_reqs="CERT_REQUIRED", ca_certs=ca_bundle or certifi.where())
    return urllib3.HTTPConnectionPool(str(address), target.port, maxsize=1, timeout=timeout, retries=False)


def _excerpt(response) -> str:
    try:
        data = response.read(ERROR_EXCERPT_BYTES, decode_content=False) or b""
    except Exception:  # the answer's status is what counts; its body is only a hint
        return ""
    text = data.decode("utf-8", "replace")
    return "".join(c if c.isprintable() else " " for c in text).strip()


def _send(target: CallbackTarget, address, request: requests.PreparedRequest, timeout: urllib3.Timeout,
          ca_bundle: str) -> tuple:
    pool = _pool(target, address, timeout, ca_bundle)
    try:
        response = pool.urlopen(request.method, target.target, body=request.body, headers=dict(request.headers),
                                redirect=False, retries=False, assert_same_host=False, preload_content=False,
                                release_conn=False, timeout=timeout)
        try:
            excerpt = "" if 200 <= response.status < 300 else _excerpt(response)
            return response.status, response.headers.get("Location"), excerpt
        finally:
            response.release_conn()
    finally:
        pool.close()


class _AttemptDeadline(BaseException):
    """The deadline of one attempt passed (a BaseException: no ``except Exception`` on the way swallows it)."""


def _exchange(target: CallbackTarget, request: requests.PreparedRequest, settings: Settings,
              resolve: Resolver) -> tuple:
    """Resolve the callback host and send ``request`` to its first permitted address that takes a
    connection: (status, Location, excerpt of a failed answer's body, address)."""
    try:
        addresses = _resolve_checked(target, settings.notify_allowed_hosts, resolve)
    except _Refused as refused:
        code, title = refused.args
        raise PermanentDeliveryError(title, code) from None
    except OSError as error:  # gaierror included: DNS may well answer next time
        raise RetryableDeliveryError(f"could not resolve {target.host}: {error}", "dns_failed") from None
    timeout = urllib3.Timeout(connect=settings.notify_connect_timeout, read=settings.notify_read_timeout)
    for index, address in enumerate(addresses):
        try:
            return (*_send(target, address, request, timeout, settings.notify_ca_bundle), address)
        except NewConnectionError as error:  # nothing was sent: the next address may answer
            last_error = RetryableDeliveryError(f"could not connect to {address}: {_reason(error)}",
                                                "connection_failed")
        except ConnectTimeoutError:
            last_error = RetryableDeliveryError(
                f"connecting to {address} timed out after {settings.notify_connect_timeout}s", "connect_timeout")
        except ReadTimeoutError:
            raise RetryableDeliveryError(
                f"no answer from {address} within {settings.notify_read_timeout}s", "read_timeout") from None
        except SSLError as error:
            raise RetryableDeliveryError(f"TLS with {target.host} failed: {_reason(error)}", "tls_failed") from None
        except (ProtocolError, HTTPError, OSError) as error:
            raise RetryableDeliveryError(f"the connection to {address} failed: {_reason(error)}",
                                         "connection_failed") from None
        if index == len(addresses) - 1:
            raise last_error


def deliver(subscription: Mapping[str, Any], payload: Any, attempt: int, settings: Settings, *,
            resolve: Resolver = resolve_host, now: float | None = None) -> DeliveryResult:
    """Make ONE delivery attempt of ``payload`` to the subscription's callback; see the module
    docstring. Returns a DeliveryResult on a 2xx answer, raises RetryableDeliveryError or
    PermanentDeliveryError otherwise. ``resolve`` and ``now`` replace DNS and the clock in tests."""
    started = time.monotonic()
    subscription_id = subscription.get("uuid")
    safe_url = "(invalid callback_url)"
    try:
        try:
            target = parse_callback_url(subscription.get("callback_url"))
            safe_url = target.safe_url
            validate_delivery_options(subscription)
        except InvalidParameter as invalid:
            raise PermanentDeliveryError(invalid.title, invalid.error_code) from None
        request = build_request(subscription, payload, attempt, target, now=now)
        # Timeouts of urllib3 bound each wait; a receiver trickling its answer a byte at a time
        # would pass them all. The deadline bounds the whole attempt (green I/O under eventlet).
        # The attempt as a client span of the worker (urllib3 pools of our own: no instrumentation
        # sees them), its context sent along as a receiver that traces would expect.
        with tracing.span(f"webhook {request.method}", "CLIENT",
                          {"http.request.method": request.method, "url.full": safe_url, "dss.attempt": attempt,
                           "dss.subscription": str(subscription_id)}) as span:
            request.headers.update(tracing.current_headers())
            deadline = eventlet.Timeout(settings.notify_attempt_timeout, _AttemptDeadline())
            try:
                status, location, excerpt, address = _exchange(target, request, settings, resolve)
            except _AttemptDeadline:
                raise RetryableDeliveryError(f"the attempt took more than {settings.notify_attempt_timeout}s in all",
                                             "attempt_timeout") from None
            finally:
                deadline.cancel()
            span.set_attribute("http.response.status_code", status)
        if 300 <= status < 400:
            # Following it would send the payload (and signature) to a destination never checked.
            raise RetryableDeliveryError(f"the receiver redirected ({status}) to {_safe_location(location)}; "
                                         "redirects are not followed", "redirected", status)
        if not 200 <= status < 300:
            detail = f": {excerpt}" if excerpt else ""
            raise RetryableDeliveryError(f"the receiver answered {status}{detail}", "http_status", status)
    except DeliveryFailed as failure:
        elapsed = time.monotonic() - started
        DELIVERIES.labels(failure.code).inc()
        DELIVERY_SECONDS.observe(elapsed)
        logger.warning("webhook attempt %d of subscription %s to %s failed (%s, %s): %s", attempt, subscription_id,
                       safe_url, failure.code, "retryable" if failure.retryable else "permanent", failure.title)
        raise
    elapsed = time.monotonic() - started
    DELIVERIES.labels("delivered").inc()
    DELIVERY_SECONDS.observe(elapsed)
    logger.info("webhook attempt %d of subscription %s delivered to %s (%s): %d in %.3fs", attempt, subscription_id,
                safe_url, address, status, elapsed)
    return DeliveryResult(status=status, attempt=attempt, address=str(address), elapsed=elapsed,
                          signed=bool(subscription.get("hmac_secret_key")))


def _reason(error: BaseException) -> str:
    # urllib3 wraps the OS error; its innermost message is the useful part.
    while error.__context__ is not None and not str(error):
        error = error.__context__
    return " ".join(str(error).split())[:300]


def _safe_location(location: str | None) -> str:
    if not location:
        return "(no Location)"
    return location.split("?", 1)[0][:200]
