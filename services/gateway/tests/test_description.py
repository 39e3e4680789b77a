"""The API description as /v1/swagger.json serves it (``apidoc.swagger_document``): valid Swagger 2.0
for openapi-spec-validator and schemathesis, every error documented with its body, links that
resolve, and patterns that say exactly what the validators behind them accept.

tests/e2e/test_api_description.py checks the running API against it; these check the document.
"""
import itertools
import random
import re

import pytest
import schemathesis
from openapi_spec_validator import OpenAPIV2SpecValidator
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

import services.bundles.rules as bundle_rules
from services.gateway import apidoc
from services.gateway.access import AccessPolicy
from shared.config import Settings
from shared.exceptions import InvalidParameter
from shared.identifiers import is_email_address, is_version, normalize_uuid, split_fqid
from shared.search.documents import fqid_key

PROBLEM = {"$ref": "#/definitions/Problem"}
DRS_ERROR = {"$ref": "#/definitions/DrsError"}
# Operations that call no service (so no 503).
LOCAL_OPERATIONS = {"getSwagger"}


# The description as each access policy serves it (access.py): every rule below holds in each.
POLICIES = {"public": {}, "private": {"DSS_ACCESS_POLICY": "private"},
            "private-read-groups": {"DSS_ACCESS_POLICY": "private", "DSS_AUTH_READ_GROUPS": "readers"},
            "listed": {"DSS_ACCESS_POLICY": "search,headFile,getDrsObject"}}


@pytest.fixture(scope="module", params=sorted(POLICIES))
def doc(request):
    settings = Settings.from_config({"DSS_AUTH_AUDIENCE": "https://dss.test/", **POLICIES[request.param]},
                                    environ={})
    http_request = Request(EnvironBuilder(base_url="http://dss.test:8080/").get_environ())
    return apidoc.swagger_document(settings, http_request, AccessPolicy.from_settings(settings))


def operations(doc):
    for path, method, operation in apidoc.operations(doc):
        yield path, method, operation, apidoc.resolve(doc, operation)


def body_parameter(operation):
    return next((p for p in operation.get("parameters", []) if p["in"] == "body"), None)


def ecma(source: str) -> re.Pattern:
    """A description's pattern as JSON Schema (ECMA 262) reads it: its final `$` ends the text,
    where Python's would also match before a trailing newline."""
    return re.compile(source[:-1] + r"\Z" if source.endswith("$") else source)


def pattern(doc, operation_id, name, where="query"):
    for _, _, raw, operation in operations(doc):
        if raw["operationId"] == operation_id:
            if where == "body":
                return ecma(body_parameter(operation)["schema"]["properties"][name]["pattern"])
            return ecma(next(p["pattern"] for p in operation["parameters"] if p["name"] == name))
    raise KeyError(operation_id)


# --- the document ------------------------------------------------------------------------------------
def test_is_valid_swagger_2(doc):
    assert doc["swagger"] == "2.0"
    OpenAPIV2SpecValidator(doc).validate()


def test_schemathesis_loads_every_operation_and_link(doc):
    schema = schemathesis.openapi.from_dict(doc)
    loaded = [result.ok() for result in schema.get_all_operations()]
    assert len(loaded) == len(list(apidoc.operations(doc)))
    ids = {raw["operationId"]: operation for _, _, raw, operation in operations(doc)}
    links = 0
    for _, _, raw, operation in operations(doc):
        source_parameters = {(p["in"], p["name"]) for p in operation.get("parameters", [])}
        for status, response in operation["responses"].items():
            for name, link in response.get("x-links", {}).items():
                links += 1
                target = ids[link["operationId"]]
                target_names = {p["name"] for p in target.get("parameters", [])}
                for parameter, expression in link["parameters"].items():
                    assert parameter in target_names, (raw["operationId"], name, parameter)
                    where, _, field = expression.removeprefix("$").partition(".")
                    if where == "request":
                        location, _, source_name = field.partition(".")
                        assert (location, source_name) in source_parameters, (raw["operationId"], expression)
                    else:  # $response.body#/field: a property of the documented answer
                        assert expression.startswith("$response.body#/"), expression
                        assert expression.rpartition("/")[2] in response["schema"]["properties"], expression
    assert links >= 10
    # The stateful phase builds its state machine from these links.
    assert schema.as_state_machine()


def test_every_error_is_documented_with_its_body(doc):
    assert doc["produces"] == ["application/json", "application/problem+json"]
    for path, method, raw, operation in operations(doc):
        responses = raw["responses"]
        statuses = {int(status) for status in responses}
        assert 400 in statuses, (path, method)
        if operation.get("security"):
            assert 401 in statuses, (path, method)
        if body_parameter(operation):
            assert {413, 415} <= statuses, (path, method)
        if raw["operationId"] not in LOCAL_OPERATIONS:
            assert 503 in statuses, (path, method)
        for status, response in responses.items():
            if int(status) < 400:
                continue
            resolved = apidoc.resolve(doc, response)
            if int(status) >= 500:
                assert "Retry-After" in resolved["headers"], (path, method, status)
            if method == "head":  # no body at all, errors included
                assert "schema" not in resolved, (path, method, status)
            elif path.startswith("/ga4gh/drs/"):
                assert resolved["schema"] == apidoc.resolve(doc, DRS_ERROR), (path, method, status)
            else:
                assert resolved["schema"] == apidoc.resolve(doc, PROBLEM), (path, method, status)


def test_bodies_are_closed(doc):
    """Unknown body fields are 400s: every body says so (collection items excepted: extra fields
    of an item are ignored, as the original store did)."""
    for path, method, _, operation in operations(doc):
        body = body_parameter(operation)
        if body:
            assert body["schema"]["additionalProperties"] is False, (path, method)


# --- the patterns say what the validators do --------------------------------------------------------
def _raises(check, value) -> bool:
    try:
        check(value)
    except InvalidParameter:
        return True
    return False


def test_uuid_pattern(doc):
    uuid = pattern(doc, "getBundle", "uuid")
    samples = ["0b4b4cd4-a3b4-4bb6-9aa2-000000000001", "0B4B4CD4-A3B4-4BB6-9AA2-00000000000F", "",
               " 0b4b4cd4-a3b4-4bb6-9aa2-000000000001", "0b4b4cd4-a3b4-4bb6-9aa2-000000000001\n",
               "0b4b4cd4a3b44bb69aa2000000000001", "0b4b4cd4-a3b4-4bb6-9aa2-00000000000g",
               "{0b4b4cd4-a3b4-4bb6-9aa2-000000000001}", "0b4b4cd4-a3b4-4bb6-9aa2-0000000000012"]
    for value in samples:
        assert bool(uuid.search(value)) == (not _raises(normalize_uuid, value)), repr(value)


def test_version_pattern_is_a_calendar(doc):
    version = pattern(doc, "getBundle", "version")
    years = [999, 1000, 1100, 1200, 1600, 1700, 1900, 1969, 1970, 1996, 2000, 2023, 2024, 2100, 2400, 9996, 9999]
    for year, month, day in itertools.product(years, range(0, 14), range(0, 33)):
        value = f"{year:04d}-{month:02d}-{day:02d}T235959.123456Z"
        assert bool(version.search(value)) == is_version(value), value
    for value in ["2020-01-01T240000.000000Z", "2020-01-01T236000.000000Z", "2020-01-01T235960.000000Z",
                  "2020-01-01T000000.00000Z", "2020-01-01t000000.000000Z", "2020-01-01T000000.000000Z\n",
                  "٢٠٢٠-01-01T000000.000000Z", "2020-01-01T000000.000000Z"]:
        assert bool(version.search(value)) == is_version(value), repr(value)


def test_cursor_patterns(doc):
    search = pattern(doc, "search", "search_after")
    listing = pattern(doc, "listBundles", "search_after")
    rng = random.Random(7)
    for _ in range(3000):
        year, month, day = rng.choice([1969, 1970, 1972, 2000, 2100, rng.randint(1000, 9999)]), \
            rng.randint(0, 13), rng.randint(0, 32)
        uuid = rng.choice(["0b4b4cd4-a3b4-4bb6-9aa2-000000000001", "0B4B4CD4-A3B4-4BB6-9AA2-000000000001"])
        value = f"{uuid}.{year:04d}-{month:02d}-{day:02d}T000000.000000Z"
        assert bool(search.search(value)) == (fqid_key(value) is not None), value
        assert bool(listing.search(value)) == (not _raises(split_fqid, value)), value


def test_file_name_pattern(doc):
    name = ecma(doc["definitions"]["BundleFileRef"]["properties"]["name"]["pattern"])
    alphabet = ["a", ".", "/", "~", "\\", "\x00", "\x1f", "\x7f", "é", " "]
    for length in range(0, 5):
        for characters in itertools.product(alphabet, repeat=length):
            value = "".join(characters)
            assert bool(name.search(value)) == (not _raises(bundle_rules.check_file_name, value)), repr(value)


def test_email_pattern(doc):
    email = pattern(doc, "checkoutBundle", "email", where="body")
    for value in ["a@example.org", "a..b@x.y", "first.last+tag@sub.example.co", "o'hara@example.org",
                  "a@b", "@example.org", "a@-example.org", "a@example-.org", "a b@example.org", "a@exa_mple.org",
                  "a@example.org\n", "ü@example.org", "a@" + "x" * 64 + ".org"]:
        assert bool(email.search(value)) == is_email_address(value), repr(value)


def test_deletion_reason_pattern(doc):
    """The bundles service refuses a reason that is only white space (``str.strip``)."""
    reason = pattern(doc, "deleteBundle", "reason", where="body")
    for code in range(0x3100):
        character = chr(code)
        assert bool(reason.search(f" {character} ")) == bool(f" {character} ".strip()), hex(code)
