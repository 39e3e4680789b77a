"""shared.sessions: a session's environment settings (proxies, CA bundle) read once per host."""
import requests

from shared.sessions import read_environment_once


def test_the_environment_is_read_once_per_host_as_requests_reads_it(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "storage.internal")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/bundle.pem")
    session = read_environment_once(requests.Session())
    plain = requests.Session()

    for url in ("https://pubsub.example/v1/x", "https://storage.internal/b/o"):
        assert session.merge_environment_settings(url, {}, None, None, None) == \
            plain.merge_environment_settings(url, {}, None, None, None)
    first = session.merge_environment_settings("https://pubsub.example/v1/x", {}, None, None, None)
    assert first["proxies"]["https"] == "http://proxy.example:3128" and first["verify"] == "/etc/ssl/bundle.pem"
    assert "https" not in session.merge_environment_settings("https://storage.internal/c", {}, None, None, None)["proxies"]

    first["proxies"].clear()  # a caller's change stays its own
    monkeypatch.setenv("HTTPS_PROXY", "http://other.example:3128")  # not read again for a known host
    again = session.merge_environment_settings("https://pubsub.example/v1/y", {}, None, None, None)
    assert again["proxies"]["https"] == "http://proxy.example:3128"

    # A request's own proxies are merged as requests does.
    own = session.merge_environment_settings("https://pubsub.example/v1/x", {"https": "http://mine:1"}, None, None, None)
    assert own["proxies"]["https"] == "http://mine:1"
