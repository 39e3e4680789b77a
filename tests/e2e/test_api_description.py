"""The served API description against the running stack: schemathesis generates requests from
/v1/swagger.json and checks every answer against it.

The stack is the e2e one (the gateway and every service in one runner, real broker and emulators,
real HTTP). Schemathesis runs as its own process (`st run`), so this process only serves. Every
phase and check is on: stateless (the description's examples, coverage of each constraint's
edges, fuzzing) and stateful (sequences along the description's `x-links`, e.g. PUT
/bundles/{uuid} -> GET, PATCH, DELETE it), positive and negative data, with an administrator's
bearer token where the description's `security` asks for one, and a webhook receiver the stack may
call as the callback of half the subscriptions. The run is bounded and reproducible: a fixed seed,
MAX_EXAMPLES per operation, one worker, no example database and no cache.

Refusals that depend on stored content (documented, with their codes) are told apart from
mismatches by the `filter_failure` hook of schemathesis_hooks.py.
"""
import pathlib
import subprocess
import sys

import pytest

from devtools.receivers import Receiver
from tests.e2e.conftest import start_api

SEED = 20251111
MAX_EXAMPLES = 25
RUN_TIMEOUT_S = 900
PHASES = "examples,coverage,fuzzing,stateful"
ST = pathlib.Path(sys.executable).with_name("st")
HOOKS = pathlib.Path(__file__).with_name("schemathesis_hooks.py")


@pytest.fixture
def webhooks():
    """Where half the generated subscriptions point: a receiver the stack may call (loopback is
    allowed below), so that subscriptions get made and the stateful phase reads and deletes them."""
    server = Receiver({})
    yield server
    server.stop()


# The description as each access policy serves it (services/gateway/access.py); in `private`
# every operation declares `security`, so the `ignored_auth` check asks each for its 401.
ACCESS_MODES = {"public": {}, "private": {"DSS_ACCESS_POLICY": "private", "DSS_AUTH_READ_GROUPS": "readers"}}


@pytest.fixture(params=sorted(ACCESS_MODES))
def fuzzed_api(service_config, web_config, runner_factory, webhooks, request):
    return start_api({**service_config, "DSS_MAX_REQUEST_BYTES": 64 * 1024, "DSS_NOTIFY_ALLOWED_HOSTS": "127.0.0.1",
                      **ACCESS_MODES[request.param]}, web_config, runner_factory)


def config_file(tmp_path, token: str, callback_url: str) -> pathlib.Path:
    """A schemathesis.toml: the bearer token for the description's security scheme, the hooks, a
    reachable callback URL in half the subscriptions."""
    path = tmp_path / "schemathesis.toml"
    # No cache: schemathesis would replay crashes it stored on an earlier run (and write them
    # into the work tree), so a run would depend on more than the seed.
    path.write_text(f'hooks = "{HOOKS}"\n\n'
                    '[cache]\nenabled = false\n\n'
                    f'[auth.openapi.OauthSecurity]\napi_key = "Bearer {token}"\n\n'
                    f'[dictionaries.callbacks]\nvalues = ["{callback_url}"]\n\n'
                    '[[operations]]\ninclude-operation-id = "putSubscription"\n'
                    'parameters = { "body.callback_url" = { dictionary = "callbacks", probability = 0.5 } }\n')
    return path


def run_schemathesis(api: str, config: pathlib.Path, report_dir: pathlib.Path) -> subprocess.CompletedProcess:
    command = [str(ST), "--config-file", str(config), "run", f"{api}/swagger.json",
               "--phases", PHASES, "--checks", "all", "--mode", "all",
               "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES), "--generation-database", "none",
               # JSON text is Unicode: a lone surrogate is refused (400 invalid_json), not a valid string.
               "--generation-codec", "utf-8",
               "--workers", "1", "--request-timeout", "30", "--max-redirects", "0", "--no-color",
               "--report", "ndjson", "--report-dir", str(report_dir)]
    return subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=report_dir.parent)


def test_the_api_answers_as_its_description_says(fuzzed_api, mint_token, webhooks, tmp_path):
    token = mint_token("admin@example.org", ["dbio"])  # an administrator: bundle deletion is exercised too
    config = config_file(tmp_path, token, webhooks.url("/notifications"))
    result = run_schemathesis(fuzzed_api, config, tmp_path / "report")
    output = result.stdout + result.stderr
    (tmp_path / "schemathesis.log").write_text(output)
    assert result.returncode == 0, output[-30000:]
    assert "No issues found" in output or " passed" in output, output[-5000:]
