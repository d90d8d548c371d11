# AgentChat broker. `make run` and `make test` install what they need on Debian 12, then build.
SWIFT ?= swift
APT_PACKAGES := pkg-config libwebsockets-dev libwebsockets-evlib-uv libsodium-dev libhiredis-dev libuv1-dev \
	redis-server
# What only the tests use: a reference WebSocket server for the client library's own tests, and a headless
# browser for the viewer page's test.
TEST_PACKAGES := libwebsockets-test-server chromium chromium-driver
PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
ARGS ?=

.PHONY: deps build run test clean

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

test: EXTRA_PACKAGES = $(TEST_PACKAGES)
test: deps
	$(PYTHON) -c "import selenium" 2>/dev/null || $(PYTHON) -m pip install -q selenium
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build
	$(PYTHON) Tests/Browser/test_viewer_real.py $$($(SWIFT) build --show-bin-path)

clean:
	rm -rf .build
