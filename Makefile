# Developer entry points. CI runs `bash .ci/run`, which ends in `make test`.
# Targets that print something meant for capture (token) keep make's own output off stdout:
# recipes are silent (@) and installation chatter goes to stderr.
SHELL := /bin/bash
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
LOCK_FILE ?= constraints.txt

EMAIL ?= dev@example.org
GROUPS ?= dbio
LIFETIME ?= 3600
PYTEST_ARGS ?=
BENCH_ARGS ?=
TLS ?=
OUT ?=
SCALE ?=
BROKER ?=

.PHONY: install up down restart status token sa-key cert test test-compat lock bench

install: $(STAMP)

# Reinstalls only when the dependency declarations change (the package itself is editable).
$(STAMP): pyproject.toml constraints.txt
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV) >&2
	@$(VPY) -m pip install -q -c constraints.txt -e '.[dev]' >&2
	@touch $@

# `make up TLS=1`: the gateway serves HTTPS with the development certificate of var/tls (until `make down`).
# `make up SCALE=3`: three instances of each worker service. `make up BROKER=cluster`: three local
# RabbitMQ nodes (quorum queues) instead of one. Both are kept until `make down`.
up: install
	@$(VPY) -m devtools.stack up $(if $(TLS),--tls) $(if $(SCALE),--scale $(SCALE)) $(if $(BROKER),--broker $(BROKER))

down: install
	@$(VPY) -m devtools.stack down

# `make restart` restarts every service, `make restart SERVICE="files bundles"` only those named.
restart: install
	@$(VPY) -m devtools.stack restart $(SERVICE)

status: install
	@$(VPY) -m devtools.stack status

token: install
	@$(VPY) -m devtools.stack token --email '$(EMAIL)' --groups '$(GROUPS)' --lifetime '$(LIFETIME)'

# A service-account key file for the dbio / hca clients, trusted by the running stack at once. GROUPS
# given (GROUPS=dbio; GROUPS= for none) becomes the account's grant; not given, the grant is kept (a new
# account gets none, not the `dbio` default of `make token`).
sa-key: install
	@test -n '$(OUT)' || { echo "make sa-key: give the key file to write, e.g. OUT=sa-key.json" >&2; exit 2; }
	@$(VPY) -m devtools.stack sa-key --email '$(EMAIL)' --out '$(OUT)' \
		$(if $(filter-out default file undefined,$(origin GROUPS)),--groups '$(GROUPS)')

# The development CA and the gateway's certificate (var/tls); `make up TLS=1` makes them too.
cert: install
	@$(VPY) -m devtools.stack cert

test: install
	@deploy/ensure-rabbitmq.sh
	@deploy/ensure-tools.sh
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Only the compatibility suite: the real dbio and hca clients against the API (make test runs it too).
test-compat: install
	@deploy/ensure-rabbitmq.sh
	$(VENV)/bin/pytest -m compat $(PYTEST_ARGS)

# Re-resolve every dependency from scratch in a throwaway venv and pin the result.
lock:
	@set -euo pipefail; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/pip" install -q -e '.[dev]' >&2; \
	{ echo "# Pinned versions for every install (pip install -c constraints.txt ...)."; \
	  echo "# Regenerate: make lock  (pip freeze of a fresh venv with .[dev])"; \
	  "$$tmp/venv/bin/pip" freeze --exclude-editable; } > "$(LOCK_FILE).tmp"; \
	mv "$(LOCK_FILE).tmp" "$(LOCK_FILE)"; \
	echo "wrote $(LOCK_FILE)" >&2

bench: up
	@set -euo pipefail; shopt -s nullglob; scripts=(bench/[!_]*.py); \
	if [ $${#scripts[@]} -eq 0 ]; then echo "no benchmarks in bench/" >&2; exit 0; fi; \
	for script in "$${scripts[@]}"; do echo "== $$script" >&2; $(VPY) "$$script" $(BENCH_ARGS); done
