#!/usr/bin/env bash
# Installs the project into the current Python environment, torch first:
#   bash scripts/install.sh            # pip install -e . -c constraints.txt
#   bash scripts/install.sh test       # with the [test] extra (scripts/test.sh does this)
#   bash scripts/install.sh triton     # with Triton for attention_backend="triton"
#
# torch is chosen before anything else so that a CPU machine never downloads a CUDA build:
#   - a torch that is already importable is kept, whatever its build (its constraints line
#     is dropped, so pip does not replace it);
#   - on a machine with a working nvidia-smi, pip takes torch from its usual index (CUDA);
#   - otherwise the CPU build of the release pinned in constraints.txt: from pip's own
#     sources when they offer a CPU build (local wheel folders or a mirror, which works
#     offline), else from PyTorch's CPU index, $TORCH_CPU_INDEX
#     (default https://download.pytorch.org/whl/cpu), the usual way on a fresh machine.
# Variables: PYTHON (default python), TORCH_CPU_INDEX.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${PYTHON:=python}"
: "${TORCH_CPU_INDEX:=https://download.pytorch.org/whl/cpu}"
EXTRAS=${1:-}
PIP=("$PYTHON" -m pip install -q)
TORCH_VERSION=$(sed -n 's/^torch==//p' constraints.txt)
CONSTRAINTS=constraints.txt
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

# Exit status 0 when pip's configured sources resolve torch==VERSION to a CPU build.
local_cpu_build() {
    "${PIP[@]}" --dry-run --report "$TMP/report.json" "torch==$TORCH_VERSION" >/dev/null 2>&1 || return 1
    "$PYTHON" - "$TMP/report.json" <<'PY'
import json, sys
chosen = [item["metadata"]["version"] for item in json.load(open(sys.argv[1]))["install"]
          if item["metadata"]["name"].lower() == "torch"]
sys.exit(0 if chosen and chosen[0].endswith("+cpu") else 1)
PY
}

if "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "install: keeping the installed torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"
    # A CUDA torch pins the Triton it was built with: an installed Triton is kept too.
    if "$PYTHON" -c "import triton" 2>/dev/null; then
        echo "install: keeping the installed triton $("$PYTHON" -c 'import triton; print(triton.__version__)')"
        grep -v -e '^torch==' -e '^triton==' constraints.txt > "$TMP/constraints.txt"
    else
        grep -v '^torch==' constraints.txt > "$TMP/constraints.txt"
    fi
    CONSTRAINTS="$TMP/constraints.txt"
elif has_gpu; then
    echo "install: GPU found; torch $TORCH_VERSION from pip's index"
elif local_cpu_build; then
    echo "install: torch $TORCH_VERSION, CPU build, from pip's configured sources"
    "${PIP[@]}" "torch==$TORCH_VERSION"
else
    echo "install: torch $TORCH_VERSION, CPU build, from $TORCH_CPU_INDEX"
    "${PIP[@]}" "torch==$TORCH_VERSION" --index-url "$TORCH_CPU_INDEX"
fi

"${PIP[@]}" -e ".${EXTRAS:+[$EXTRAS]}" -c "$CONSTRAINTS"
