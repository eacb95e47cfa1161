#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the demo: a retrieved passage that contradicts the default
# model's memory, answered unsteered and steered, side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python examples/demo.py "$@"
