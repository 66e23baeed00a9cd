# `make run` and `make test` create .venv and install fedmem into it on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench secagg-attack dp-canaries clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,tracking]'
	$(BIN)/python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['tool']['fedmem']['install-without-deps'])" \
		| xargs $(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps
	touch $(STAMP)

# The first run builds the tiny Llama's tokenizer and warm-started base once (about 2
# minutes on 2 cores; cached under ~/.cache/fedmem), as a download would be elsewhere.
run: $(STAMP)
	$(BIN)/fedmem prepare configs/quickstart.toml
	$(BIN)/fedmem run configs/quickstart.toml

# lint-imports first: an upward import between layers fails the build (docs/design.md).
test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n auto --dist loadgroup --no-loadscope-reorder

# Speed ratios measured side by side (about 10 minutes on 2 cores); appends to
# benchmarks/RESULTS.md under "Speed ratios (make bench)".
bench: $(STAMP)
	$(BIN)/python -m benchmarks.speed_ratios

# Brute-forces one SecAgg+ pairwise mask seed over 2^20 candidates with Flower's own mask
# generator (a few minutes on 2 cores) and appends under "SecAgg+ 32-bit mask seeds (make
# secagg-attack)" in benchmarks/RESULTS.md; docs/threat-model-secagg.md reads it.
secagg-attack: $(STAMP)
	$(BIN)/python -m benchmarks.secagg_seed

# The gradient-canary DP audit at quickstart size (client 0, one round; about 10 minutes
# on 2 cores): no-noise power, intact vs a tenth of the noise, and its cost; appends under
# "DP audits: gradient canaries (make dp-canaries)" in benchmarks/RESULTS.md.
dp-canaries: $(STAMP)
	$(BIN)/python -m benchmarks.dp_canaries

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf runs .pytest_cache .ruff_cache
