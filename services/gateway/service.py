"""The gateway service: the DSS v1 HTTP API, answered by the other services over RPC.

Each entrypoint authenticates (where the access policy asks for a token: ``access.py``),
validates its query string and body, makes one RPC call and shapes the answer; errors of any kind
become problem+json (see ``errors.py``), or DRS error bodies on the GA4GH DRS routes.
"""
from __future__ import annotations

import logging

import eventlet
from nameko.exceptions import RemoteError

from services.gateway import apidoc, schemas, swagger_ui
from services.gateway.dependencies import HEALTH_TIMEOUT_S, Auth, Broker, GatewaySettings, ServiceRpc
from services.gateway.errors import RETRY_AFTER_S
from services.gateway.web import (JSON, api, bodyless_response, drs_api, file_headers, json_body, json_response,
                                  next_link, optional_json_body, paged, query)
from shared.exceptions import DSSError, InvalidParameter, NotFound
from shared.identifiers import bundle_url, new_version, normalize_uuid, split_fqid
from shared.metrics import Metrics
from shared import tracing
from shared.tracing import Tracing

logger = logging.getLogger(__name__)

# The services whose health /internal/health reports (each one's `health` RPC).
PROBED_SERVICES = ("files", "bundles", "indexer", "notifier", "checkout")

PUT_STATUS = {"created": 201, "exists": 200, "accepted": 202}

def api_file(entry: dict) -> dict:
    """A manifest entry in API form (``s3_etag``, not the stored ``s3-etag``)."""
    entry = dict(entry)
    if "s3-etag" in entry:
        entry.setdefault("s3_etag", entry.pop("s3-etag"))
    return entry


def _healthy(report: dict) -> bool:
    if "ok" in report:
        return report["ok"] is True
    return bool(report) and all(isinstance(part, dict) and part.get("ok") is True for part in report.values())


class GatewayService:
    name = "gateway"

    settings = GatewaySettings()
    auth = Auth()
    files = ServiceRpc("files")
    bundles = ServiceRpc("bundles")
    indexer = ServiceRpc("indexer")
    notifier = ServiceRpc("notifier")
    checkout = ServiceRpc("checkout")
    broker = Broker()
    metrics = Metrics()
    tracing = Tracing()

    # --- documentation and health --------------------------------------------------------------
    @api("GET", "/")
    def index(self, request):
        page = swagger_ui.page()
        return swagger_ui.static_response(request, page.body, page.content_type, page.etag,
                                          swagger_ui.security_headers(apidoc.base_url(self.settings, request)))

    @api("GET", swagger_ui.ASSET_PREFIX + "<name>")
    def swagger_ui_asset(self, request, name):
        asset = swagger_ui.asset(name)
        if asset is None:
            raise NotFound(f"no such resource: {request.path}")
        return swagger_ui.static_response(request, asset.body, asset.content_type, asset.etag,
                                          {"X-Content-Type-Options": "nosniff"})

    @api("GET", "/v1/swagger.json")
    def swagger(self, request):
        query(request, schemas.NoQuery)
        document = apidoc.swagger_json(self.settings, request, self.auth.policy)
        return swagger_ui.static_response(request, document.body, JSON, document.etag)

    @api("GET", "/internal/application_secrets")
    def application_secrets(self, request):
        # dbio-cli and hca fetch this (https://{host}/internal/application_secrets) before their
        # first authenticated call and read `installed.client_id` to open their OAuth2 session,
        # even when they mint the token themselves from a service-account key. Interactive
        # `login` (Google's installed-app flow) is not offered, so no auth_uri / token_uri.
        query(request, schemas.NoQuery)
        return json_response({"installed": {"client_id": self.settings.oauth_client_id}})

    @api("GET", "/internal/health")
    def health(self, request):
        def probe(proxy, name):
            try:
                return proxy.with_timeout(HEALTH_TIMEOUT_S).health()
            except DSSError as error:
                return {"ok": False, "detail": error.title}
            except RemoteError as error:
                logger.warning("%s health check failed: %s", name, error.exc_type)
                return {"ok": False, "detail": f"the health check failed ({error.exc_type})"}

        # Carried: each probe's RPC is a span of this request, not a trace of its own.
        probes = {name: eventlet.spawn(tracing.carry(probe), getattr(self, name), name) for name in PROBED_SERVICES}
        dependencies = {"broker": self.broker.health(), **{name: done.wait() for name, done in probes.items()}}
        failing = sorted(name for name, report in dependencies.items() if not _healthy(report))
        if not failing:
            return json_response({"status": "ok", "dependencies": dependencies})
        return json_response({"status": "unhealthy", "failing": failing, "dependencies": dependencies}, 503,
                             {"Retry-After": str(RETRY_AFTER_S)})

    # --- files -----------------------------------------------------------------------------------
    @api("PUT", "/v1/files/<uuid>")
    def put_file(self, request, uuid):
        caller = self.auth.writer(request)
        uuid = normalize_uuid(uuid)
        params = query(request, schemas.PutFileQuery)
        body = json_body(request, schemas.PutFileBody, self.settings.max_request_bytes)
        version = params.get("version") or new_version()
        result = self.files.put_file(uuid, version, body["source_url"], body["creator_uid"], caller)
        answer = {"version": result["version"]}
        if result["status"] == "accepted":
            answer["task_id"] = result["task_id"]
        return json_response(answer, PUT_STATUS[result["status"]])

    @api("GET", "/v1/files/<uuid>")  # werkzeug routes HEAD to GET rules
    def get_file(self, request, uuid):
        self.auth.reader(request, "headFile" if request.method == "HEAD" else "getFile")
        uuid = normalize_uuid(uuid)
        if request.method == "HEAD":
            params = query(request, schemas.HeadFileQuery)
            metadata = self.files.head_file(params["replica"], uuid, params.get("version"))
            return bodyless_response(200, file_headers(metadata))
        params = query(request, schemas.GetFileQuery)
        result = self.checkout.get_file(params["replica"], uuid, params.get("version"), params["directurl"],
                                        params.get("content_disposition"), params.get("token"))
        headers = file_headers(result["metadata"])
        if result["status"] == "pending":
            # Back to this very URL, pinned to the version being prepared, once the copy had time.
            headers["Location"] = next_link(self.settings, request, token=result["token"],
                                            version=result["metadata"]["version"])
            headers["Retry-After"] = str(result["retry_after"])
            return bodyless_response(301, headers)
        headers["Location"] = result["url"]
        return bodyless_response(302, headers)

    # --- bundles ---------------------------------------------------------------------------------
    @api("GET", "/v1/bundles/all")
    def list_bundles(self, request):
        self.auth.reader(request, "listBundles")
        params = query(request, schemas.ListBundlesQuery)
        result = self.bundles.list_bundles(params["replica"], params["prefix"], params["per_page"],
                                           params.get("search_after"))
        cursor = result.get("search_after")
        body = {"bundles": result["bundles"], "has_more": cursor is not None, "page_count": len(result["bundles"]),
                "per_page": params["per_page"], "search_prefix": params["prefix"]}
        link = None
        if cursor is not None:
            link = next_link(self.settings, request, search_after=cursor)
            body.update(search_after=cursor, link=link)
        return paged(body, "bundles", link)

    @api("PUT", "/v1/bundles/<bundle_id:uuid>")
    def put_bundle(self, request, uuid):
        caller = self.auth.writer(request)
        uuid = normalize_uuid(uuid)
        params = query(request, schemas.PutBundleQuery)
        body = json_body(request, schemas.PutBundleBody, self.settings.max_request_bytes)
        result = self.bundles.put_bundle(params["replica"], uuid, params.get("version") or new_version(),
                                         body["creator_uid"], body["files"], caller)
        return json_response({"version": result["version"], "manifest": result["manifest"]},
                             PUT_STATUS[result["status"]])

    @api("GET", "/v1/bundles/<bundle_id:uuid>")
    def get_bundle(self, request, uuid):
        self.auth.reader(request, "getBundle")
        uuid = normalize_uuid(uuid)
        params = query(request, schemas.GetBundleQuery)
        if params["directurls"] and params["presignedurls"]:
            raise InvalidParameter("ask for directurls or presignedurls, not both", "only_one_urltype")
        replica = params["replica"]
        result = self.bundles.get_bundle(replica, uuid, params.get("version"), params["start_at"],
                                         params["per_page"])
        bundle = dict(result["bundle"])
        bundle["files"] = [api_file(entry) for entry in bundle["files"]]
        url_kind = "presigned" if params["presignedurls"] else "direct" if params["directurls"] else None
        if url_kind:
            # URLs point into a checkout of the whole bundle, made on the first such request.
            urls = self.checkout.bundle_urls(replica, uuid, bundle["version"], url_kind, params.get("token"))
            if urls["status"] == "pending":
                location = next_link(self.settings, request, token=urls["token"], version=bundle["version"])
                return bodyless_response(301, {"Location": location, "Retry-After": str(urls["retry_after"])})
            for entry in bundle["files"]:
                entry["url"] = urls["urls"][entry["name"]]
        link = None
        if result.get("next_start_at") is not None:
            # Pinned to the version read, so a version written meanwhile cannot mix into the pages.
            link = next_link(self.settings, request, start_at=result["next_start_at"], version=bundle["version"])
        return paged({"bundle": bundle}, "bundle.files", link)

    @api("PATCH", "/v1/bundles/<bundle_id:uuid>")
    def patch_bundle(self, request, uuid):
        caller = self.auth.writer(request)
        uuid = normalize_uuid(uuid)
        params = query(request, schemas.PatchBundleQuery)
        body = json_body(request, schemas.PatchBundleBody, self.settings.max_request_bytes)
        result = self.bundles.patch_bundle(params["replica"], uuid, params["version"], body["add_files"],
                                           body["remove_files"], caller)
        return json_response({"uuid": result["uuid"], "version": result["version"]})

    @api("DELETE", "/v1/bundles/<bundle_id:uuid>")
    def delete_bundle(self, request, uuid):
        caller = self.auth.writer(request)
        uuid = normalize_uuid(uuid)
        params = query(request, schemas.DeleteBundleQuery)
        body = json_body(request, schemas.DeleteBundleBody, self.settings.max_request_bytes)
        self.bundles.delete_bundle(params["replica"], uuid, params.get("version"), body["reason"],
                                   body["details"], caller)
        return json_response({})

    # --- collections -----------------------------------------------------------------------------
    @api("PUT", "/v1/collections")
    def put_collection(self, request):
        caller = self.auth.writer(request)
        params = query(request, schemas.PutCollectionQuery)
        body = json_body(request, schemas.PutCollectionBody, self.settings.max_request_bytes)
        result = self.bundles.put_collection(params["replica"], params["uuid"], params.get("version") or new_version(),
                                             body["name"], body["description"], body["details"], body["contents"],
                                             caller)
        return json_response({"uuid": result["uuid"], "version": result["version"]}, 201)

    @api("GET", "/v1/collections")
    def list_collections(self, request):
        caller = self.auth.caller(request)
        params = query(request, schemas.ListCollectionsQuery)
        result = self.bundles.list_collections(caller, params["per_page"], params["start_at"])
        link = None
        if result.get("next_start_at") is not None:
            link = next_link(self.settings, request, start_at=result["next_start_at"])
        return paged({"collections": result["collections"]}, "collections", link)

    @api("GET", "/v1/collections/<uuid>")
    def get_collection(self, request, uuid):
        caller = self.auth.caller(request)
        uuid = normalize_uuid(uuid)
        params = query(request, schemas.GetCollectionQuery)
        return json_response(self.bundles.get_collection(params["replica"], uuid, params.get("version"), caller))

    @api("PATCH", "/v1/collections/<uuid>")
    def patch_collection(self, request, uuid):
        caller = self.auth.writer(request)
        uuid = normalize_uuid(uuid)
        params = query(request, schemas.PatchCollectionQuery)
        changes = json_body(request, schemas.PatchCollectionBody, self.settings.max_request_bytes)
        result = self.bundles.patch_collection(params["replica"], uuid, params["version"], changes, caller)
        return json_response({"uuid": result["uuid"], "version": result["version"]})

    @api("DELETE", "/v1/collections/<uuid>")
    def delete_collection(self, request, uuid):
        caller = self.auth.writer(request)
        uuid = normalize_uuid(uuid)
        params = query(request, schemas.DeleteCollectionQuery)
        self.bundles.delete_collection(params["replica"], uuid, caller)
        return json_response({})

    # --- search (the indexer) --------------------------------------------------------------------
    @api("POST", "/v1/search")
    def search(self, request):
        self.auth.reader(request, "search")
        params = query(request, schemas.SearchQuery)
        body = json_body(request, schemas.SearchBody, self.settings.max_request_bytes)
        replica = params["replica"]
        result = self.indexer.search(replica, body["es_query"], params["output_format"], params["per_page"],
                                     params.get("search_after"))
        base = apidoc.base_url(self.settings, request)
        results = []
        for hit in result["results"]:
            uuid, version = split_fqid(hit["bundle_fqid"])
            entry = {"bundle_fqid": hit["bundle_fqid"], "bundle_url": bundle_url(base, uuid, version, replica),
                     "search_score": hit.get("search_score")}
            if "metadata" in hit:
                entry["metadata"] = hit["metadata"]
            results.append(entry)
        cursor = result.get("search_after")
        link = next_link(self.settings, request, search_after=cursor) if cursor else None
        return paged({"es_query": body["es_query"], "results": results, "total_hits": result["total_hits"]},
                     "results", link)

    # --- subscriptions (the notifier) ------------------------------------------------------------
    @api("GET,PUT", "/v1/subscriptions")
    def subscriptions(self, request):
        caller = self.auth.caller(request)
        if request.method == "PUT":
            params = query(request, schemas.PutSubscriptionQuery)
            body = json_body(request, schemas.PutSubscriptionBody, self.settings.max_request_bytes)
            result = self.notifier.put_subscription(params["replica"], body, caller)
            return json_response({"uuid": result["uuid"]}, 201)
        params = query(request, schemas.SubscriptionsQuery)
        result = self.notifier.list_subscriptions(params["replica"], caller, params["subscription_type"])
        return json_response({"subscriptions": result["subscriptions"]})

    @api("GET,DELETE", "/v1/subscriptions/<uuid>")
    def subscription(self, request, uuid):
        caller = self.auth.caller(request)
        uuid = normalize_uuid(uuid)
        # subscription_type is accepted for compatibility; a uuid names one subscription of either kind.
        params = query(request, schemas.SubscriptionsQuery)
        if request.method == "DELETE":
            result = self.notifier.delete_subscription(params["replica"], uuid, caller)
            return json_response({"timeDeleted": result["timeDeleted"]})
        return json_response(self.notifier.get_subscription(params["replica"], uuid, caller))

    # --- the bundle event journal (the indexer) --------------------------------------------------
    @api("GET", "/v1/events")
    def events(self, request):
        self.auth.reader(request, "listEvents")
        params = query(request, schemas.ListEventsQuery)
        result = self.indexer.list_events(params["replica"], params.get("from_date"), params.get("to_date"),
                                          params["per_page"], params.get("token"))
        link = next_link(self.settings, request, token=result["token"]) if result.get("token") else None
        return paged({"event_streams": result["event_streams"]}, "event_streams", link)

    @api("GET", "/v1/events/<uuid>")
    def event(self, request, uuid):
        self.auth.reader(request, "getEvent")
        uuid = normalize_uuid(uuid)
        params = query(request, schemas.GetEventQuery)
        return json_response(self.indexer.get_event(params["replica"], uuid, params["version"]))

    # --- bundle checkout (the checkout service) --------------------------------------------------
    @api("POST", "/v1/bundles/<bundle_id:uuid>/checkout")
    def checkout_bundle(self, request, uuid):
        caller = self.auth.caller(request)  # it writes into a bucket and may send e-mail: never anonymous
        uuid = normalize_uuid(uuid)
        params = query(request, schemas.CheckoutBundleQuery)
        body = optional_json_body(request, schemas.CheckoutBundleBody, self.settings.max_request_bytes)
        result = self.checkout.start_bundle_checkout(params["replica"], uuid, params.get("version"),
                                                     body.get("destination"), body.get("email"), caller)
        return json_response({"checkout_job_id": result["checkout_job_id"]})

    @api("GET", "/v1/bundles/checkout/<checkout_job_id>")
    def checkout_status(self, request, checkout_job_id):
        self.auth.reader(request, "getCheckoutJob")
        params = query(request, schemas.CheckoutJobQuery)
        return json_response(self.checkout.get_checkout_job(params["replica"], checkout_job_id))

    # --- GA4GH DRS 1.4 (the checkout service): at the standard root, and under /v1 as published -----
    @drs_api("GET", "/ga4gh/drs/v1/service-info")
    @drs_api("GET", "/v1/ga4gh/drs/v1/service-info")
    def drs_service_info(self, request):
        self.auth.reader(request, "getDrsServiceInfo")
        query(request, schemas.NoQuery)
        return json_response(self.checkout.drs_service_info(apidoc.base_url(self.settings, request)))

    @drs_api("GET", "/ga4gh/drs/v1/objects/<object_id>")
    @drs_api("GET", "/v1/ga4gh/drs/v1/objects/<object_id>")
    def drs_object(self, request, object_id):
        self.auth.reader(request, "getDrsObject")
        # `{uuid}` or `{uuid}.{version}`: the checkout service parses DRS ids.
        params = query(request, schemas.DrsObjectQuery)
        return json_response(self.checkout.drs_object(params["replica"], object_id, params.get("version"),
                                                      apidoc.base_url(self.settings, request), params["expand"]))

    @drs_api("GET", "/ga4gh/drs/v1/objects/<object_id>/access/<access_id>")
    @drs_api("GET", "/v1/ga4gh/drs/v1/objects/<object_id>/access/<access_id>")
    def drs_access(self, request, object_id, access_id):
        self.auth.reader(request, "getDrsAccessUrl")
        params = query(request, schemas.DrsAccessQuery)
        result = self.checkout.drs_access(params["replica"], object_id, access_id, params.get("version"))
        if result["status"] == "pending":
            return bodyless_response(202, {"Retry-After": str(result["retry_after"])})
        access_url = {"url": result["url"]}
        if result.get("headers"):
            access_url["headers"] = result["headers"]
        return json_response(access_url)
