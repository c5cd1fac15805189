# avatarcast: `make run` serves the built-in avatar, `make test` runs the whole suite.
# Both work on a fresh Debian/Ubuntu machine with Python 3.11+ (system packages need root or sudo).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080
# Speech: espeak-ng is the built-in TTS; festival and its voices give training and eval more voices;
# chromium is the real browser of the WebRTC tests (driven by playwright, no browser download);
# nginx with its RTMP module receives the RTMP outputs' pushes in their tests.
# srt-tools: srt-live-transmit sends the srt outputs (and is the SRT listener in their tests).
RUN_APT := espeak-ng
TEST_APT := espeak-ng festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts chromium \
	nginx libnginx-mod-rtmp srt-tools

.PHONY: run test install install-dev lint typecheck unit apt-run apt-test default-avatar eval bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

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
	$(BIN)/python -m pytest -q -p no:cacheprovider

test: apt-test install-dev
	$(BIN)/ruff check streamer models tests
	$(BIN)/ruff format --check streamer models tests
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The built-in avatar's whole recipe (teacher data -> SyncNet -> generator -> ONNX -> models/default/).
default-avatar: apt-test install-dev
	$(BIN)/python -m models.recipe

eval: install-dev
	$(BIN)/avatarcast eval

bench: install
	$(BIN)/avatarcast bench

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
