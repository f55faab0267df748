# whisper-zh: `make run` transcribes the example clips with the embedded model, `make test` runs the tests.
# Both set up everything they need on first use (a virtualenv in .venv from requirements/lock.txt).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SYSTEM_STAMP := $(VENV)/.system-stamp

.PHONY: setup run test lint docs bench clean

setup: $(STAMP) $(SYSTEM_STAMP)

$(STAMP): requirements/lock.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/lock.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -c "from whisper_zh.models import embedded_model_dir; embedded_model_dir()"
	touch $@

# Debian packages: ffmpeg (compressed formats from the command line), chromium (the web page's browser test) and a
# CJK font (so the browser test's screenshots show characters, not boxes).
# Best effort: without root or apt the Python stack still works and the browser test skips with its reason.
$(SYSTEM_STAMP):
	@mkdir -p $(VENV)
	@if ! command -v ffmpeg >/dev/null || ! command -v chromium >/dev/null || [ ! -d /usr/share/fonts/truetype/wqy ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg chromium fonts-wqy-microhei >/dev/null) \
	      || echo "warning: apt-get could not install ffmpeg/chromium/fonts-wqy-microhei"; \
	  else echo "warning: ffmpeg/chromium missing and apt-get unavailable"; fi; \
	fi
	touch $@

run: setup
	$(VENV)/bin/whisper-zh transcribe examples/BAC009S0150W0121.flac examples/BAC009S0150W0122.flac \
	  --format srt --output-dir out/examples

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests bench

# The manual (docs/, mkdocs.yml) into site/; --strict fails on a broken link, a bad anchor or a page left out of the nav.
docs: setup
	$(VENV)/bin/mkdocs build --strict --quiet

bench: setup
	$(PY) bench/transcribe_speed.py

clean:
	rm -rf $(VENV) out site .pytest_cache
