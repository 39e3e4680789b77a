"""The DSS command-line clients of PyPI, each installed in a virtualenv of its own, cached, and
run as a user would run them (``Cli``).

dbio-cli 1.5.5 and hca 8.0.0 are deprecation stubs: their setup.py exits unless asked to build a
wheel, so pip cannot install (or even download) them. Here the sdist is fetched from the package
index pip is configured with and checked against its pinned sha256, built with ``setup.py
bdist_wheel``, and installed into a fresh virtualenv with its dependencies pinned
(``constraints/``), plus what each needs to run on Python 3.11. The sdist, the wheel and the
virtualenv are kept under ``${XDG_CACHE_HOME:-~/.cache}/dss-compat`` (``DSS_COMPAT_CACHE``
overrides it), keyed by client version, Python version and the pins, so only the first run of a
machine downloads anything. A cached sdist is reused only while it has its pinned sha256, a cached
wheel only while it has the sha256 recorded next to it (``<wheel>.sha256``) when it was built.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import html.parser
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from urllib.parse import urljoin, urldefrag

import requests

from devtools.tokens import create_service_account_key
from services.gateway.auth import issuer_jwks_file

logger = logging.getLogger(__name__)

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_INDEX = "https://pypi.org/simple"
WHEEL_BUILDER = "wheel==0.48.0"  # setup.py bdist_wheel needs it in the building virtualenv
STEP_TIMEOUT_S = 600
CLI_TIMEOUT_S = 300
# Bump when the installation procedure changes, so cached virtualenvs are made again.
PROCEDURE = 1


@dataclasses.dataclass(frozen=True)
class Client:
    name: str               # the command
    distribution: str       # the PyPI project
    version: str
    sdist_sha256: str
    package: str            # the import package (checked after installation)
    config_variable: str    # environment variable naming its config file
    filestore: str          # where `download` keeps the bytes, under --download-dir
    staging_tag_prefix: str  # the prefix of the checksum tags `upload` puts on staged objects
    then_install: tuple[str, ...] = ()  # installed afterwards, over the client's own pins

    @property
    def sdist_name(self) -> str:
        return f"{self.distribution}-{self.version}.tar.gz"

    @property
    def constraints(self) -> pathlib.Path:
        return HERE / "constraints" / f"{self.distribution}.txt"


CLIENTS = {
    "dbio": Client("dbio", "dbio-cli", "1.5.5",
                   "5a53415b313737dafd4aa9432e34ad6556bcdffdc055873385651c5e2aa441f3",
                   "dbio", "DBIO_CONFIG_FILE", ".dbio", "dss-"),
    # hca pins tenacity < 5.1, whose asyncio.coroutine Python 3.11 no longer has.
    "hca": Client("hca", "hca", "8.0.0",
                  "0504f081fc7dd4b74be8cbfa230576c9a37331548cc0d31a67e01bc086180678",
                  "hca", "HCA_CONFIG_FILE", ".hca", "hca-dss-", then_install=("tenacity==8.2.3",)),
}


class InstallError(Exception):
    """A client could not be installed; the message says which step failed and why."""


def cache_root() -> pathlib.Path:
    if os.environ.get("DSS_COMPAT_CACHE"):
        return pathlib.Path(os.environ["DSS_COMPAT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "dss-compat"


def _venv_key(client: Client) -> str:
    digest = hashlib.sha256()
    digest.update(client.constraints.read_bytes())
    digest.update(json.dumps([PROCEDURE, client.then_install, sys.version]).encode())
    python = f"py{sys.version_info.major}.{sys.version_info.minor}"
    return f"{client.distribution}-{client.version}-{python}-{digest.hexdigest()[:12]}"


def install(client: Client) -> pathlib.Path:
    """The virtualenv of ``client`` (its command is ``bin/<name>``), installed if not cached."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    venv = root / "venvs" / _venv_key(client)
    marker = venv / ".dss-compat-installed"
    with open(root / f"{client.distribution}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs at once install once
        if marker.exists():
            return venv
        shutil.rmtree(venv, ignore_errors=True)  # a half-made one (an interrupted run)
        _run([_base_python(), "-m", "venv", str(venv)], "create its virtualenv")
        wheel = _wheel(client, venv)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        _run(pip + ["-c", str(client.constraints), str(wheel)], f"install {wheel.name} and its pinned dependencies")
        if client.then_install:
            _run(pip + list(client.then_install), f"install {' '.join(client.then_install)}")
        _run([str(venv / "bin" / "python"), "-c", f"import {client.package}.dss"], "import it")
        marker.write_text(json.dumps({"client": client.distribution, "version": client.version,
                                      "wheel": wheel.name}) + "\n")
        logger.info("installed %s %s in %s", client.distribution, client.version, venv)
        return venv


def _base_python() -> str:
    # The interpreter this virtualenv was made from: `-m venv` from inside a venv nests oddly.
    return getattr(sys, "_base_executable", None) or sys.executable


def _run(command: list[str], what: str, cwd: str | None = None) -> None:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=STEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise InstallError(f"could not {what}: `{' '.join(command)}` took over {STEP_TIMEOUT_S}s") from None
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()[-3000:]
        raise InstallError(f"could not {what}: `{' '.join(command)}` exited {done.returncode}:\n{output}")


def _file_sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def wheel_digest_file(wheel: pathlib.Path) -> pathlib.Path:
    """Where the sha256 of a cached wheel, taken when it was built, is kept."""
    return wheel.with_name(wheel.name + ".sha256")


def _intact(wheel: pathlib.Path) -> bool:
    """Whether ``wheel`` still has the bytes it was built with. A wheel without a record (an
    interrupted build, or a cache from before records) counts as damaged: rebuilding is cheap."""
    try:
        recorded = wheel_digest_file(wheel).read_text().strip()
    except FileNotFoundError:
        return False
    return recorded == _file_sha256(wheel)


def _wheel(client: Client, venv: pathlib.Path) -> pathlib.Path:
    """The client's wheel, built once from its sdist with ``venv``'s Python, and built again when
    the cached one no longer matches the sha256 recorded at its build."""
    wheels = cache_root() / "wheels"
    prefix = f"{client.distribution.replace('-', '_')}-{client.version}-"
    for cached in sorted(wheels.glob(f"{prefix}*.whl")):
        if _intact(cached):
            return cached
        logger.warning("cached wheel %s does not match its recorded sha256 (or has none): building it again", cached)
        cached.unlink(missing_ok=True)
        wheel_digest_file(cached).unlink(missing_ok=True)
    sdist = _sdist(client)
    python = str(venv / "bin" / "python")
    _run([python, "-m", "pip", "install", "--disable-pip-version-check", "-q", WHEEL_BUILDER],
         f"install {WHEEL_BUILDER} to build {client.sdist_name}")
    with tempfile.TemporaryDirectory(prefix="dss-compat-build-") as tmp:
        with tarfile.open(sdist) as archive:
            # The archive's hash is pinned; the data filter (Python >= 3.11.4) guards against the rest.
            archive.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        source = pathlib.Path(tmp) / sdist.name.removesuffix(".tar.gz")
        # setup.py exits with a deprecation notice unless it is asked for exactly this.
        _run([python, "setup.py", "-q", "bdist_wheel", "-d", str(pathlib.Path(tmp) / "dist")],
             f"build a wheel of {client.sdist_name}", cwd=str(source))
        made = sorted((pathlib.Path(tmp) / "dist").glob(f"{prefix}*.whl"))
        if not made:
            raise InstallError(f"building {client.sdist_name} made no wheel")
        wheels.mkdir(parents=True, exist_ok=True)
        target = wheels / made[0].name
        shutil.copyfile(made[0], target.with_suffix(".tmp"))
        os.replace(target.with_suffix(".tmp"), target)
        # The record last: a crash before it leaves a wheel that is simply built again.
        record = wheel_digest_file(target)
        partial = record.with_name(record.name + ".part")
        partial.write_text(_file_sha256(made[0]) + "\n")
        os.replace(partial, record)
    return target


def _sdist(client: Client) -> pathlib.Path:
    """The client's sdist from the package index, checked against its pinned sha256."""
    path = cache_root() / "sdists" / client.sdist_name
    if path.exists() and _file_sha256(path) == client.sdist_sha256:
        return path
    index = package_index()
    try:
        url = _sdist_url(index, client)
        answer = requests.get(url, timeout=60)
        answer.raise_for_status()
    except requests.RequestException as error:
        raise InstallError(f"could not download {client.sdist_name} from the package index {index} "
                           f"({type(error).__name__}: {error}). The compatibility tests install the real "
                           "clients from PyPI: this machine needs to reach it (or a mirror named by "
                           "PIP_INDEX_URL / pip's index-url).") from None
    actual = hashlib.sha256(answer.content).hexdigest()
    if actual != client.sdist_sha256:
        raise InstallError(f"{url} has sha256 {actual}, not the pinned {client.sdist_sha256}: refusing it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".part").write_bytes(answer.content)
    os.replace(path.with_suffix(".part"), path)
    return path


def package_index() -> str:
    """The simple index pip installs from here: PIP_INDEX_URL, else pip's configured index-url."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"].rstrip("/")
    configured = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                                capture_output=True, text=True)
    value = configured.stdout.strip()
    return (value if configured.returncode == 0 and value else DEFAULT_INDEX).rstrip("/")


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: dict[str, str] = {}  # file name -> href
        self._href = None

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data):
        if self._href:
            self.links[data.strip()] = self._href

    def handle_endtag(self, tag):
        if tag == "a":
            self._href = None


def _sdist_url(index: str, client: Client) -> str:
    """The download URL of the sdist, from the project's page of a PEP 503 / 691 simple index."""
    page = f"{index}/{client.distribution.lower()}/"
    answer = requests.get(page, timeout=30,
                          headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    answer.raise_for_status()
    if answer.headers.get("Content-Type", "").startswith("application/vnd.pypi.simple.v1+json"):
        links = {entry["filename"]: entry["url"] for entry in answer.json()["files"]}
    else:
        parser = _Links()
        parser.feed(answer.text)
        links = parser.links
    if client.sdist_name not in links:
        raise requests.RequestException(f"{page} does not list {client.sdist_name}")
    return urldefrag(urljoin(page, links[client.sdist_name])).url


# --- running them --------------------------------------------------------------------------------

class CliFailed(AssertionError):
    def __init__(self, args, result):
        super().__init__(f"`{' '.join(args)}` exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}"
                         f"\n--- stderr\n{result.stderr[-6000:]}")
        self.result = result


class Cli:
    """One client, configured as a user would against the API at ``api_url`` (https, its
    certificate signed by ``ca_file``), with a service account of its own trusted through the
    ``DSS_AUTH_ISSUERS`` value ``issuers``, and the staging bucket's S3 at ``s3_endpoint``."""

    def __init__(self, client: Client, venv: pathlib.Path, home: pathlib.Path, *, api_url: str, ca_file: str,
                 issuers: str, s3_endpoint: str):
        self.client = client
        self.email = f"{client.name}-compat@dss-local.iam.example.org"
        home.mkdir(parents=True, exist_ok=True)
        config_file = home / "config.json"
        swagger_url = f"{api_url}/v1/swagger.json"
        # AuthClient is built at start-up too; its spec may be ours (it only adds `auth` commands).
        config_file.write_text(json.dumps({"DSSClient": {"swagger_url": swagger_url},
                                           "AuthClient": {"swagger_url": swagger_url}}))
        # Made while the stack runs: a new account is trusted without a restart. Granted the group
        # its client claims (`make sa-key GROUPS=dbio`): an account's claims grant nothing.
        self.key_file = home / "service-account.json"
        create_service_account_key(self.email, self.key_file,
                                   issuer_jwks_file(issuers, self.email), groups=[client.name])
        self.venv = venv
        self.env = {
            "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "config"),
            client.config_variable: str(config_file),
            "REQUESTS_CA_BUNDLE": ca_file,
            "GOOGLE_APPLICATION_CREDENTIALS": str(self.key_file),
            "AWS_ENDPOINT_URL_S3": s3_endpoint,
            "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
        }

    def run(self, *args: str, cwd: pathlib.Path | None = None) -> subprocess.CompletedProcess:
        command = [str(self.venv / "bin" / self.client.name), *args]
        return subprocess.run(command, env=self.env, cwd=cwd, capture_output=True, text=True,
                              timeout=CLI_TIMEOUT_S)

    def raw(self, *args: str) -> bytes:
        """The bytes ``<client> dss ARGS`` writes to stdout (get-file)."""
        command = [str(self.venv / "bin" / self.client.name), "dss", *args]
        result = subprocess.run(command, env=self.env, capture_output=True, timeout=CLI_TIMEOUT_S)
        if result.returncode != 0:
            raise CliFailed([self.client.name, "dss", *args], subprocess.CompletedProcess(
                result.args, result.returncode, result.stdout.decode(errors="replace"),
                result.stderr.decode(errors="replace")))
        return result.stdout

    def __call__(self, *args: str, cwd: pathlib.Path | None = None):
        """Run ``<client> dss ARGS``; its output parsed as JSON when it is JSON, else the text."""
        result = self.run("dss", *args, cwd=cwd)
        if result.returncode != 0:
            raise CliFailed([self.client.name, "dss", *args], result)
        try:
            return json.loads(result.stdout)
        except ValueError:
            return result.stdout
