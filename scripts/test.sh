#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need, then runs them.
#   bash scripts/test.sh            # everything (about 5 minutes on 2 CPU cores)
#   bash scripts/test.sh -m "not slow"   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

# A real one-node Slurm for the sbatch tests (they skip, saying why, where it cannot be had).
if ! command -v slurmctld >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# The project with its test extra at the versions of constraints.txt; torch first, the CPU
# build where there is no GPU (an installed torch is kept): see scripts/install.sh.
bash scripts/install.sh test
hash -r
python -m pytest tests -q -p no:cacheprovider "$@"
