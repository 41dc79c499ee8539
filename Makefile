# The README's two commands call `make run` and `make test`; both create .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast bench lint clean

# constraints.txt pins the numeric libraries (README "Reproducibility").
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch torchvision
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,text]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/fedmuscle-secure run $(CONFIG)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The unit tests only (tests/unit/, no test marked slow), not the end-to-end tests of
# tests/e2e/ (real processes, whole runs): a few minutes.
test-fast: $(STAMP)
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/bench_loss.py
	$(PY) bench/bench_privacy.py
	$(PY) bench/bench_secagg.py
	$(PY) bench/bench_ckks.py
	$(PY) bench/bench_grpc.py
	$(PY) bench/bench_wire_limits.py
	$(PY) bench/bench_shapes.py
	$(PY) bench/bench_cell.py --repeats 1

# Regenerate the comparison reports (DESIGN §7) in docs/results/ with one command; cells are
# kept in runs/compare-*/cells, so an interrupted `make results` resumes where it stopped.
.PHONY: results
results: $(STAMP)
	$(VENV)/bin/fedmuscle-secure compare configs/compare-paper.yaml --skip-invalid --publish docs/results/paper
	$(VENV)/bin/fedmuscle-secure compare configs/compare-secure.yaml --publish docs/results/secure
	$(VENV)/bin/fedmuscle-secure compare configs/compare-default.yaml --publish docs/results/default
	$(VENV)/bin/fedmuscle-secure compare configs/compare-fmtl.yaml --skip-invalid --publish docs/results/fmtl
	$(VENV)/bin/fedmuscle-secure compare configs/compare-shapes.yaml --publish docs/results/shapes
	$(VENV)/bin/fedmuscle-secure compare configs/compare-fmtl-shapes.yaml --skip-invalid --publish docs/results/fmtl-shapes

# Rebuild the published tables and plots from the cell records committed beside them
# (docs/results/*/cells/), without running anything.
.PHONY: results-report
results-report: $(STAMP)
	$(VENV)/bin/fedmuscle-secure compare configs/compare-paper.yaml --skip-invalid --report-only --out docs/results/paper --no-progress
	$(VENV)/bin/fedmuscle-secure compare configs/compare-secure.yaml --report-only --out docs/results/secure --no-progress
	$(VENV)/bin/fedmuscle-secure compare configs/compare-default.yaml --report-only --out docs/results/default --no-progress
	$(VENV)/bin/fedmuscle-secure compare configs/compare-fmtl.yaml --skip-invalid --report-only --out docs/results/fmtl --no-progress
	$(VENV)/bin/fedmuscle-secure compare configs/compare-shapes.yaml --report-only --out docs/results/shapes --no-progress
	$(VENV)/bin/fedmuscle-secure compare configs/compare-fmtl-shapes.yaml --skip-invalid --report-only --out docs/results/fmtl-shapes --no-progress

lint: $(STAMP)
	$(VENV)/bin/ruff check fedmuscle_secure crypto server client tests bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
