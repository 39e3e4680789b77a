"""Every setting the store reads, with its default and meaning, in one table.

A service never reads the environment at import time. Its dependency providers call
``Settings.from_config(self.container.config)`` in ``setup()``; each setting is taken from the
nameko config (the service's ``config.yml`` or a test's dict) if present there, else from the
environment variable of the same name, else from the default below. The defaults run the store
against the local emulators that ``make up`` starts; pointing it at real AWS / GCP / OpenSearch is
only a matter of setting these variables. README.md documents this table (a test keeps them equal).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping

MiB = 1024 * 1024


def _as_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(str(v).strip() for v in value if str(v).strip())
    return tuple(v.strip() for v in str(value).split(",") if v.strip())


def _as_ints(value: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in _as_list(value))


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    doc: str
    parse: Callable[[Any], Any] = str


SETTINGS: tuple[Setting, ...] = (
    # --- storage: one main, checkout and staging bucket per replica -------------------------
    Setting("DSS_S3_ENDPOINT", "http://127.0.0.1:9000",
            "S3 API endpoint. Empty for real AWS S3."),
    Setting("DSS_S3_REGION", "us-east-1", "AWS region of the S3 buckets."),
    Setting("DSS_S3_ACCESS_KEY_ID", "",
            "S3 access key. Empty: boto3's usual credential chain (or `test` against an emulator endpoint)."),
    Setting("DSS_S3_SECRET_ACCESS_KEY", "", "S3 secret key, paired with DSS_S3_ACCESS_KEY_ID."),
    Setting("DSS_S3_BUCKET", "dss-main", "Main bucket of the `aws` replica."),
    Setting("DSS_S3_CHECKOUT_BUCKET", "dss-checkout", "Checkout bucket of the `aws` replica."),
    Setting("DSS_S3_STAGING_BUCKET", "dss-staging", "Staging bucket clients upload to on S3 (created by `make up`)."),
    Setting("DSS_GCS_ENDPOINT", "http://127.0.0.1:4443",
            "Google Cloud Storage JSON API endpoint. Empty for real GCS (Application Default Credentials)."),
    Setting("DSS_GCP_PROJECT", "dss-local", "Google Cloud project that owns the GCS buckets."),
    Setting("DSS_GS_BUCKET", "dss-main", "Main bucket of the `gcp` replica."),
    Setting("DSS_GS_CHECKOUT_BUCKET", "dss-checkout", "Checkout bucket of the `gcp` replica."),
    Setting("DSS_GS_STAGING_BUCKET", "dss-staging", "Staging bucket clients upload to on GCS (created by `make up`)."),
    Setting("DSS_MULTIPART_CHUNK_BYTES", 64 * MiB,
            "Part size of multipart / resumable uploads (one part is held in memory per upload).", int),
    Setting("DSS_COPY_PART_BYTES", 512 * MiB,
            "Server-side copies of objects larger than this go in parallel parts of this size.", int),
    Setting("DSS_STREAM_CHUNK_BYTES", 8 * MiB,
            "Chunk size of streaming reads; at most two chunks per copy are held in memory.", int),
    Setting("DSS_PRESIGNED_URL_TTL", 3600, "Lifetime in seconds of the presigned URLs GET /files redirects to.", int),
    # --- files service ----------------------------------------------------------------------
    Setting("DSS_ASYNC_COPY_THRESHOLD", 64 * MiB,
            "PUT /files copies larger than this many bytes answer 202 and finish in the background.", int),
    Setting("DSS_INGEST_SOURCES", "",
            "Staging areas PUT /files may ingest from: comma-separated `s3://bucket[/prefix]` or "
            "`gs://bucket[/prefix]`; any other source_url is refused (403 `source_not_allowed`). Empty: the "
            "staging bucket of each replica (DSS_S3_STAGING_BUCKET, DSS_GS_STAGING_BUCKET).", _as_list),
    Setting("DSS_FILES_RETRY_DELAYS", "1,5,30,120,600,3600",
            "Seconds before each new attempt of a failed background copy of PUT /files (broker delay queues); "
            "then dead-lettered.", _as_ints),
    # --- replication: change notifications of the main buckets ------------------------------
    Setting("DSS_SQS_ENDPOINT", "http://127.0.0.1:9000",
            "SQS API endpoint the S3 notifications are read from (moto serves SQS on its S3 port). "
            "Empty for real AWS SQS."),
    Setting("DSS_S3_NOTIFICATION_QUEUE", "dss-main-notifications",
            "SQS queue (name or URL) the S3 main bucket sends its change notifications to."),
    Setting("DSS_PUBSUB_EMULATOR_HOST", "127.0.0.1:8085",
            "`host:port` of a Pub/Sub emulator. Empty for real Pub/Sub (Application Default Credentials)."),
    Setting("DSS_GCS_NOTIFICATION_TOPIC", "dss-main-notifications",
            "Pub/Sub topic (in DSS_GCP_PROJECT) the GCS main bucket publishes its change notifications to."),
    Setting("DSS_GCS_NOTIFICATION_SUBSCRIPTION", "dss-main-notifications",
            "Pub/Sub subscription (name in DSS_GCP_PROJECT, or `projects/P/subscriptions/S`) GCS notifications "
            "are pulled from."),
    Setting("DSS_NOTIFICATION_RETRY_DELAY", 10,
            "Seconds before a notification whose worker failed is delivered again.", int),
    # --- replicator -------------------------------------------------------------------------
    Setting("DSS_REPLICATION_PART_BYTES", 16 * MiB,
            "Part size of the replicator's cross-cloud copies (S3 multipart parts, GCS composite parts).", int),
    Setting("DSS_REPLICATION_CONCURRENCY", 3,
            "Parts of one cross-cloud copy uploaded in parallel (a copy holds this many parts plus one).", int),
    Setting("DSS_REPLICATION_FANOUT", 8,
            "Files of a bundle, or items of a collection, the replicator copies concurrently.", int),
    Setting("DSS_REPLICATION_MEMORY_BYTES", 160 * MiB,
            "Blob bytes one replicator process holds at most over all its copies; further copies wait.", int),
    Setting("DSS_REPLICATION_RETRY_DELAYS", "1,5,30,120,600,3600",
            "Seconds before each new attempt of a failed replication (broker delay queues); then dead-lettered.",
            _as_ints),
    # --- notifier: webhook delivery ---------------------------------------------------------
    Setting("DSS_NOTIFY_ALLOWED_HOSTS", "",
            "Callback hosts (names) or CIDRs that webhooks may reach although they are loopback, private, "
            "link-local or otherwise non-public (comma-separated; empty: only public addresses).", _as_list),
    Setting("DSS_NOTIFY_CONNECT_TIMEOUT", 10, "Seconds a webhook delivery waits to connect.", float),
    Setting("DSS_NOTIFY_READ_TIMEOUT", 30,
            "Seconds a webhook delivery waits for each read of the answer.", float),
    Setting("DSS_NOTIFY_ATTEMPT_TIMEOUT", 60,
            "Seconds one webhook delivery attempt may take in all (DNS, connecting, TLS, sending, the answer), "
            "however slowly the receiver trickles its answer.", float),
    Setting("DSS_NOTIFY_CA_BUNDLE", "",
            "PEM file of the CAs webhook receivers' TLS certificates must chain to. Empty: certifi's public CAs."),
    Setting("DSS_NOTIFY_RETRY_DELAYS", "60,600,3600,21600,61200,86400,86400,86400,86400,86400,86400",
            "Seconds before each new attempt of a failed webhook delivery, the first being at once "
            "(broker delay queues); then dead-lettered.", _as_ints),
    # --- notifier: subscriptions ------------------------------------------------------------
    Setting("DSS_NOTIFY_MAX_SUBSCRIPTIONS", 100,
            "Subscriptions one owner may have in one replica (406 beyond).", int),
    Setting("DSS_NOTIFY_SUBSCRIPTION_CACHE_SECONDS", 5,
            "Seconds the notifier reuses its listing of a replica's subscriptions when matching bundle events "
            "(a subscription made through another notifier process takes effect within this time).", float),
    Setting("DSS_NOTIFY_JMESPATH_MAX_GROWTH", 256,
            "A JMESPath query or attachment is refused (400 `jmespath_too_costly`), or a stored one disabled, when "
            "the cost model finds it could build a value more than this many times the size of the event document "
            "plus the expression.", int),
    Setting("DSS_NOTIFY_JMESPATH_MAX_STEPS", 100_000,
            "Steps (nodes visited, elements handled) the JMESPath query and attachments of one subscription may "
            "take on one event; past them the subscription is disabled (`jmespath_limit_exceeded`).", int),
    Setting("DSS_NOTIFY_JMESPATH_MAX_CHARS", 4 * MiB,
            "Characters of strings (join, to_string, reverse) the JMESPath query and attachments of one "
            "subscription may build on one event; past them the subscription is disabled.", int),
    # --- search index (shared.search) ---------------------------------------------------------
    Setting("DSS_INDEX_BACKEND", "embedded",
            "Search index of each replica: `embedded` (tantivy on disk under DSS_INDEX_DIR) or `opensearch`."),
    Setting("DSS_INDEX_DIR", "var/index",
            "Directory of the embedded search indexes (one subdirectory per replica)."),
    Setting("DSS_OPENSEARCH_URL", "",
            "OpenSearch endpoint (e.g. `https://search.example.org:9200`) when DSS_INDEX_BACKEND is `opensearch`."),
    Setting("DSS_OPENSEARCH_INDEX_PREFIX", "dss",
            "Prefix of the OpenSearch indexes and aliases: `{prefix}-{replica}` (documents), "
            "`{prefix}-{replica}-subscriptions`."),
    Setting("DSS_SEARCH_MAX_DEPTH", 32,
            "Deepest nesting of clauses a search or subscription query may have (a `bool` in a `bool`, a "
            "parenthesised group of a `query_string`); deeper: 400 `query_too_complex`.", int),
    Setting("DSS_SEARCH_MAX_CLAUSES", 1024,
            "Most clauses a search or subscription query may expand to (each term, token of a `match`, value "
            "of `terms`, range, `bool`...); more: 400 `query_too_complex`.", int),
    Setting("DSS_SEARCH_MAX_PATTERN_LENGTH", 256,
            "Longest `prefix` or `wildcard` pattern (also in a `query_string`); longer: 400 `query_too_complex`.",
            int),
    Setting("DSS_SEARCH_TIMEOUT_SECONDS", 10,
            "Time budget of one search: one that runs over it is answered 400 `search_timeout` (narrow the "
            "query). Passed to OpenSearch as the search's `timeout`.", float),
    Setting("DSS_SEARCH_CONCURRENCY", 2,
            "Searches an indexer process runs at once per replica (beside, never in the way of, index writes); "
            "one more is refused at once with 503 `search_busy`. Keep twice this below the indexer's "
            "DSS_INDEXER_MAX_WORKERS: the rest index.", int),
    Setting("DSS_PERCOLATE_MAX_WORK", 2_000_000,
            "Most work (values and characters compared) one subscription's query may take to match one bundle "
            "with the embedded engine; beyond it the subscription is skipped for that bundle and reported.", int),
    # --- indexer ----------------------------------------------------------------------------
    Setting("DSS_INDEX_MAX_FILE_BYTES", 16 * MiB,
            "Largest indexed JSON file the indexer reads into a bundle's document; larger ones are left out.", int),
    Setting("DSS_INDEX_MAX_DOCUMENT_BYTES", 16 * MiB,
            "Most indexed JSON (bytes of its files, counted once per name listing them) a bundle's search "
            "document, journal entry and `bundle_indexed` event carry; files beyond it are left out and counted.",
            int),
    Setting("DSS_INDEX_RETRY_DELAYS", "1,5,30,120,600,3600",
            "Seconds before each new attempt of a failed indexing (broker delay queues); then dead-lettered.",
            _as_ints),
    # --- checkout service: file checkout (GET /files, DRS) -----------------------------------
    Setting("DSS_CHECKOUT_INLINE_BYTES", 64 * MiB,
            "Blobs up to this size are copied into the checkout bucket during the GET /files (or DRS access) "
            "that needs them; larger ones in the background while the client is told to come back.", int),
    Setting("DSS_CHECKOUT_WARM_BYTES", 0,
            "Files up to this size are copied into the checkout bucket as soon as they are created, so that "
            "their first GET /files needs no copy. 0: none; a file is copied by its first read (a copy and "
            "a listing per new file saved for files nobody reads).", int),
    Setting("DSS_CHECKOUT_EXPIRY_DAYS", 14,
            "Days a checked-out copy lives after it was made or last refreshed; then the sweeper deletes it.", float),
    Setting("DSS_CHECKOUT_REFRESH_DAYS", 2,
            "A copy read within this many days of its expiry is refreshed (copied again, verified).", float),
    Setting("DSS_CHECKOUT_KEEP_JSON_BYTES", 1 * MiB,
            "JSON copies (`application/json`) up to this size never expire.", int),
    Setting("DSS_CHECKOUT_SWEEP_INTERVAL", 3600,
            "Seconds between two runs of the sweeper that deletes expired checked-out copies.", float),
    Setting("DSS_CHECKOUT_SWEEP_BATCH", 1000,
            "Copies the sweeper examines per replica and run (the next run goes on from there).", int),
    Setting("DSS_CHECKOUT_RETRY_AFTER", 10,
            "Seconds (`Retry-After`) a client is told to wait while a large copy into the checkout bucket, or a "
            "bundle checkout for GET /bundles URLs, runs.", int),
    Setting("DSS_CHECKOUT_CACHE_SECONDS", 10,
            "Seconds a checkout process trusts what it last saw of a copy (fresh) and of a file's latest version "
            "without looking again (0: always look).", float),
    Setting("DSS_CHECKOUT_COPY_RETRY_DELAYS", "1,5,30,120,600,3600",
            "Seconds before each new attempt of a failed background copy into the checkout bucket (broker "
            "delay queues); then dead-lettered.", _as_ints),
    # --- checkout service: bundle checkout jobs ------------------------------------------------
    Setting("DSS_CHECKOUT_JOB_CONCURRENCY", 8,
            "Files of one bundle checkout job copied at once (server-side copies, so little memory each).", int),
    Setting("DSS_CHECKOUT_JOB_RETRY_DELAYS", "1,5,30,120,600",
            "Seconds before each new attempt of a bundle checkout job that failed for a passing reason (broker "
            "delay queues); a failure of the last attempt ends the job FAILED.", _as_ints),
    Setting("DSS_CHECKOUT_JOB_HEARTBEAT", 10,
            "Seconds between two writes of a running bundle checkout job's record (progress and liveness).", float),
    Setting("DSS_CHECKOUT_JOB_STALL_SECONDS", 900,
            "A RUNNING bundle checkout job whose record was not written for this long (and that waits for no "
            "retry) is reported FAILED with cause `stalled`: its message was lost.", float),
    Setting("DSS_CHECKOUT_BUNDLE_URLS_MAX_AGE", 86400,
            "Seconds a finished bundle checkout into the checkout bucket serves GET /bundles URLs; an older one "
            "is run again first (copies still there and verified are kept), as checked-out copies may expire.",
            int),
    Setting("DSS_CHECKOUT_DESTINATIONS", "",
            "Buckets besides the replica's checkout bucket that a bundle checkout may write to (comma-separated "
            "`s3://bucket`, `gs://bucket`, or a bare name for either cloud; `name*` allows every bucket whose "
            "name begins with `name`). Empty: the checkout bucket only; "
            "any other destination is 403 `destination_not_allowed`.", _as_list),
    Setting("DSS_CHECKOUT_MAIL_PER_HOUR", 10,
            "Bundle checkout notices sent per caller and clock hour (counted in the checkout bucket, so across "
            "every checkout process); beyond it the job runs and its notice is not sent. 0: no notices.", int),
    # --- e-mail (services/checkout/bundle_jobs/mail.py) -------------------------------------
    Setting("DSS_SMTP_HOST", "", "SMTP relay that sends e-mail (bundle checkout notices). Empty: e-mail is off."),
    Setting("DSS_SMTP_PORT", 587, "Port of the SMTP relay.", int),
    Setting("DSS_SMTP_TLS", "starttls",
            "TLS to the SMTP relay: `none`, `starttls` (upgrade a plain connection) or `ssl` (implicit TLS)."),
    Setting("DSS_SMTP_USER", "", "User name to log in to the SMTP relay with. Empty: no login."),
    Setting("DSS_SMTP_PASSWORD", "", "Password of DSS_SMTP_USER (never logged)."),
    Setting("DSS_SMTP_TIMEOUT", 10, "Seconds an SMTP connection waits for each answer of the relay.", float),
    Setting("DSS_SMTP_CA_BUNDLE", "",
            "PEM file of the CAs the SMTP relay's TLS certificate must chain to. Empty: the system's CAs."),
    Setting("DSS_MAIL_SENDER", "dss@localhost", "Sender (`From`) of the e-mail the store sends."),
    # --- gateway ----------------------------------------------------------------------------
    Setting("DSS_PUBLIC_URL", "",
            "Base URL clients reach the gateway at (for Location and Link headers). Empty: taken from each "
            "request's Host, which must then be allowed (DSS_ALLOWED_HOSTS)."),
    Setting("DSS_ALLOWED_HOSTS", "",
            "Without DSS_PUBLIC_URL: Host header values the gateway answers besides its own names (localhost, "
            "127.0.0.1, [::1] and the address a connection reached, at its port); comma-separated `name` (any "
            "port) or `name:port`. Other hosts get 400 illegal_host.", _as_list),
    Setting("DSS_MAX_REQUEST_BYTES", 8 * MiB, "Largest request body the gateway accepts (413 above).", int),
    Setting("DSS_RPC_TIMEOUT", 60, "Seconds the gateway waits for a service to answer an RPC.", int),
    Setting("DSS_OAUTH_CLIENT_ID", "dss-cli",
            "OAuth client id served at /internal/application_secrets, which dbio and hca fetch before every "
            "authenticated call (they only label their bearer-token session with it)."),
    Setting("DSS_TLS_CERT_FILE", "",
            "PEM certificate (chain) the gateway serves HTTPS with; re-read when it changes. Empty: plain HTTP."),
    Setting("DSS_TLS_KEY_FILE", "",
            "PEM private key of DSS_TLS_CERT_FILE. Empty: the key is in DSS_TLS_CERT_FILE."),
    # --- metrics ----------------------------------------------------------------------------
    Setting("DSS_METRICS_ADDRESS", "127.0.0.1",
            "Address every service's Prometheus exporter listens on (its port: METRICS_PORT). `0.0.0.0` for a "
            "scraper on another host, e.g. in a pod."),
    # --- tracing (shared/tracing.py) ---------------------------------------------------------
    Setting("DSS_TRACING_ENDPOINT", "",
            "OTLP/HTTP endpoint every service exports its trace spans to (a collector's base URL such as "
            "`http://jaeger:4318`, or its full `/v1/traces` URL). Empty: tracing is off and costs nothing."),
    Setting("DSS_TRACING_SAMPLE_RATIO", 1.0,
            "Share of traces recorded (0 to 1), decided where a trace begins (a request, or a message without "
            "trace context); every service follows that decision.", float),
    # --- auth -------------------------------------------------------------------------------
    Setting("DSS_AUTH_AUDIENCE", "https://dss.local/,https://dev.data.humancellatlas.org/",
            "Accepted `aud` of bearer tokens (comma-separated). The first is published as the spec's x-audience "
            "(dbio mints for it); hca 8.0.0 always mints for https://dev.data.humancellatlas.org/."),
    Setting("DSS_AUTH_ISSUERS", "https://dss.local/=var/auth/jwks.json,*=var/auth/service-accounts/{iss}.json",
            "Trusted token issuers: comma-separated `issuer=JWKS` pairs, JWKS being an https URL or a file path. "
            "An issuer with `*` is a pattern, and `{iss}` in its JWKS is replaced by the token's issuer (one key "
            "set per service account, looked up when first named, so added without a restart)."),
    Setting("DSS_AUTH_EMAIL_CLAIM", "email",
            "Claim holding the caller's e-mail in an identity provider's tokens (falls back to `sub` when it is an "
            "e-mail). In a service account's token it may only name the account (else 401)."),
    Setting("DSS_AUTH_GROUP_CLAIM", "https://auth.data.humancellatlas.org/group",
            "Claim holding the caller's group in an identity provider's tokens (ignored in service accounts')."),
    Setting("DSS_AUTH_ALLOWED_GROUPS", "dbio,hca,dss", "Groups allowed to write (comma-separated).", _as_list),
    Setting("DSS_AUTH_SERVICE_ACCOUNT_GROUPS", "",
            "Groups granted to service accounts (e-mail-like issuers, whose group claims are ignored): "
            "comma-separated `pattern=group` pairs, `*` any run of characters, one pair per group. Adds to what "
            "an account's JWKS file grants (`make sa-key GROUPS=`); the only grant of accounts whose keys are at "
            "a URL. Empty: none (such accounts may only read)."),
    Setting("DSS_ADMIN_EMAILS", "admin@example.org", "E-mails of administrators (comma-separated).", _as_list),
    Setting("DSS_LOCAL_ISSUER_KEY", "var/auth/local-issuer.pem",
            "Private key of the local development issuer (`make up` creates it, `make token` signs with it)."),
    Setting("DSS_LOCAL_ISSUER", "https://dss.local/", "Issuer (`iss`) of the tokens `make token` mints."),
    Setting("DSS_ACCESS_POLICY", "public",
            "Which /v1 operations need a token: `public` (writes and the caller's own subscriptions, collections "
            "and checkouts; every other read is anonymous), `private` (every operation but GET /v1/swagger.json, "
            "DRS included), or a comma-separated list of operationIds of the description that need one besides "
            "those (e.g. `search,getFile,headFile`). An unknown name stops the gateway at start-up."),
    Setting("DSS_AUTH_READ_GROUPS", "",
            "Groups whose members may use the operations that need a token but write nothing (comma-separated; "
            "members of DSS_AUTH_ALLOWED_GROUPS may too); any other caller gets 403 `read_not_allowed`. "
            "Empty: any valid token.", _as_list),
)

_BY_NAME = {s.name: s for s in SETTINGS}


def _field_name(setting_name: str) -> str:
    return setting_name.removeprefix("DSS_").lower()


@dataclasses.dataclass(frozen=True)
class Settings:
    """Resolved settings; attribute names are the variable names without `DSS_`, lower-cased."""

    values: Mapping[str, Any]

    def __getattr__(self, item: str) -> Any:
        try:
            return self.values[item]
        except KeyError:
            raise AttributeError(item) from None

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None,
                    environ: Mapping[str, str] | None = None) -> "Settings":
        config = config or {}
        environ = os.environ if environ is None else environ
        values = {}
        for setting in SETTINGS:
            if setting.name in config:
                raw = config[setting.name]
            elif setting.name in environ:
                raw = environ[setting.name]
            else:
                raw = setting.default
            values[_field_name(setting.name)] = setting.parse(raw)
        return cls(values)

    def bucket(self, replica: str, kind: str = "main") -> str:
        """Name of the `main`, `checkout` or `staging` bucket of a replica."""
        prefix = {"aws": "s3", "gcp": "gs"}[replica]
        suffix = "" if kind == "main" else f"_{kind}"
        return self.values[f"{prefix}{suffix}_bucket"]


def describe(name: str) -> Setting:
    return _BY_NAME[name]
