#!/usr/bin/env bash
# mypy cannot follow setuptools' editable finder for the package-dir mapping, so
# mirror the installed layout (embxfer.fsm -> fsm/, ...) with symlinks and check that.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=.typecheck/embxfer
rm -rf .typecheck && mkdir -p "$tree"
for entry in embxfer/*; do ln -s "../../$entry" "$tree/"; done
for sub in fsm transport buffers; do ln -s "../../$sub" "$tree/$sub"; done
cd .typecheck
../.venv/bin/python -m mypy --config-file ../pyproject.toml -p embxfer
