#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs every test of the repository: core and both integrations.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
paths=(tests)
for integration in integrations/langchain integrations/llama-index; do
  if [ -d "$integration/tests" ]; then paths+=("$integration/tests"); fi
done
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python -m pytest "${paths[@]}" "$@"
