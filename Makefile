# The two commands of the quick start.
.PHONY: demo test lint

demo:  ## install into .venv and run the demo (a small GPT that explodes part-way)
	scripts/setup.sh
	.venv/bin/tripwire demo

test:  ## install everything the tests need and run the whole suite
	scripts/test.sh

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
