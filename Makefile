# AgentChat broker. `make run` and `make test` install what they need on Debian 12, then build.
SWIFT ?= swift
APT_PACKAGES := pkg-config libwebsockets-dev libwebsockets-evlib-uv libsodium-dev libhiredis-dev libuv1-dev \
	libssl-dev redis-server
# What only the tests use: a reference WebSocket server for the client library's own tests, a headless
# browser for the viewer page's test, and the openssl command (the Swift TLS tests make their CA with it). (From PyPI, below: selenium for that test, localstripe, a fake Stripe, for
# the payments tests.)
TEST_PACKAGES := libwebsockets-test-server chromium chromium-driver openssl
PYTHON ?= python3
# The Python agents of the viewer page's peek tests (Tests/Browser/peek_agents.py): the threaded WebSocket client
# (websockets 12 or later), libsodium's sealed boxes (PyNaCl), X25519, Ed25519, HKDF and AES-GCM (cryptography).
PEEK_AGENT_PACKAGES := "websockets>=12" pynacl cryptography
export PEEK_AGENT_IMPORTS := import websockets.sync.client, nacl.public, cryptography.hazmat.primitives.ciphers.aead
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
ARGS ?=

# Load tests (loadtest/, a separate package that depends on this one by path).
BENCH_PACKAGES := nats-server mosquitto libwebsockets-test-server

.PHONY: deps build run demo test test-python test-mcp test-api test-deploy test-backup test-redis-cluster test-tls clean \
	bench bench-compare loadtest-smoke chaos chaos-smoke \
	fuzz sanitize

# Installs the Debian packages that are missing (and only then runs apt-get update).
deps:
	@missing=""; for p in $(APT_PACKAGES) $(EXTRA_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "Installing:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

build: deps
	$(SWIFT) build -c release --product agentchat-broker

# Starts the broker with its own embedded Redis in ./data; Ctrl-C stops both.
run: build
	$$($(SWIFT) build -c release --show-bin-path)/agentchat-broker $(ARGS)

# The broker (release) with its embedded Redis in $(DEMO_DIR)/broker, and two SDK agents (agentchat-demo) talking in
# a listed channel, granting peeks; open http://127.0.0.1:8080/ to watch and buy a sandbox peek. Ctrl-C stops all
# of it (scripts/demo.sh). ARGS go to the broker, e.g. ARGS="--peek-refusal-window 10 --peek-duration 60".
DEMO_DIR ?= demo-data
demo: build
	$(SWIFT) build -c release --product agentchat-demo
	AGENTCHAT_BIN_DIR=$$($(SWIFT) build -c release --show-bin-path) DEMO_DIR=$(DEMO_DIR) DEMO_BROKER_ARGS='$(ARGS)' \
		scripts/demo.sh

# Also builds what `make run` builds (release), where the compiler has differed from debug.
test: EXTRA_PACKAGES = $(TEST_PACKAGES)
test: deps
	$(PYTHON) scripts/check-layers.py
	$(SWIFT) build -c release --product agentchat-broker
	$(PYTHON) -c "import selenium" 2>/dev/null || $(PYTHON) -m pip install -q selenium \
		|| $(PYTHON) -m pip install -q --break-system-packages selenium
	$(PYTHON) -c "import localstripe" 2>/dev/null || $(PYTHON) -m pip install -q localstripe \
		|| $(PYTHON) -m pip install -q --break-system-packages localstripe
	$(PYTHON) -c "$$PEEK_AGENT_IMPORTS" 2>/dev/null || $(PYTHON) -m pip install -q $(PEEK_AGENT_PACKAGES) \
		|| $(PYTHON) -m pip install -q --break-system-packages $(PEEK_AGENT_PACKAGES)
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build
	$(PYTHON) Tests/Browser/test_fake_broker.py
	$(PYTHON) Tests/Browser/test_viewer.py
	$(MAKE) loadtest-smoke
	$(MAKE) chaos-smoke
	$(PYTHON) Tests/Browser/test_viewer_real.py $$($(SWIFT) build --show-bin-path)
	$(PYTHON) Tests/Browser/test_admin_real.py $$($(SWIFT) build --show-bin-path)
	$(MAKE) test-python
	$(MAKE) test-mcp
	$(MAKE) test-api
	$(MAKE) test-deploy
	$(MAKE) test-tls

# The Python SDK (clients/python, package agentchat): installs it from the tree with pip (with its PyPI
# dependencies: websockets, PyNaCl, cryptography) and pytest, builds the broker and the Swift CLI (debug), and runs
# its tests against them: real brokers with embedded Redis, the CLI as the Swift agent, the SDK's Viewer (~20 s).
PYTHON_SDK_PACKAGES := ./clients/python pytest
test-python: deps
	$(PYTHON) -m pip install -q $(PYTHON_SDK_PACKAGES) \
		|| $(PYTHON) -m pip install -q --break-system-packages $(PYTHON_SDK_PACKAGES)
	$(SWIFT) build --product agentchat-broker
	$(SWIFT) build --product agentchat
	AGENTCHAT_BIN_DIR=$$($(SWIFT) build --show-bin-path) AGENTCHAT_TEST_INSTALLED=1 \
		$(PYTHON) -m pytest -q -p no:cacheprovider clients/python/tests

# `agentchat mcp` (Tests/MCP): the official MCP Python SDK (PyPI `mcp`) drives the server over stdio against the
# real broker and Redis, with pytest (PEEK_AGENT_PACKAGES for the viewer that requests a paid peek; the Python SDK
# for the test with all three kinds of agent in one channel). Under a minute.
MCP_TEST_PACKAGES := "mcp>=2.3,<3" pytest ./clients/python
export MCP_TEST_IMPORTS := import pytest, agentchat, importlib.metadata as m; assert m.version("mcp").split(".")[0] == "2"
test-mcp: deps
	$(PYTHON) -c "$$MCP_TEST_IMPORTS" 2>/dev/null || $(PYTHON) -m pip install -q $(MCP_TEST_PACKAGES) \
		|| $(PYTHON) -m pip install -q --break-system-packages $(MCP_TEST_PACKAGES)
	$(PYTHON) -c "$$PEEK_AGENT_IMPORTS" 2>/dev/null || $(PYTHON) -m pip install -q $(PEEK_AGENT_PACKAGES) \
		|| $(PYTHON) -m pip install -q --break-system-packages $(PEEK_AGENT_PACKAGES)
	$(SWIFT) build --product agentchat
	$(SWIFT) build --product agentchat-broker
	AGENTCHAT_BIN_DIR=$$($(SWIFT) build --show-bin-path) $(PYTHON) -m pytest -q -p no:cacheprovider Tests/MCP

# TLS (Tests/TLS, docs/ops/tls.md): real brokers (debug build) with --tls-cert/--tls-key and certificates made by the
# openssl CLI in a temporary directory; Python's ssl module and the Python SDK (from the tree, with its PyPI
# dependencies) as clients: https, wss, ALPN, the head gate over TLS, SIGHUP reloads, --processes. ~10 s once built.
TLS_TEST_PACKAGES := "websockets>=15" pynacl cryptography pytest
export TLS_TEST_IMPORTS := import websockets.asyncio.client, nacl.public, cryptography, pytest
test-tls: deps
	command -v openssl >/dev/null || $(SUDO) apt-get install -y -qq openssl
	$(PYTHON) -c "$$TLS_TEST_IMPORTS" 2>/dev/null || $(PYTHON) -m pip install -q $(TLS_TEST_PACKAGES) \
		|| $(PYTHON) -m pip install -q --break-system-packages $(TLS_TEST_PACKAGES)
	$(SWIFT) build --product agentchat-broker
	AGENTCHAT_BIN_DIR=$$($(SWIFT) build --show-bin-path) $(PYTHON) -W ignore::DeprecationWarning -m pytest -q \
		-p no:cacheprovider Tests/TLS

# The machine-readable API descriptions (docs/openapi.yaml, docs/asyncapi.yaml): scripts/check-api-descriptions.py
# checks them against the golden frames, FrameType/ErrorCode/CloseCode.swift and the broker's routes; Tests/API runs
# the checker's negative tests, then against real brokers (debug build): schemathesis and hand-written requests
# (openapi.yaml), and ~430 frames derived from the AsyncAPI schemas (asyncapi.yaml). Under a minute once built.
API_PACKAGES := openapi-spec-validator schemathesis jsonschema referencing pyyaml pynacl requests asyncapi3 pytest
export API_IMPORTS := import openapi_spec_validator, schemathesis, jsonschema, referencing, yaml, nacl.signing, requests, asyncapi3, pytest
test-api: deps
	$(PYTHON) -W ignore -c "$$API_IMPORTS" 2>/dev/null || $(PYTHON) -m pip install -q $(API_PACKAGES) \
		|| $(PYTHON) -m pip install -q --break-system-packages $(API_PACKAGES)
	$(SWIFT) build --product agentchat-broker
	$(PYTHON) scripts/check-api-descriptions.py
	PYTHONDONTWRITEBYTECODE=1 AGENTCHAT_BIN_DIR=$$($(SWIFT) build --show-bin-path) $(PYTHON) -m pytest -q \
		-p no:cacheprovider -p no:benchmark -p no:hypothesispytest Tests/API

# The deployment files (deploy/, Tests/Deploy): systemd-analyze verify and security on the units, install.sh
# (dry run, an install into a temporary root, idempotence, shellcheck), the installed Redis config and broker run for
# real, the K8s manifests validated offline against Kubernetes 1.30 (kubernetes-validate's bundled schemas), the
# Containerfile against the broker's ldd. Under a minute once built.
DEPLOY_TEST_PACKAGES := "kubernetes-validate==1.37.0" pyyaml pytest
export DEPLOY_TEST_IMPORTS := import kubernetes_validate, yaml, pytest, importlib.metadata as m; assert m.version("kubernetes-validate") == "1.37.0"
test-deploy: EXTRA_PACKAGES = shellcheck
test-deploy: deps
	$(PYTHON) -c "$$DEPLOY_TEST_IMPORTS" 2>/dev/null || $(PYTHON) -m pip install -q $(DEPLOY_TEST_PACKAGES) \
		|| $(PYTHON) -m pip install -q --break-system-packages $(DEPLOY_TEST_PACKAGES)
	$(SWIFT) build --product agentchat-broker
	$(SWIFT) build --product agentchat
	PYTHONDONTWRITEBYTECODE=1 AGENTCHAT_BIN_DIR=$$($(SWIFT) build --show-bin-path) $(PYTHON) -m pytest -q -rs \
		-p no:cacheprovider Tests/Deploy

# Backup and restore (docs/ops/backup.md) alone: a backup under traffic restored into a fresh Redis and read back
# with the SDK, damaged files and a non-empty Redis refused, a Sentinel group with a password (~12 s). `make test`
# runs these already, within `swift test`.
test-backup: deps
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build --filter BackupRestoreTests

# The standard comparison (issue 6) and the rows of issue 12 (256 B at 100k and 300k deliveries/s, payloads 64 B/
# 1 KiB/16 KiB at fixed rates, fan-out 1 → 10,000, resume from a 10,000-message backlog, token churn; agentchat
# beside nats-server; agentchat also with --processes 2); rewrites the generated part of docs/BENCHMARKS.md (~50 min
# on a quiet machine; REPEAT=1 EXTRAS= COMPARE= BROKER_PROCESSES=1 make bench for one run of the standard
# comparison, ~8 min; STANDARD=0 COMPARE=resume make bench for one new row). More variables at the top of
# scripts/bench.sh.
bench: EXTRA_PACKAGES = $(BENCH_PACKAGES)
bench: deps
	SWIFT=$(SWIFT) scripts/bench.sh

# Old and new broker side by side (issue 10): the release broker of BASELINE (a git revision; built once in a
# temporary worktree, cached per commit in ~/.cache/agentchat-bench) and this tree's, as targets agentchat-baseline
# and agentchat of one harness run, alternating; broadcast 1 → 1,000 (256 B) and rooms 100 × 10, each a ramp and a
# fixed rate, REPEAT times (medians; default 3: ~25 min on a quiet machine, plus ~4 min per release build not yet
# done). Writes loadtest/benchmarks/compare-<UTC stamp>.md for docs/BENCHMARKS.md and the JSON beside it. More
# variables at the top of scripts/bench-compare.sh.
BASELINE ?= 386fb75
bench-compare: deps
	SWIFT=$(SWIFT) BASELINE=$(BASELINE) scripts/bench-compare.sh

# The harness's self-check against Tests/Golden, then a few seconds, 5 agentchat subscribers: exits non-zero on any
# failed check, lost or duplicated message.
loadtest-smoke:
	$(SWIFT) build --product agentchat-broker
	$(SWIFT) build --package-path loadtest --product agentchat-loadtest
	loadtest/.build/debug/agentchat-loadtest smoke --broker-binary $$($(SWIFT) build --show-bin-path)/agentchat-broker

# Chaos suite (docs/RELIABILITY.md): two brokers on one Redis (AOF, appendfsync always), numbered messages from
# senders on both brokers to subscribers on both, while brokers and Redis are killed with SIGKILL and restarted.
# Exits non-zero on any lost, duplicated or out-of-sequence message. CHAOS_SEED picks the fault plan (random and
# printed when empty); CHAOS_ARGS passes more options (agentchat-loadtest chaos --help).
CHAOS_SEED ?=
CHAOS_MESSAGES ?= 30000
CHAOS_SECONDS ?= 180
CHAOS_FAULTS ?= 3
CHAOS_ARGS ?=
CHAOS = loadtest/.build/debug/agentchat-loadtest chaos --broker-binary $$($(SWIFT) build --show-bin-path)/agentchat-broker \
	$(if $(CHAOS_SEED),--seed $(CHAOS_SEED))

# The full suite: 30,000 messages, 3 faults of each kind, at most 10 minutes.
chaos: deps
	$(SWIFT) build --product agentchat-broker
	$(SWIFT) build --package-path loadtest --product agentchat-loadtest
	$(CHAOS) --messages $(CHAOS_MESSAGES) --seconds $(CHAOS_SECONDS) --faults $(CHAOS_FAULTS) $(CHAOS_ARGS)

# The short version `make test` runs: 3,000 messages, one fault of each kind, under a minute.
chaos-smoke:
	$(SWIFT) build --product agentchat-broker
	$(SWIFT) build --package-path loadtest --product agentchat-loadtest
	$(CHAOS) --messages 3000 --seconds 20 --faults 1 --settle 15 --max-seconds 60 $(CHAOS_ARGS)

# libFuzzer targets (fuzz/, a separate package built with -sanitize=fuzzer,address), FUZZ_SECONDS each, one after
# another under nice; new inputs go to fuzz/.scratch, crashes to fuzz/artifacts. Exits non-zero on any crash.
FUZZ_SECONDS ?= 60
# SwiftPM starts its compilers and test binaries at nice 0 whatever its own priority; this keeps them at 19.
NICE_TREE := fuzz/sanitizers/nice-tree.sh
FUZZ_TARGETS ?= fuzz-json fuzz-frame fuzz-jws fuzz-encoding fuzz-http-request-head
FUZZ_FLAGS ?=
fuzz: deps
	$(NICE_TREE) $(SWIFT) build --package-path fuzz -c release -Xswiftc -sanitize=fuzzer,address
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_FLAGS='$(FUZZ_FLAGS)' fuzz/run.sh $(FUZZ_TARGETS)

# The test suite under AddressSanitizer + LeakSanitizer (all of it) and under ThreadSanitizer (SANITIZE_TSAN_FILTER,
# default all of it), each built in its own scratch path so the brokers the tests start are instrumented too. Every
# process writes its reports to .build-{asan,tsan}/sanitizer-logs; any report or failed test fails the target
# (after both phases ran). Suppressions (narrow, each explained) are in fuzz/sanitizers/. See docs/FUZZING.md.
SANITIZE_TSAN_FILTER ?=
sanitize: EXTRA_PACKAGES = $(TEST_PACKAGES)
sanitize: deps
	$(NICE_TREE) $(SWIFT) build --build-tests -Xswiftc -sanitize=address --scratch-path .build-asan
	$(NICE_TREE) $(SWIFT) build --build-tests -Xswiftc -sanitize=thread --scratch-path .build-tsan
	SWIFT=$(SWIFT) SANITIZE_TSAN_FILTER='$(SANITIZE_TSAN_FILTER)' fuzz/sanitizers/run-tests.sh

clean:
	rm -rf .build loadtest/.build fuzz/.build

# Redis Cluster (docs/ops/redis-cluster.md): the router's unit tests and, against real three-master clusters on
# loopback (redis-server --cluster-enabled, redis-cli --cluster create/reshard), the router, sharded pub/sub and two
# brokers with --redis-cluster during live reshards and a master killed and replaced by its replica (~60 s). `make test` runs these within its `swift test`; this
# target runs only them.
test-redis-cluster: deps
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build --filter 'RedisClusterSlotTests|RedisClusterTests|RedisClusterReshardTests|RedisClusterFailoverTests'
