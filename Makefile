# PinCLIP: two commands on a fresh machine.
#   make demo        # venv + installs + demo data, then the whole pipeline on the demo corpus
#   make demo SERVE=0  # same, without starting the server at the end (ends by itself)
#   make test        # venv + installs + demo data, then the test suite
#   make report      # the demo's evaluation against every baseline, 3 seeds, in domain and under domain shift
#                    # (after make demo; SCALING=1 adds the dataset-scaling curves, six more trainings)
#   make tune        # the same validation sweep for PinCLIP and every trained baseline (after make demo; hours on 2
#                    # cores); writes configs/tuned.yaml (the baselines' points) and results/demo/tune.md;
#                    # POINTS=base,lr-half,... runs part of the grid; each point is also trained on the
#                    # domain-shift split and its validation cells count (DOMAIN=0: in domain only, half the time)
#   make bench       # benchmarks against peer tools (long; not part of the tests); ITEMS='text_embed serve_load' for some
#   make mutants     # mutation testing of losses, objective, training data, graph, metrics, quant and
#                    # the served index's write path: write log, FAISS backend, index folder (~1 h)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SERVE ?= 1
RUN ?= runs/demo
ITEMS ?=
POINTS ?=
SCALING ?= 0
DOMAIN ?= 1
STAMP := $(VENV)/.installed

.PHONY: demo report tune test bench mutants lint install data-deps clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

data-deps:
	bash scripts/install_demo_data.sh data

demo: install data-deps
	$(VENV)/bin/pinclip demo --out $(RUN) --serve $(SERVE)

report: install data-deps
	$(VENV)/bin/pinclip demo --out $(RUN) --serve 0 --full-eval $(if $(filter 1,$(SCALING)),--scaling)
	$(PY) scripts/collect_results.py --run $(RUN) --out results/demo

tune: install data-deps
	$(VENV)/bin/pinclip tune --run $(RUN) $(if $(POINTS),--points $(POINTS)) $(if $(filter 1,$(DOMAIN)),--domain-shift)
	cp $(RUN)/tune/tuned.yaml configs/tuned.yaml
	mkdir -p results/demo && cp $(RUN)/tune/tune.md results/demo/tune.md

test: install data-deps
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .

bench: install data-deps
	$(PY) -m pip install -q -e '.[dev,bench]'
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) bench/run.py --out bench $(if $(ITEMS),--only $(ITEMS))

# a fresh run each time (mutmut would keep results of tests that have changed since); MUTANTS='pinclip.quant*'
# checks only the mutants whose names match
MUTANTS ?=
mutants: install
	$(PY) -m pip install -q -e '.[dev,mutants]'
	rm -rf mutants
	start=$$(date +%s); OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
		$(VENV)/bin/mutmut run --max-children 2 $(if $(MUTANTS),'$(MUTANTS)') \
		&& echo "mutmut run: $$(( $$(date +%s) - start )) s wall" | tee mutants/wall.txt
	$(PY) scripts/mutants_report.py

clean:
	rm -rf $(VENV) runs mutants
