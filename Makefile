# The two commands of the README:
#   make demo   set up a virtual environment and run the main job
#   make test   set up a virtual environment and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup cluster browser demo test

setup: $(VENV)/.installed

# constraints-cpu.txt pins the CPU build of torch; see README for GPU clusters.
$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints-cpu.txt -e '.[test,text]'
	touch $@

# Every experiment of the paper at tiny scale on this machine, gathered and plotted,
# with demo/report.md saying what each figure shows.
demo: setup
	$(VENV)/bin/rotsweep demo --out demo

# The SLURM tests launch real jobs: start the single-node test cluster first
# (installs slurm-wlm, munge and MariaDB from Debian when missing; needs root).
cluster:
	bash slurm/cluster.sh start

# tests/test_report.py opens report.html in a real browser: Debian's chromium, driven by
# Playwright through its executable path (Playwright's own browser download is not used).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# -rs names every skipped test and why; under CI=true (.ci/run) a skip fails instead;
# --durations lists the slowest tests (the suite must stay under 20 minutes).
test: setup cluster browser
	$(PY) -m pytest -q -rs --durations=15
