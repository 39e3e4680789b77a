"""The local stack `make up` runs: a private RabbitMQ when none answers, the cloud emulators, the
buckets and change notifications, the token issuer, TLS, and one ``nameko run`` process per
service (``python -m devtools.stack up|down|restart|status|token|sa-key|cert``; ``main`` has the
commands)."""
