"""Run the whole store on this machine: ``up``, ``down``, ``restart``, ``status``, ``token``,
``sa-key``, ``cert`` (``python -m devtools.stack COMMAND``).

The Makefile targets of the same names call this with the project's virtualenv. ``up`` starts, in
the background and each only if not already there: RabbitMQ (only when AMQP_URI does not answer),
moto (S3) and fake-gcs-server (GCS) on the ports of DSS_S3_ENDPOINT / DSS_GCS_ENDPOINT, the buckets,
the local token issuer, then one ``nameko run`` process per service; it returns once the gateway's
health check passes. For replication it also wires the main buckets' change notifications: moto's
S3 bucket notifies an SQS queue on moto, and fake-gcs-server publishes to a topic of the Pub/Sub
emulator (on the port of DSS_PUBSUB_EMULATOR_HOST) when that is installed; without it only
GCS-originated replication is off. Everything it starts is recorded in ``var/run/<name>.pid`` (with its start
time in ``<name>.started``, so a recycled pid is never mistaken for ours) and logs to
``var/log/<name>.log``; ``down`` stops exactly those process groups. ``up --tls`` makes the gateway
serve HTTPS with a development certificate (``cert`` makes it, under var/tls) until ``down``;
``sa-key`` writes a service-account key file for the dbio / hca clients that the running stack
trusts at once.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import requests

from ops.broker import amqp_uri
from services.gateway.auth import issuer_jwks_file
from shared.config import Settings

from devtools import local_cloud, tokens
from devtools.stack.broker import broker_error, ensure_broker, redact, stop_epmd
from devtools.stack.cluster import Cluster
from devtools.stack.credentials import ensure_issuer, ensure_tls, relative, tls_names, use_tls
from devtools.stack.emulators import (GCS_EVENTS_OFF, answers_like_gcs, answers_like_moto, answers_like_pubsub,
                                      ensure_buckets, ensure_emulator, ensure_gcs, ensure_pubsub,
                                      ensure_s3_notifications, launch_moto, local_endpoint)
from devtools.stack.processes import LOG_DIR, ROOT, RUN_DIR, Failed, exclusive, owned_pid, stop
from devtools.stack.services import (HEALTH_TIMEOUT_S, METRICS_PORT_STEP, SERVICES, STACK_STATE, TLS_STATE, check_services,
                                     gateway_url, get_gateway, health_url, instance_names, instance_number, metrics_host,
                                     metrics_port, record_stack_state, running_instances, stack_state,
                                     start_services, wait_healthy)

logger = logging.getLogger(__name__)


BROKER_MODES = ("single", "cluster")


def choose(args) -> tuple[int, str]:
    """SCALE and BROKER for `up`: as given, else as the running stack's `up` chose, else 1 and single.
    A running stack keeps its broker mode until `down`."""
    state = stack_state()
    scale = args.scale or state.get("scale") or 1
    mode = args.broker or state.get("broker") or "single"
    if scale < 1:
        raise Failed(f"SCALE must be 1 or more, not {scale}")
    if state and state.get("broker", "single") != mode:
        raise Failed(f"the stack runs with BROKER={state.get('broker', 'single')}: `make down` first to "
                     f"switch to BROKER={mode}")
    return scale, mode


def running_cluster(state: dict) -> Cluster | None:
    """The cluster the running stack's `up` started (on the ports it chose then), or None."""
    if state.get("broker") != "cluster":
        return None
    return Cluster(amqp_uri(), base_port=state.get("cluster_port"))


def cmd_up(args) -> int:
    with exclusive():
        check_services()  # before starting anything
        settings = Settings.from_config({})
        scale, mode = choose(args)
        if mode == "cluster":
            cluster = running_cluster(stack_state()) or Cluster(amqp_uri())
            uri = cluster.uri()
            broker = cluster.start()
        else:
            cluster = None
            uri = amqp_uri()
            broker = ensure_broker()
        record_stack_state(scale=scale, broker=mode, amqp_uri=redact_all(uri),
                           **({"cluster_port": cluster.base_port} if cluster else {}))
        logger.info("RabbitMQ: %s", broker)
        s3 = ensure_emulator("moto", settings.s3_endpoint, answers_like_moto, launch_moto)
        logger.info("S3 (moto): %s", s3)
        pubsub, gcs_events = ensure_pubsub(settings)  # its topic must exist before fake-gcs publishes
        logger.info("Pub/Sub emulator: %s", pubsub)
        gcs = ensure_gcs(settings, gcs_events and local_endpoint(settings.gcs_endpoint) is not None)
        logger.info("GCS (fake-gcs-server): %s", gcs)
        replicas = [r for r, e in (("aws", settings.s3_endpoint), ("gcp", settings.gcs_endpoint))
                    if local_endpoint(e)]
        ensure_buckets(settings, replicas)
        logger.info("buckets: %s", ", ".join(sorted({settings.bucket(r, k) for r in replicas
                                                    for k in ("main", "checkout", "staging")})) or "-")
        s3_events = ensure_s3_notifications(settings)
        logger.info("S3 notifications: %s", s3_events)
        jwks = ensure_issuer(settings)
        logger.info("token issuer: %s (key %s, JWKS %s)", settings.local_issuer, settings.local_issuer_key, jwks)
        if args.tls:
            if settings.tls_cert_file:
                raise Failed("DSS_TLS_CERT_FILE is set: the gateway serves that certificate; leave out TLS=1")
            certificate = ensure_tls(settings)
            logger.info("TLS: development certificate %s (CA %s)", relative(certificate.cert_file),
                        relative(certificate.ca_file))
            if use_tls(certificate) and owned_pid("gateway"):
                logger.info("gateway: restarting it to serve HTTPS")
                stop("gateway")
        # A SCALE lower than the last `up`'s: the instances above it go.
        extra = [n for s in SERVICES for n in running_instances(s) if n not in instance_names(s, scale)]
        for name in stop(*extra):
            logger.info("%s: stopped (SCALE=%d)", name, scale)
        states = start_services(uri, scale=scale)
        for name, state in states.items():
            logger.info("%s: %s", name, state)
        if not args.no_wait:
            wait_healthy(list(states), timeout=args.timeout)
            if cluster is not None:
                logger.info("delivery limit: %d queue(s) dead-letter into <queue>.dead", len(cluster.guard_queues()))
    print_endpoints(settings, uri, broker, gcs_events, scale)
    return 0


def redact_all(uri: str) -> str:
    return ";".join(redact(part) for part in uri.split(";"))


def print_endpoints(settings: Settings, uri: str, broker: str, gcs_events: bool = True, scale: int = 1) -> None:
    metrics = ", ".join(f"{n} {metrics_host()}:{metrics_port(n)}" for n in SERVICES)
    if scale > 1:
        metrics += f"; instance k of a worker: its port + {METRICS_PORT_STEP}*(k-1) (SCALE={scale})"
    subscription = f"subscription {settings.gcs_notification_subscription}: GCS main bucket notifications"
    if not settings.pubsub_emulator_host:
        pubsub = f"Google Cloud   ({subscription})"
    elif gcs_events:
        pubsub = f"{settings.pubsub_emulator_host} (emulator)   ({subscription})"
    else:
        pubsub = f"none at {settings.pubsub_emulator_host}: {GCS_EVENTS_OFF}"
    tls_line = ""
    if TLS_STATE.exists():
        ca = relative(json.loads(TLS_STATE.read_text())["ca_file"])
        tls_line = f"\n  TLS        HTTPS with a development certificate; trust its CA: REQUESTS_CA_BUNDLE={ca}"
    print(f"""DSS is up.
  API        {gateway_url()}/v1   (Swagger: {gateway_url()}/v1/swagger.json)
  health     {health_url()}{tls_line}
  S3         {settings.s3_endpoint or 'AWS'}   (buckets {settings.s3_bucket}, {settings.s3_checkout_bucket}, {settings.s3_staging_bucket})
  GCS        {settings.gcs_endpoint or 'Google Cloud'}   (buckets {settings.gs_bucket}, {settings.gs_checkout_bucket}, {settings.gs_staging_bucket})
  SQS        {settings.sqs_endpoint or 'AWS'}   (queue {settings.s3_notification_queue}: S3 main bucket notifications)
  Pub/Sub    {pubsub}
  AMQP       {redact_all(uri)}   ({broker})
  metrics    {metrics}
  logs       {LOG_DIR.relative_to(ROOT)}/
  token      TOKEN=$(make -s token EMAIL=you@example.org GROUPS=dbio)
  clients    make sa-key EMAIL=you@example.org OUT=sa-key.json GROUPS=dbio  (README "Using the old DSS clients")
  stop       make down""")


def cmd_down(args) -> int:
    with exclusive():
        nodes = Cluster(amqp_uri()).names()  # the cluster's nodes, if BROKER=cluster runs
        infrastructure = ("fake-gcs", "pubsub", "moto", "rabbitmq", *nodes, "epmd")
        # Pid files of services (and instances) dropped since the last `up` would otherwise be orphaned.
        others = sorted(p.stem for p in RUN_DIR.glob("*.pid") if p.stem not in (*SERVICES, *infrastructure))
        # Services first (in parallel), so none of them sees its broker or storage vanish.
        stopped = stop(*others, *SERVICES) + stop(*infrastructure[:-1], timeout=60)
        TLS_STATE.unlink(missing_ok=True)  # the next `up` serves plain HTTP unless asked (TLS=1)
        STACK_STATE.unlink(missing_ok=True)
        for name in stopped:
            logger.info("%s: stopped", name)
        stop_epmd()
    print("stopped: " + ", ".join(stopped) if stopped else "nothing started by make up was running")
    return 0


def cmd_restart(args) -> int:
    names = args.services or list(SERVICES)
    unknown = sorted(set(names) - set(SERVICES))
    if unknown:
        raise Failed(f"unknown service(s): {', '.join(unknown)} (known: {', '.join(SERVICES)})")
    state = stack_state()
    scale = state.get("scale", 1)
    cluster = running_cluster(state)
    with exclusive():
        for name in stop(*(n for s in names for n in {*running_instances(s), *instance_names(s, scale)})):
            logger.info("%s: stopped", name)
        states = start_services(cluster.uri() if cluster else amqp_uri(), names, scale=scale)
        for name, started in states.items():
            logger.info("%s: %s", name, started)
        wait_healthy(list(states))
        if cluster is not None:
            cluster.guard_queues()
    print(f"restarted: {', '.join(states)}")
    return 0


def cmd_status(args) -> int:
    settings = Settings.from_config({})
    uri = amqp_uri()
    healthy = True

    def line(name: str, state: str, ok: bool) -> None:
        nonlocal healthy
        healthy &= ok
        print(f"  {name:<12} {state}")

    def owner(name: str) -> str:
        pid = owned_pid(name)
        return f"started by make up, pid {pid}" if pid else "not started by make up"

    state = stack_state()
    cluster = running_cluster(state)
    if cluster is not None:
        print(f"  broker       BROKER=cluster: {cluster.size} nodes, SCALE={state.get('scale', 1)}")
        for k, name in enumerate(cluster.names()):
            error = broker_error(cluster.uris()[k])
            line(name, f"{'up' if error is None else 'DOWN'}: node {cluster.node(k)} at "
                       f"{redact(cluster.uris()[k])} ({owner(name)})", error is None)
        running = cluster.running_nodes()
        line("cluster", f"running nodes: {', '.join(running) or 'none reachable'}", len(running) == cluster.size)
    else:
        if state:
            print(f"  broker       BROKER=single, SCALE={state.get('scale', 1)}")
        broker = broker_error(uri)
        line("rabbitmq", f"{'up' if broker is None else 'DOWN'} at {redact(uri)} ({owner('rabbitmq')})",
             broker is None)
    for name, endpoint, answers in (("moto", settings.s3_endpoint, answers_like_moto),
                                    ("fake-gcs", settings.gcs_endpoint, answers_like_gcs),
                                    ("pubsub", settings.pubsub_emulator_host and f"http://{settings.pubsub_emulator_host}",
                                     answers_like_pubsub)):
        if local_endpoint(endpoint) is None:
            line(name, f"not managed ({endpoint or 'real cloud'})", True)
            continue
        if name == "pubsub" and not owned_pid(name) and local_cloud.pubsub_emulator_binary() is None \
                and not local_cloud.port_open(*local_endpoint(endpoint)):
            line(name, f"not installed: {GCS_EVENTS_OFF}", True)
            continue
        up = answers(endpoint.rstrip("/"))
        line(name, f"{'up' if up else 'DOWN'} at {endpoint} ({owner(name)})", up)
    scale = state.get("scale", 1)
    for service in SERVICES:
        running = running_instances(service)
        for name in dict.fromkeys([*instance_names(service, scale), *running]):
            pid = running.get(name)
            line(name, f"running, pid {pid}, metrics :{metrics_port(service, instance_number(name))}" if pid
                 else "stopped", bool(pid))
    try:
        answer = get_gateway(health_url())
        line("health", f"HTTP {answer.status_code} {answer.text[:300]}", answer.status_code == 200)
    except requests.RequestException as error:
        line("health", f"no answer from {health_url()} ({type(error).__name__})", False)
    return 0 if healthy else 3


def cmd_token(args) -> int:
    settings = Settings.from_config({})
    ensure_issuer(settings)
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    # stdout carries the token and nothing else: `TOKEN=$(make -s token ...)`.
    print(tokens.mint_token_for_settings(settings, args.email, groups, lifetime_s=args.lifetime))
    return 0


def cmd_sa_key(args) -> int:
    """Write a service-account key file the running stack trusts at once (its JWKS is re-read),
    recording the groups granted to the account (``--groups``) with its keys."""
    settings = Settings.from_config({})
    jwks = issuer_jwks_file(settings.auth_issuers, args.email)
    if jwks is None:
        raise Failed(f"DSS_AUTH_ISSUERS trusts no JWKS file for {args.email} (it is `{settings.auth_issuers}`); "
                     "add an entry such as `*=var/auth/service-accounts/{iss}.json` (the default has it)")
    if os.path.exists(args.out):
        raise Failed(f"{args.out} exists; give another OUT, or delete it first")
    groups = None if args.groups is None else [g.strip() for g in args.groups.split(",") if g.strip()]
    try:
        kid = tokens.create_service_account_key(args.email, args.out, jwks, groups=groups)
    except ValueError as error:
        raise Failed(str(error)) from None
    granted = tokens.account_groups(jwks, args.email)
    writers = ", ".join(settings.auth_allowed_groups)
    if set(granted) & set(settings.auth_allowed_groups):
        access = f"It is granted {', '.join(granted)}: it may write."
    else:
        access = (f"It is granted {', '.join(granted) or 'no group'}: it may only read (GROUPS=dbio, or another "
                  f"group of DSS_AUTH_ALLOWED_GROUPS ({writers}), to let it write; its tokens' group claims count "
                  "for nothing).")
    admin = args.email.lower() in {e.lower() for e in settings.admin_emails}
    print(f"wrote {args.out}: a service-account key of {args.email} (key id {kid}), trusted through {jwks}.\n"
          f"Use it:   export GOOGLE_APPLICATION_CREDENTIALS={args.out}\n"
          f"{access} "
          f"{'It is an administrator (DSS_ADMIN_EMAILS).' if admin else 'Deleting bundles needs DSS_ADMIN_EMAILS.'}\n"
          f"Revoke it: remove its key from {jwks}.", file=sys.stderr)
    return 0


def cmd_cert(args) -> int:
    """Make (once) the development CA and the gateway's certificate under var/tls."""
    certificate = ensure_tls(Settings.from_config({}))
    print(f"CA          {relative(certificate.ca_file)}   (trust it: REQUESTS_CA_BUNDLE, or the system store)\n"
          f"certificate {relative(certificate.cert_file)}   (DSS_TLS_CERT_FILE)\n"
          f"key         {relative(certificate.key_file)}   (DSS_TLS_KEY_FILE)\n"
          f"names       {', '.join(tls_names(Settings.from_config({})))}\n"
          "`make up TLS=1` serves HTTPS with it.", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.stack", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start everything in the background; return once healthy")
    up.add_argument("--no-wait", action="store_true", help="do not wait for the gateway's health check")
    up.add_argument("--timeout", type=float, default=HEALTH_TIMEOUT_S,
                    help="seconds to wait for the health check (default %(default)s)")
    up.add_argument("--scale", type=int, default=None,
                    help="instances of each worker service (default: as the running stack, else 1)")
    up.add_argument("--broker", choices=BROKER_MODES, default=None,
                    help="single: one RabbitMQ (AMQP_URI, started if local and absent); cluster: three local "
                         "nodes from the port of AMQP_URI (default: as the running stack, else single)")
    up.add_argument("--tls", action="store_true",
                    help="serve HTTPS with the development certificate of var/tls (made if missing) until `down`")
    up.set_defaults(run=cmd_up)
    commands.add_parser("down", help="stop what `up` started").set_defaults(run=cmd_down)
    restart = commands.add_parser("restart", help="restart services (all by default) after a code change")
    restart.add_argument("services", nargs="*")
    restart.set_defaults(run=cmd_restart)
    commands.add_parser("status", help="what runs, and the gateway's health").set_defaults(run=cmd_status)
    token = commands.add_parser("token", help="print a bearer token signed by the local issuer")
    token.add_argument("--email", required=True)
    token.add_argument("--groups", default="dbio", help="comma-separated")
    token.add_argument("--lifetime", type=int, default=3600, help="seconds")
    token.set_defaults(run=cmd_token)
    sa_key = commands.add_parser("sa-key", help="write a service-account key file (GOOGLE_APPLICATION_CREDENTIALS "
                                                "of dbio / hca) whose tokens the stack trusts, without a restart")
    sa_key.add_argument("--email", required=True, help="the account's e-mail (its tokens' iss, sub and email)")
    sa_key.add_argument("--out", required=True, type=os.path.abspath, help="the key file to write (owner-only)")
    sa_key.add_argument("--groups", default=None,
                        help="comma-separated groups granted to the account, replacing its earlier grant "
                             "(default: keep it; none for a new account, which may then only read)")
    sa_key.set_defaults(run=cmd_sa_key)
    commands.add_parser("cert", help="make the development CA and the gateway's certificate (var/tls)"
                        ).set_defaults(run=cmd_cert)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("botocore", "boto3", "urllib3", "google", "amqp", "kombu"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.chdir(ROOT)  # relative settings (key, JWKS) resolve against the repo root, as in the services
    try:
        return args.run(args)
    except Failed as error:
        logger.error("%s: %s", args.command, error)
        return 1


if __name__ == "__main__":
    sys.exit(main())
