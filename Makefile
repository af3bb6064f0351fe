# Tollgate — two commands: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint format bench bench-bigdata soak stop clean-data install

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m billing_site.run

test: $(STAMP)
	$(PY) -m tests.browser.provision
	$(PY) -m pytest $(PYTEST_ARGS)

# mypy imports the settings (django-stubs): the dummy URLs keep the embedded servers from starting; nothing connects.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	DATABASE_URL=postgres://lint@localhost/lint REDIS_URL=redis://localhost:6379/15 SECRET_KEY=lint-only TOLLGATE_ENV=development \
		$(PY) -m mypy .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: $(STAMP)
	$(PY) -m bench.run $(BENCH_ARGS)

bench-bigdata: $(STAMP)
	$(PY) -m bench.bigdata $(BIGDATA_ARGS)

# A soak of mixed traffic with a real Celery worker (bench/soak.py): 15 minutes, or SOAK_ARGS="--quick".
soak: $(STAMP)
	$(PY) -m bench.soak $(SOAK_ARGS)

stop: $(STAMP)
	$(PY) -m billing_site.embedded stop

clean-data: stop
	rm -rf .data
