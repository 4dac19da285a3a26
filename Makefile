# The course's commands. A learner needs two: `make book` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NB     ?= book/*.ipynb
export COURSE_PROGRESS ?= 0

.PHONY: book test unit execute timings student grade benchmark clean

# MathJax is served from the book's own static files, so equations typeset offline and when the
# HTML is opened from disk. Fetched once from the npm registry, pinned and checked against its hash.
MATHJAX_VERSION := 3.2.2
MATHJAX_SHA512  := 06df9249553c7811b6ef30a155ec0e89c62ced7b1db78d2a9b8f94a47c97ee4d3f3bd36588f73ec7bee4d7f144b0fb2328f64626fb5164cd6f3be81e5b43a11b
MATHJAX_DIR     := book/_static/mathjax
MATHJAX         := $(MATHJAX_DIR)/.version-$(MATHJAX_VERSION)

$(STAMP): requirements.txt pyproject.toml | $(MATHJAX)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

$(MATHJAX):
	@command -v npm >/dev/null || { echo "npm (Node.js) is needed once, to fetch MathJax $(MATHJAX_VERSION) from the npm registry" >&2; exit 1; }
	rm -rf $(MATHJAX_DIR) && mkdir -p $(MATHJAX_DIR)
	cd $(MATHJAX_DIR) && npm pack --silent mathjax@$(MATHJAX_VERSION) >/dev/null
	echo "$(MATHJAX_SHA512)  $(MATHJAX_DIR)/mathjax-$(MATHJAX_VERSION).tgz" | sha512sum --check --quiet
	tar -xzf $(MATHJAX_DIR)/mathjax-$(MATHJAX_VERSION).tgz -C $(MATHJAX_DIR) --strip-components=1 package/LICENSE
	tar -xzf $(MATHJAX_DIR)/mathjax-$(MATHJAX_VERSION).tgz -C $(MATHJAX_DIR) --strip-components=2 \
	    package/es5/tex-chtml-full.js package/es5/output/chtml/fonts/woff-v2
	rm $(MATHJAX_DIR)/mathjax-$(MATHJAX_VERSION).tgz
	echo '*' > $(MATHJAX_DIR)/.gitignore
	touch $@

book: $(STAMP)          ## create .venv, install everything, build the HTML book
	$(BIN)/jupyter-book build . --builder html
	@echo "The book is at $(CURDIR)/_build/html/index.html"

test: $(STAMP)          ## the whole suite: strict book build, unit tests, nbval on every notebook, the browser test
	$(BIN)/jupyter-book build . --builder html --warningiserror --nitpick --keep-going --all
	$(BIN)/python -m pytest tests book --nbval --nbval-current-env --nbval-sanitize-with tests/sanitize.cfg

unit: $(STAMP)          ## the course_code unit tests alone
	$(BIN)/python -m pytest tests --ignore=tests/test_browser.py

execute: $(STAMP)       ## re-execute notebooks in place: make execute NB=book/02_elbo.ipynb
	$(BIN)/python scripts/notebooks.py execute $(NB)

timings: $(STAMP)       ## print how long every notebook takes to execute (nothing is written)
	$(BIN)/python scripts/notebooks.py time $(NB)

student: $(STAMP)       ## the student edition: notebooks with stubbed solutions, and an HTML build without solutions
	$(BIN)/python -m course_code.instructor student

grade: $(STAMP)         ## grade a folder of submitted notebooks, each in a sandbox: make grade SUBMISSIONS=path/to/folder [TIMEOUT=seconds] [NO_SANDBOX=1]
	@test -n "$(SUBMISSIONS)" || { echo "usage: make grade SUBMISSIONS=path/to/folder [TIMEOUT=seconds per notebook] [NO_SANDBOX=1 (trusted notebooks only)]" >&2; exit 2; }
	$(BIN)/python -m course_code.instructor grade "$(SUBMISSIONS)" $(if $(TIMEOUT),--timeout $(TIMEOUT)) $(if $(NO_SANDBOX),--no-sandbox)

benchmark: $(STAMP)     ## training-loop throughput against a DataLoader loop
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf _build
