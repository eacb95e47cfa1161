#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs every test of the repository: core and both integrations.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python -m pytest tests integrations/langchain/tests integrations/llama-index/tests "$@"
