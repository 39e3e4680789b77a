"""requests sessions of the cloud clients (GCS, Pub/Sub) that read the process environment once per
host instead of once per request.

For every request, requests looks its proxies (``HTTPS_PROXY``, ``NO_PROXY``, ...) and CA bundle up
in ``os.environ`` (``Session.merge_environment_settings``), decoding every variable: about a fifth
of the client CPU of a small GCS upload or Pub/Sub pull (bench/small_files.py, profiled). A
service's environment does not change while it runs, so the answer for a host is kept.
"""
from __future__ import annotations

from urllib.parse import urlsplit

import requests

# A process talks to a handful of hosts (storage, Pub/Sub); the bound is only a guard.
_MAX_KEPT = 64


def read_environment_once(session: requests.Session) -> requests.Session:
    """``session``, its environment settings kept per (scheme, host) and request options. A
    request given proxies of its own is merged as requests does."""
    merge = session.merge_environment_settings
    kept: dict = {}

    def merge_environment_settings(url, proxies, stream, verify, cert):
        if proxies:
            return merge(url, proxies, stream, verify, cert)
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc, stream, verify, cert, session.trust_env,
               tuple(sorted(session.proxies.items())), session.stream, session.verify, session.cert)
        settings = kept.get(key)
        if settings is None:
            if len(kept) >= _MAX_KEPT:
                kept.clear()
            settings = kept[key] = merge(url, {}, stream, verify, cert)
        return {**settings, "proxies": dict(settings["proxies"])}

    session.merge_environment_settings = merge_environment_settings
    return session
