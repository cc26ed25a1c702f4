# jasco developer entry points. Everything installs into $(VENV); torch goes first so that pip
# never resolves a CUDA build on CPU machines.
VENV ?= .venv
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jasco-installed
export DORA_PACKAGE := jasco

.PHONY: install test test-fast train example clean wheel

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q -x tests

test-fast: install
	$(PY) -m pytest -q -x -m "not slow" tests

example: install
	$(PY) scripts/make_example_dataset.py --out egs/example --if-missing

# The main job: a tiny JASCO trained end to end on the generated example dataset (CPU, minutes).
train: example
	$(VENV)/bin/dora run solver=jasco/debug $(ARGS)

# The installable wheel (configs copied inside, docs/PACKAGING.md) in dist/; installed, `jasco-dora`
# replaces `dora` + DORA_PACKAGE (exported above for source users).
wheel: install
	$(PY) -m build --wheel --no-isolation --outdir dist

clean:
	rm -rf outputs .pytest_cache

# Chordino for chord extraction (optional extra jasco[chords]; see docs/CHORDS.md). vamp's setup
# imports numpy, so it is built without isolation against the venv's numpy; chord-extractor's
# Chordino wrapper still imports pkg_resources, gone from setuptools >= 81.
.PHONY: install-chords
install-chords: install
	$(PY) -m pip install -q numpy
	$(PY) -m pip install -q "setuptools>=61,<81" wheel
	$(PY) -m pip install -q --no-build-isolation "vamp>=1.1"
	$(PY) -m pip install -q --no-build-isolation "chord-extractor>=0.1.3"
	$(PY) -c "from jasco.controls.chords.recognition import chordino_available as ok; assert ok(), 'Chordino plugin not found'; print('Chordino OK')"

# Debian packages that tests/test_music_corpus.py needs (scripts/make_music_corpus.py renders MIDI
# with FluidSynth and a GM soundfont) and tests/test_app_browser.py (headless chromium + chromedriver).
# Installs only what is missing, and only as root (CI runs `.ci/run` as root on a clean Debian);
# otherwise it prints the apt line and those tests skip.
SYSTEM_PACKAGES := fluidsynth timgm6mb-soundfont chromium chromium-driver
.PHONY: system-deps
system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null \
		| grep -q "install ok installed" || echo $$p; done); \
	missing=$$(echo $$missing); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends $$missing; \
	else \
		echo "note: Debian packages missing: $$missing (apt-get install $$missing); tests that need them skip"; \
	fi
