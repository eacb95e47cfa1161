.PHONY: setup demo test bench

setup:
	bash scripts/setup.sh

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

bench:
	bash scripts/setup.sh && .venv/bin/pasta-rag bench --json --out benchmarks/results/speed_cpu.json
