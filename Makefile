# The few verbs everyone uses. `make run` and `make test` work on a fresh machine.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
KAFKA_DATA ?= var/kafka

.PHONY: setup kafka kafka-stop topics migrate worker demo run test lint bench lock clean

# Installs exactly the locked versions (requirements/dev.txt: the worker, chDB and the test
# tools, with hashes), then Sluice itself without resolving anything again.
$(BIN)/sluice: pyproject.toml requirements/dev.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --require-hashes -r requirements/dev.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

setup: $(BIN)/sluice            ## Python deps + the Kafka broker jars
	PYTHON=$(BIN)/python scripts/kafka.sh fetch

kafka: setup                    ## start the local single-node KRaft broker on 127.0.0.1:9092
	PYTHON=$(BIN)/python scripts/kafka.sh start --data-dir $(KAFKA_DATA)

kafka-stop:
	PYTHON=$(BIN)/python scripts/kafka.sh stop --data-dir $(KAFKA_DATA)

topics: kafka
	$(BIN)/sluice topics create

migrate: setup
	$(BIN)/sluice olap migrate

demo: topics                    ## a few thousand realistic demo events
	$(BIN)/python -m dev.demo var/demo.jsonl
	$(BIN)/sluice produce --file var/demo.jsonl

run: topics migrate demo        ## everything: broker, topics, tables, demo traffic, the worker
	$(BIN)/sluice worker

test: setup                     ## the whole test suite (starts its own broker if none is set)
	$(BIN)/pytest -q -n 2 --dist loadfile tests

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	mkdir -p var && $(BIN)/sluice olap ddl > var/sluice-ddl.sql
	$(BIN)/sluice olap lint var/sluice-ddl.sql

bench: kafka                    ## limit, naive faust, Quix peer and the worker, one run (bench/)
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python -m bench.run

lock:                           ## re-pin requirements/*.txt after changing pyproject.toml
	$(BIN)/pip install -q uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 --generate-hashes --quiet -o requirements/dev.txt
	$(BIN)/uv pip compile pyproject.toml --extra worker --extra chdb --python-version 3.11 --generate-hashes --quiet -o requirements/worker.txt

clean:
	rm -rf var .pytest_cache
