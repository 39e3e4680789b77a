"""The access policy (``access.py``) over real HTTP: every operation of the description, in the
``public`` and ``private`` modes, answers 401 without a token where the policy protects it, 403 to
a token outside the read groups, and its normal answer to one inside (or anonymously where it is
open); the served description declares ``security`` on exactly the protected operations.

The operations are those of swagger.yml, so a new one cannot escape the matrix: each needs a
request (REQUESTS) and its services' answers (RPC_ANSWERS) here, or the matrix fails. The
services behind the gateway are mocks, as in test_gateway.py (the real broker carries nothing
but the gateway's own container).
"""
import re

import pytest
import requests
from nameko.exceptions import ConfigurationError

from services.gateway import apidoc
from services.gateway.access import ALWAYS_OPEN, protected_operations
from services.gateway.service import PROBED_SERVICES
from services.gateway.tests.test_gateway import (FILE_META, UUID, VERSION, gateway_config, issuer,  # noqa: F401
                                                 ready, start_gateway, token)

TIMEOUT_S = 10
READERS, WRITERS, OUTSIDERS = ("readers",), ("dbio",), ("outsiders",)
# Operations guarded by the write check (DSS_AUTH_ALLOWED_GROUPS) rather than the read groups.
WRITES = {"putFile", "putBundle", "patchBundle", "deleteBundle", "putCollection", "patchCollection",
          "deleteCollection"}

MODES = {
    "public": {"DSS_ACCESS_POLICY": "public", "DSS_AUTH_READ_GROUPS": ",".join(READERS)},
    "private": {"DSS_ACCESS_POLICY": "private", "DSS_AUTH_READ_GROUPS": ",".join(READERS)},
}

# operationId -> (RPC of the services' mocks, its answer): what makes the operation answer normally.
RPC_ANSWERS = {
    "putFile": ("files.put_file", {"status": "created", "version": VERSION}),
    "headFile": ("files.head_file", FILE_META),
    "getFile": ("checkout.get_file", ready(FILE_META, "https://example.org/blob")),
    "listBundles": ("bundles.list_bundles", {"bundles": []}),
    "getBundle": ("bundles.get_bundle", {"bundle": {"uuid": UUID, "version": VERSION, "files": []}}),
    "putBundle": ("bundles.put_bundle", {"status": "created", "version": VERSION, "manifest": {}}),
    "patchBundle": ("bundles.patch_bundle", {"uuid": UUID, "version": VERSION}),
    "deleteBundle": ("bundles.delete_bundle", None),
    "checkoutBundle": ("checkout.start_bundle_checkout", {"checkout_job_id": UUID}),
    "getCheckoutJob": ("checkout.get_checkout_job", {"status": "RUNNING"}),
    "search": ("indexer.search", {"results": [], "total_hits": 0}),
    "listSubscriptions": ("notifier.list_subscriptions", {"subscriptions": []}),
    "putSubscription": ("notifier.put_subscription", {"uuid": UUID}),
    "getSubscription": ("notifier.get_subscription", {"uuid": UUID}),
    "deleteSubscription": ("notifier.delete_subscription", {"timeDeleted": VERSION}),
    "listCollections": ("bundles.list_collections", {"collections": []}),
    "putCollection": ("bundles.put_collection", {"uuid": UUID, "version": VERSION}),
    "getCollection": ("bundles.get_collection", {"uuid": UUID}),
    "patchCollection": ("bundles.patch_collection", {"uuid": UUID, "version": VERSION}),
    "deleteCollection": ("bundles.delete_collection", None),
    "listEvents": ("indexer.list_events", {"event_streams": []}),
    "getEvent": ("indexer.get_event", {"event_type": "CREATE", "bundle_info": {}}),
    "getDrsServiceInfo": ("checkout.drs_service_info", {"id": "dss", "name": "DSS", "type": {}, "version": "1"}),
    "getDrsObject": ("checkout.drs_object", {"id": UUID, "self_uri": f"drs://dss/{UUID}"}),
    "getDrsAccessUrl": ("checkout.drs_access", {"status": "ready", "url": "https://example.org/blob"}),
    "getSwagger": (None, None),
}
# Request bodies the description gives no example of.
BODIES = {"patchBundle": {"add_files": []}, "patchCollection": {"name": "renamed"}}
PATH_VALUES = {"uuid": UUID, "object_id": UUID, "access_id": f"aws.{VERSION}", "checkout_job_id": UUID}
QUERY_VALUES = {"version": VERSION, "uuid": UUID}


def description_operations():
    """(operationId, method, path, operation) of every operation of swagger.yml."""
    doc = apidoc.template()
    return [(operation["operationId"], method, path, apidoc.resolve(doc, operation))
            for path, method, operation in apidoc.operations(doc)]


OPERATION_IDS = sorted(op_id for op_id, *_ in description_operations())


def request_for(operation_id):
    """(method, path, query, body) of a well-formed request of the operation."""
    _, method, path, operation = next(op for op in description_operations() if op[0] == operation_id)
    parameters = operation.get("parameters", [])
    url = apidoc.template()["basePath"] + re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m.group(1)], path)
    query = {}
    for parameter in parameters:
        if parameter["in"] == "query" and parameter.get("required"):
            query[parameter["name"]] = parameter["enum"][0] if "enum" in parameter else QUERY_VALUES[parameter["name"]]
    body = None
    body_parameter = next((p for p in parameters if p["in"] == "body"), None)
    if body_parameter is not None and (body_parameter.get("required") or operation_id in BODIES):
        body = BODIES.get(operation_id, body_parameter["schema"].get("example"))
        assert body is not None, f"{operation_id}: give it a body in BODIES"
    return method.upper(), url, query, body


def test_every_operation_is_in_the_matrix():
    assert set(RPC_ANSWERS) == set(OPERATION_IDS)


@pytest.fixture(params=sorted(MODES))
def mode(request):
    return request.param


@pytest.fixture
def policy_gateway(container_factory, gateway_config, mode):  # noqa: F811
    gateway_config.update(MODES[mode])
    gateway = start_gateway(container_factory, gateway_config)
    gateway.base_url = f"http://{gateway_config['WEB_SERVER_ADDRESS']}"
    for operation_id, (rpc, answer) in RPC_ANSWERS.items():
        if rpc:
            service, method = rpc.split(".")
            getattr(getattr(gateway, service), method).return_value = answer
    return gateway


def call(gateway, operation_id, headers=None):
    method, path, query, body = request_for(operation_id)
    return requests.request(method, gateway.base_url + path, params=query, json=body, headers=headers or {},
                            allow_redirects=False, timeout=TIMEOUT_S)


def assert_refused(response, method, path, status, code):
    assert response.status_code == status, (method, path, response.status_code, response.text)
    if method == "HEAD":
        return
    body = response.json()
    if path.startswith("/v1/ga4gh/"):  # DRS's own error body
        assert body["status_code"] == status, body
    else:
        assert body["code"] == code, body


def assert_normal_answer(response, operation_id):
    documented = next(op for op in description_operations() if op[0] == operation_id)[3]["responses"]
    assert response.status_code < 400 and str(response.status_code) in documented, \
        (operation_id, response.status_code, response.text)


@pytest.mark.parametrize("operation_id", OPERATION_IDS)
def test_the_matrix(policy_gateway, mode, operation_id, token):  # noqa: F811
    method, path, _, _ = request_for(operation_id)
    protected = protected_operations(MODES[mode]["DSS_ACCESS_POLICY"])
    bearer = {"Authorization": "Bearer " + token(groups=READERS)}
    if operation_id not in protected:
        assert operation_id in ALWAYS_OPEN or mode == "public"
        assert_normal_answer(call(policy_gateway, operation_id), operation_id)
        return
    assert_refused(call(policy_gateway, operation_id), method, path, 401, "unauthorized")
    outsider = {"Authorization": "Bearer " + token(groups=OUTSIDERS)}
    assert_refused(call(policy_gateway, operation_id, outsider), method, path, 403,
                   "forbidden" if operation_id in WRITES else "read_not_allowed")
    if operation_id in WRITES:
        assert_refused(call(policy_gateway, operation_id, bearer), method, path, 403, "forbidden")
        bearer = {"Authorization": "Bearer " + token(groups=WRITERS)}
    assert_normal_answer(call(policy_gateway, operation_id, bearer), operation_id)
    if operation_id not in WRITES:  # writers read what they write
        writer = {"Authorization": "Bearer " + token(groups=WRITERS)}
        assert_normal_answer(call(policy_gateway, operation_id, writer), operation_id)


def test_the_description_declares_security_on_exactly_the_protected_operations(policy_gateway, mode):
    doc = requests.get(policy_gateway.base_url + "/v1/swagger.json", timeout=TIMEOUT_S).json()
    declared = {operation["operationId"] for _, _, operation in apidoc.operations(doc) if operation.get("security")}
    assert declared == protected_operations(MODES[mode]["DSS_ACCESS_POLICY"])
    for _, _, operation in apidoc.operations(doc):
        if operation.get("security"):
            assert {"401", "403"} <= set(operation["responses"]), operation["operationId"]


def test_the_page_internal_routes_and_the_drs_root_in_private_mode(policy_gateway, mode, token):  # noqa: F811
    base = policy_gateway.base_url
    assert requests.get(base + "/", timeout=TIMEOUT_S).status_code == 200
    assert requests.get(base + "/internal/application_secrets", timeout=TIMEOUT_S).status_code == 200
    for name in PROBED_SERVICES:
        getattr(policy_gateway, name).health.return_value = {"ok": True, "detail": "fine"}
    assert requests.get(base + "/internal/health", timeout=TIMEOUT_S).status_code == 200
    # The DRS routes at the standard root follow the policy of their /v1 twins.
    root = base + f"/ga4gh/drs/v1/objects/{UUID}/access/aws.{VERSION}"
    anonymous = requests.get(root, timeout=TIMEOUT_S)
    if mode == "public":
        assert anonymous.status_code == 200
        return
    assert anonymous.status_code == 401 and anonymous.json() == {"msg": "a bearer token is required",
                                                                   "status_code": 401}
    assert "Bearer" in anonymous.headers["WWW-Authenticate"]
    signed = requests.get(root, headers={"Authorization": "Bearer " + token(groups=READERS)}, timeout=TIMEOUT_S)
    assert signed.status_code == 200 and signed.json() == {"url": "https://example.org/blob"}


def test_a_listed_policy_protects_those_operations(container_factory, gateway_config, token):  # noqa: F811
    gateway_config["DSS_ACCESS_POLICY"] = "search, headFile"
    gateway = start_gateway(container_factory, gateway_config)
    gateway.base_url = f"http://{gateway_config['WEB_SERVER_ADDRESS']}"
    gateway.indexer.search.return_value = {"results": [], "total_hits": 0}
    gateway.files.head_file.return_value = FILE_META
    gateway.bundles.list_bundles.return_value = {"bundles": []}
    assert call(gateway, "search").status_code == 401
    assert call(gateway, "headFile").status_code == 401
    assert call(gateway, "listBundles").status_code == 200  # not listed: anonymous as before
    any_token = {"Authorization": "Bearer " + token(groups=OUTSIDERS)}  # no read groups: any valid token
    assert call(gateway, "search", any_token).status_code == 200
    assert call(gateway, "headFile", any_token).status_code == 200


@pytest.mark.parametrize("value, message", [
    ("serach", "does not have: serach"),
    ("private,search", "must be `public`, `private` or"),
    ("getSwagger", "cannot protect getSwagger"),
    ("", "must be `public`, `private` or"),
])
def test_an_unknown_policy_stops_the_gateway_from_starting(container_factory, gateway_config, value,  # noqa: F811
                                                             message):
    gateway_config["DSS_ACCESS_POLICY"] = value
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        start_gateway(container_factory, gateway_config)
