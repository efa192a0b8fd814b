# The two commands a new user runs (README): `make serve` and `make test`.
# Both install what they need into .venv/ first (and the e2e tests put Label Studio in .venv-ls/).
.PHONY: serve test test-fast bench

serve:
	@scripts/bootstrap.sh
	.venv/bin/sam3-backend serve

test:
	@scripts/bootstrap.sh test
	SAM3_E2E=1 .venv/bin/python -m pytest -q -ra

# Everything but the end-to-end run against real Label Studio (about a minute).
test-fast:
	@scripts/bootstrap.sh test
	.venv/bin/python -m pytest -q -ra

bench:
	@scripts/bootstrap.sh test
	.venv/bin/python bench/bench_rle.py
	.venv/bin/python bench/bench_interactive.py
	.venv/bin/python bench/bench_prelabel.py
