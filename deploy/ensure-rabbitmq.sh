#!/usr/bin/env bash
# Make sure RabbitMQ with its management plugin answers on 127.0.0.1, as nameko's pytest fixtures
# need (AMQP on 5672, management API on 15672: their defaults). Used by `make test` and .ci/run.
# Starts the system broker (as root) when it is installed but not running; never installs it.
set -euo pipefail

AMQP_PORT=${RABBITMQ_AMQP_PORT:-5672}
MGMT_PORT=${RABBITMQ_MGMT_PORT:-15672}
TIMEOUT=${RABBITMQ_START_TIMEOUT:-90}
SCRIPTS=/usr/lib/rabbitmq/bin
LOG_DIR=/var/log/rabbitmq

say() { echo "ensure-rabbitmq: $*" >&2; }

# bash's /dev/tcp: no curl or nc needed on a fresh machine.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {  # PORT WHAT
    local deadline=$((SECONDS + TIMEOUT))
    until listening "$1"; do
        if ((SECONDS > deadline)); then
            say "$2 (127.0.0.1:$1) did not answer within ${TIMEOUT}s"
            tail -n 30 "$LOG_DIR"/*.log 2>/dev/null >&2 || true
            exit 1
        fi
        sleep 0.5
    done
}

# Debian's /usr/sbin wrappers switch to the rabbitmq user and then miss the Erlang cookie when
# called by root; the scripts themselves, with the broker's HOME, reach the running node.
plugins() {
    if [[ -x $SCRIPTS/rabbitmq-plugins ]]; then
        HOME=/var/lib/rabbitmq "$SCRIPTS/rabbitmq-plugins" "$@"
    else
        rabbitmq-plugins "$@"
    fi
}

installed() { [[ -x $SCRIPTS/rabbitmq-server ]] || command -v rabbitmq-server >/dev/null; }

if listening "$AMQP_PORT" && listening "$MGMT_PORT"; then
    exit 0
fi

if ! installed; then
    say "no RabbitMQ on 127.0.0.1:$AMQP_PORT and rabbitmq-server is not installed."
    say "install it as root: apt-get update && apt-get install -y rabbitmq-server (or run: bash .ci/run),"
    say "or run \`make up\`, which starts a private broker with the management plugin when one is installed."
    exit 1
fi

if [[ $(id -u) != 0 ]]; then
    say "RabbitMQ is installed but not fully running (AMQP $AMQP_PORT and management $MGMT_PORT needed)."
    say "as root: rabbitmq-server -detached && rabbitmq-plugins enable rabbitmq_management; or run \`make up\`."
    exit 1
fi

if listening "$AMQP_PORT"; then
    say "enabling the management plugin on the running broker"
    plugins enable rabbitmq_management >&2
else
    say "starting rabbitmq-server"
    plugins enable --offline rabbitmq_management >&2
    # As root the Debian wrapper runs the broker as the rabbitmq user, which owns its data.
    if [[ -x /usr/sbin/rabbitmq-server ]]; then
        /usr/sbin/rabbitmq-server -detached
    else
        rabbitmq-server -detached
    fi
fi

wait_for "$AMQP_PORT" "RabbitMQ AMQP"
wait_for "$MGMT_PORT" "RabbitMQ management"
say "RabbitMQ is up (AMQP 127.0.0.1:$AMQP_PORT, management 127.0.0.1:$MGMT_PORT)"
