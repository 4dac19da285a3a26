# The course's commands. A learner needs two: `make book` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NB     ?= book/*.ipynb
export COURSE_PROGRESS ?= 0

.PHONY: book test unit execute timings student grade reproduce benchmark lock clean

# A second set of CPU kernel code paths for the notebooks' second strict pass under `make test`:
# PyTorch's generic (non-AVX) kernels, Intel MKL's and oneDNN's compatibility paths. They change the
# last bits of matrix products, exp and logsumexp, as another processor does; the printed numbers
# must not change.
OTHER_KERNELS := ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE DNNL_MAX_CPU_ISA=SSE41
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with tests/sanitize.cfg

# requirements.txt is the lock: every package the course installs, dependencies included, each with
# its hashes, made from requirements.in by `make lock` for the Python named in runtime.txt (which
# Binder reads too). pip installs uv from the lock's own uv entry, then uv makes .venv hold exactly
# the lock, checking every hash (it is several times faster than pip here; see the README).
LOCK_PYTHON := $(patsubst python-%,%,$(strip $(file < runtime.txt)))
UV_PIP      := $(BIN)/uv pip --quiet
UV_LOCKED   := import re; print(re.search(r"^uv==.*?(?=^\S|\Z)", open("requirements.txt").read(), re.M | re.S)[0])

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c '$(UV_LOCKED)' > $(VENV)/uv-requirement.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r $(VENV)/uv-requirement.txt
	$(UV_PIP) sync --python $(BIN)/python --require-hashes --compile-bytecode requirements.txt
	$(UV_PIP) install --python $(BIN)/python --no-deps --no-build-isolation -e .
	touch $(STAMP)

# MathJax is served from the book's own static files, so equations typeset offline and when the
# HTML is opened from disk: its es5 build and fonts, copied from the locked django-static-mathjax
# package, which must hold this version (tests/test_browser.py checks the one the pages run).
MATHJAX_VERSION := 3.2.2
MATHJAX_DIR     := book/_static/mathjax
MATHJAX         := $(MATHJAX_DIR)/tex-chtml-full.js

$(MATHJAX): $(STAMP)
	rm -rf $(MATHJAX_DIR) && mkdir -p $(MATHJAX_DIR)/output/chtml/fonts
	src=$$($(BIN)/python -c "import mathjax, pathlib; print(pathlib.Path(mathjax.__file__).parent / 'static/mathjax')") && \
	    cp $$src/LICENSE $$src/es5/tex-chtml-full.js $(MATHJAX_DIR)/ && \
	    cp -r $$src/es5/output/chtml/fonts/woff-v2 $(MATHJAX_DIR)/output/chtml/fonts/
	grep -q 'VERSION="$(MATHJAX_VERSION)"' $(MATHJAX) || { echo "$(MATHJAX) is not MathJax $(MATHJAX_VERSION)" >&2; exit 1; }
	echo '*' > $(MATHJAX_DIR)/.gitignore

lock:                   ## refresh requirements.txt (the lock) from requirements.in, with uv, from the package index
	$(PYTHON) -m venv _build/lock-env
	_build/lock-env/bin/python -m pip install --quiet --disable-pip-version-check "$$(grep -o '^uv==[^ ]*' requirements.in)"
	_build/lock-env/bin/uv pip compile --quiet requirements.in --output-file requirements.txt --generate-hashes \
	    --universal --python-version $(LOCK_PYTHON) --custom-compile-command "make lock"
	rm -rf _build/lock-env

book: $(STAMP) $(MATHJAX) ## create .venv, install everything, build the HTML book
	$(BIN)/jupyter-book build . --builder html
	@echo "The book is at $(CURDIR)/_build/html/index.html"

test: $(STAMP) $(MATHJAX) ## the whole suite: strict book build, unit tests, nbval on every notebook (twice), the browser test
	$(BIN)/jupyter-book build . --builder html --warningiserror --nitpick --keep-going --all
	$(BIN)/python -m pytest tests book $(NBVAL)
	@echo "Every notebook again, on other CPU kernel code paths ($(OTHER_KERNELS)):"
	env $(OTHER_KERNELS) $(BIN)/python -m pytest book $(NBVAL)

unit: $(STAMP)          ## the course_code unit tests alone (not the browser and launch-path tests)
	$(BIN)/python -m pytest tests --ignore=tests/test_browser.py --ignore=tests/test_launch.py

execute: $(STAMP)       ## re-execute notebooks in place: make execute NB=book/02_elbo.ipynb
	$(BIN)/python scripts/notebooks.py execute $(NB)

timings: $(STAMP)       ## print how long every notebook takes to execute (nothing is written)
	$(BIN)/python scripts/notebooks.py time $(NB)

student: $(STAMP) $(MATHJAX) ## the student edition: notebooks with stubbed solutions, and an HTML build without solutions
	$(BIN)/python -m course_code.instructor student

grade: $(STAMP)         ## grade a folder of submitted notebooks, each in a sandbox: make grade SUBMISSIONS=path/to/folder [TIMEOUT=seconds] [NO_SANDBOX=1]
	@test -n "$(SUBMISSIONS)" || { echo "usage: make grade SUBMISSIONS=path/to/folder [TIMEOUT=seconds per notebook] [NO_SANDBOX=1 (trusted notebooks only)]" >&2; exit 2; }
	$(BIN)/python -m course_code.instructor grade "$(SUBMISSIONS)" $(if $(TIMEOUT),--timeout $(TIMEOUT)) $(if $(NO_SANDBOX),--no-sandbox)

reproduce: $(STAMP)     ## re-run the recorded full-scale experiments into results/: make reproduce [NAME=seed002] [SMOKE=1] [THREADS=n] (reads MNIST from COURSE_MNIST)
	$(BIN)/python -m course_code.reproduce $(or $(NAME),all) $(if $(SMOKE),--smoke) $(if $(THREADS),--threads $(THREADS))

benchmark: $(STAMP)     ## the MNIST-size VAE's training and evaluation throughput, against a DataLoader loop and the CPU's matrix-product limit
	$(BIN)/python benchmarks/throughput.py $(if $(THREADS),--threads $(THREADS))

clean:
	rm -rf _build
