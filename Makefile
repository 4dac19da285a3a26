# The course's commands. A learner needs two: `make book` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NB     ?= book/*.ipynb
export COURSE_PROGRESS ?= 0

.PHONY: book test unit book-strict execute timings student grade benchmark clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

book: $(STAMP)          ## create .venv, install everything, build the HTML book
	$(BIN)/jupyter-book build . --builder html
	@echo "The book is at $(CURDIR)/_build/html/index.html"

test: $(STAMP)          ## the whole suite: strict book build, unit tests, nbval on every notebook
	$(BIN)/jupyter-book build . --builder html --warningiserror --nitpick --keep-going
	$(BIN)/python -m pytest tests book --nbval --nbval-current-env --nbval-sanitize-with tests/sanitize.cfg

unit: $(STAMP)          ## the course_code unit tests alone
	$(BIN)/python -m pytest tests

execute: $(STAMP)       ## re-execute notebooks in place: make execute NB=book/02_elbo.ipynb
	$(BIN)/python scripts/notebooks.py execute $(NB)

timings: $(STAMP)       ## print how long every notebook takes to execute (nothing is written)
	$(BIN)/python scripts/notebooks.py time $(NB)

benchmark: $(STAMP)     ## training-loop throughput against a DataLoader loop
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf _build
