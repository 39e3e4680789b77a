"""deploy/Dockerfile and .dockerignore, checked without a docker engine: the image's user is not
root, every file it copies is in the build context, and what its commands name resolves in a copy
of /app laid out as the Dockerfile lays it (the build context as .dockerignore leaves it)."""
from __future__ import annotations

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tomllib

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, ROOT

DOCKERFILE = DEPLOY / "Dockerfile"
SERVICES = sorted(path.parent.name for path in (ROOT / "services").glob("*/service.py"))


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments dropped, continuation lines joined."""
    found, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        found.append((keyword.upper(), arguments.strip()))
        pending = ""
    return found


def stages(text: str) -> list[list[tuple[str, str]]]:
    result = []
    for keyword, arguments in instructions(text):
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, arguments))
    return result


def _pattern(pattern: str) -> re.Pattern:
    """A .dockerignore pattern (Go filepath.Match plus **), as a regex over slash-separated paths."""
    pattern = pattern.strip().strip("/")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def ignore_rules() -> list[tuple[re.Pattern, bool]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((_pattern(line.lstrip("!")), negated))
    return rules


def in_context(relative: str, rules) -> bool:
    """Whether the build context holds ``relative``: the last rule matching it, or a folder above
    it, decides (as docker does)."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    included = True
    for pattern, negated in rules:
        if any(pattern.match(prefix) for prefix in prefixes):
            included = negated
    return included


def context_files() -> list[str]:
    """The repository's tracked files that the build context would carry."""
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    rules = ignore_rules()
    return [path for path in tracked if (ROOT / path).is_file() and in_context(path, rules)]


def final_stage():
    return stages(DOCKERFILE.read_text())[-1]


def copies(stage) -> list[tuple[list[str], str]]:
    """(sources, destination) of a stage's COPY instructions from the build context."""
    result = []
    for keyword, arguments in stage:
        if keyword != "COPY":
            continue
        words = [word for word in shlex.split(arguments) if not word.startswith("--")]
        if any(argument.startswith("--from") for argument in shlex.split(arguments)):
            continue
        result.append((words[:-1], words[-1]))
    return result


def command(stage) -> list[str]:
    (arguments,) = [arguments for keyword, arguments in stage if keyword == "CMD"][-1:]
    return yaml.safe_load(arguments)  # the exec form is a JSON array


def test_the_image_runs_as_a_numeric_non_root_user():
    users = [arguments for keyword, arguments in final_stage() if keyword == "USER"]
    assert users, "the final stage sets no USER: the container would run as root"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) != 0, f"USER {users[-1]}: a numeric uid other than 0 (runAsNonRoot)"
    assert not group or (group.isdigit() and int(group) != 0)


def test_every_copied_source_is_in_the_build_context():
    files = context_files()
    every_stage = [copy for stage in stages(DOCKERFILE.read_text()) for copy in copies(stage)]
    assert every_stage, "no COPY from the build context"
    for sources, _ in every_stage:
        for source in sources:
            source = source.rstrip("/")
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            carried = [path for path in files if path == source or path.startswith(source + "/")]
            assert carried, f"COPY {source}: .dockerignore leaves it out of the build context"


def test_the_context_leaves_out_what_the_image_does_not_need():
    files = context_files()
    assert not [path for path in files if "/tests/" in f"/{path}"], "tests are in the build context"
    assert not [path for path in files if path.startswith(("var/", ".venv/", ".git/", "bench/", "docs/"))]
    assert not [path for path in files if path.startswith("devtools/")], "development tooling is in the build context"
    assert "ops/cli.py" in files and "pyproject.toml" in files


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """/app (the WORKDIR) as the build stage leaves it: its COPYs from the build context, as docker
    places them (a folder's contents into the destination folder, a file into a destination
    ending in / or as the destination), then tests removed."""
    app = tmp_path_factory.mktemp("image") / "app"
    app.mkdir()
    files = set(context_files())
    for stage in stages(DOCKERFILE.read_text())[:-1]:
        for sources, destination in copies(stage):
            for source in (source.rstrip("/") for source in sources):
                if (ROOT / source).is_dir():
                    placed = {path: app / destination / path[len(source) + 1:]
                              for path in files if path.startswith(source + "/")}
                elif destination.endswith("/"):
                    placed = {source: app / destination / pathlib.PurePath(source).name}
                else:
                    placed = {source: app / destination}
                for path, target in placed.items():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / path, target)
    for tests in list(app.rglob("tests")):
        shutil.rmtree(tests)
    return app


def in_image(app, *arguments: str) -> subprocess.CompletedProcess:
    """Python run in the copy of /app, importing the project only from there."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("DSS_", "AMQP_"))},
           "PYTHONPATH": str(app), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, *arguments], cwd=app, env=env, capture_output=True, text=True, timeout=120)


def test_the_default_command_runs_the_gateway_from_the_image(app):
    cmd = command(final_stage())
    assert cmd[:3] == ["nameko", "run", "--config"], cmd
    config, module = cmd[3], cmd[4]
    assert (app / config).is_file(), f"{config} is not in the image"
    assert module == "services.gateway.service"


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_module_and_config_resolve_in_the_image(app, service):
    assert (app / "services" / service / "config.yml").is_file()
    done = in_image(app, "-c", f"import eventlet; eventlet.monkey_patch(); import services.{service}.service as m; "
                               "print(m.__file__)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(app)), f"imported from outside the image: {done.stdout}"


def test_dss_ops_runs_from_the_image(app):
    done = in_image(app, "-m", "ops.cli", "--help")
    assert done.returncode == 0, done.stderr
    assert "dead-letters" in done.stdout and "replicas" in done.stdout


def test_the_setup_jobs_provisioning_and_no_development_tooling_is_in_the_image(app):
    """The compose file's and the local Kubernetes overlay's setup jobs run ops.provision in the image."""
    done = in_image(app, "-c", "from ops import provision; print(provision.create_buckets.__module__)")
    assert done.returncode == 0 and done.stdout.strip() == "ops.provision", done.stderr
    assert not (app / "devtools").exists()


def test_the_runtime_dependencies_are_pinned_and_installable_as_the_build_lists_them():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {re.split(r"[=<>~!]", line)[0].strip().lower().replace("_", "-")
            for line in (ROOT / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")}
    for requirement in project["dependencies"]:
        name = re.split(r"[=<>~!\[ ]", requirement)[0].lower().replace("_", "-")
        assert name in pins, f"{name}: not pinned in constraints.txt, so the image would not be reproducible"
    build = stages(DOCKERFILE.read_text())[0]
    runs = " ".join(arguments for keyword, arguments in build if keyword == "RUN")
    assert "-c constraints.txt" in runs


def test_the_ports_exposed_are_those_of_the_service_configs():
    exposed = {int(port) for keyword, arguments in final_stage() if keyword == "EXPOSE"
               for port in arguments.split()}
    for service in SERVICES:
        text = (ROOT / "services" / service / "config.yml").read_text()
        port = int(re.search(r"METRICS_PORT: \$\{\w+:(\d+)\}", text).group(1))
        assert port in exposed, f"{service}'s metrics port {port} is not EXPOSEd"
    assert 8080 in exposed
    env = " ".join(arguments for keyword, arguments in final_stage() if keyword == "ENV")
    assert "DSS_GATEWAY_ADDRESS=0.0.0.0:8080" in env  # the default (loopback) would be unreachable
