# avatarcast: `make run` serves the built-in avatar, `make test` runs the whole suite.
# Both work on a fresh Debian/Ubuntu machine with Python 3.11+ (system packages need root or sudo).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080
# Speech: espeak-ng is the built-in TTS; festival and its voices give `avatar create`'s adaptation,
# training and eval their natural-sounding voices (without festival, create adapts on espeak only);
# chromium is the real browser of the WebRTC tests (driven by playwright, no browser download);
# nginx with its RTMP module receives the RTMP outputs' pushes in their tests.
# srt-tools: srt-live-transmit sends the srt outputs (and is the SRT listener in their tests).
RUN_APT := espeak-ng festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts srt-tools
TEST_APT := espeak-ng festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts chromium \
	nginx libnginx-mod-rtmp srt-tools

# The integrations (LiveKit Agents plugin, pipecat service) are separate distributions with their
# own environment: livekit-agents and pipecat-ai pull protobuf and friends the server must not get.
INT_VENV := .venv-integrations
INT_BIN := $(INT_VENV)/bin
INTEGRATIONS := integrations/livekit integrations/pipecat

.PHONY: run test install install-dev lint typecheck unit apt-run apt-test default-avatar eval bench clean \
	integrations-test fuzz

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

# The livekit extra goes in a second step: mediapipe's metadata pins protobuf<5, the LiveKit SDK
# needs 6 (mediapipe runs on 6; 7 breaks it), and one resolve cannot satisfy both.
$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q 'livekit>=1.0' 'protobuf>=6,<7'
	touch $@ $(VENV)/.installed

$(INT_BIN)/python:
	$(PYTHON) -m venv $(INT_VENV)
	$(INT_BIN)/python -m pip install -q --upgrade pip

$(INT_VENV)/.installed: $(INT_BIN)/python integrations/livekit/pyproject.toml integrations/pipecat/pyproject.toml
	$(INT_BIN)/pip install -q -e 'integrations/livekit[test]' -e 'integrations/pipecat[dev]'
	touch $@

# Each integration's tests run from its own folder (both have a package named tests); the
# pipecat tests start a real server from $(BIN)/python.
integrations-test: $(INT_VENV)/.installed install-dev
	$(INT_BIN)/ruff check $(INTEGRATIONS)
	$(INT_BIN)/ruff format --check $(INTEGRATIONS)
	for d in $(INTEGRATIONS); do \
		(cd $$d && AVATARCAST_SERVER_PYTHON=$(CURDIR)/$(BIN)/python \
			$(CURDIR)/$(INT_BIN)/python -m pytest -q -p no:cacheprovider tests) || exit 1; \
	done

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

apt-run:
	@scripts/apt-ensure $(RUN_APT)

apt-test:
	@scripts/apt-ensure $(TEST_APT)

run: apt-run install
	$(BIN)/avatarcast serve --host $(HOST) --port $(PORT)

lint: install-dev
	$(BIN)/ruff check streamer models tests
	$(BIN)/ruff format --check streamer models tests
	$(BIN)/lint-imports

typecheck: install-dev
	$(BIN)/mypy

unit: install-dev
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

test: apt-test install-dev
	$(BIN)/ruff check streamer models tests
	$(BIN)/ruff format --check streamer models tests
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15
	$(MAKE) integrations-test

# The built-in avatar's whole recipe (teacher data -> SyncNet -> generator -> ONNX -> models/default/).
default-avatar: apt-test install-dev
	$(BIN)/python -m models.recipe

eval: install-dev
	$(BIN)/avatarcast eval

bench: install
	$(BIN)/avatarcast bench

# schemathesis against /openapi.json, 1,000 cases (docs/benchmarks.md, "Fuzzing"); make test
# runs about 50 (one per operation and mode; AVATARCAST_FUZZ_CASES=N for more).
fuzz: install-dev
	$(BIN)/python -m tests.fuzz_api --cases 1000

clean:
	rm -rf $(VENV) $(INT_VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
