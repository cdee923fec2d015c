#!/usr/bin/env bash
# Create the peers' virtual environments for bench/compare.py (idempotent).
#
#   bench/.venvs/tf     tensorflow-cpu 2.21.0 + h5py, then tf-keras 2.21.0 (--no-deps)
#                       -> bench/peers/keras_seed.py, bench/peers/tf_batched.py
#   bench/.venvs/torch  torch 2.13.0 (the CPU build) + h5py + numpy
#                       -> bench/peers/torch_batched.py
#
# A venv that already works (its imports succeed) is left alone; a broken or
# half-made one is removed and rebuilt. Pass --force to rebuild both.
# PYTHON picks the interpreter (default python3, 3.10-3.12 for these wheels).
#
#   bash bench/setup_peers.sh            # from anywhere
#   PYTHON=python3.11 bash bench/setup_peers.sh --force
#
# The jaxviz workers run in the project's own .venv, which this script does not touch.
# bench/.venvs is git-ignored. Pin torch to exactly 2.13.0: an unpinned
# `pip install torch` may pull the CUDA build (gigabytes).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENVS="$HERE/.venvs"
PYTHON="${PYTHON:-python3}"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

mkdir -p "$VENVS"

ok() {  # ok VENV PYTHON-CODE: does the venv exist and import what it must?
    [[ -x "$VENVS/$1/bin/python" ]] && "$VENVS/$1/bin/python" -c "$2" >/dev/null 2>&1
}

make_venv() {  # make_venv NAME CHECK-CODE INSTALL-COMMANDS...
    local name="$1" check="$2"
    shift 2
    if [[ $FORCE == 0 ]] && ok "$name" "$check"; then
        echo "bench/.venvs/$name: already set up, skipping"
        return
    fi
    echo "bench/.venvs/$name: creating"
    rm -rf "${VENVS:?}/$name"
    "$PYTHON" -m venv "$VENVS/$name"
    local pip="$VENVS/$name/bin/python -m pip"
    $pip install --quiet --upgrade pip
    local cmd
    for cmd in "$@"; do
        echo "  pip install $cmd"
        # shellcheck disable=SC2086
        $pip install --quiet $cmd
    done
    if ! ok "$name" "$check"; then
        echo "bench/.venvs/$name: installed, but the import check failed:" >&2
        "$VENVS/$name/bin/python" -c "$check" >&2 || true
        exit 1
    fi
    echo "bench/.venvs/$name: ready"
}

export TF_CPP_MIN_LOG_LEVEL=2
make_venv tf \
    "import tensorflow, tf_keras, h5py; assert tensorflow.__version__ == '2.21.0'" \
    "tensorflow-cpu==2.21.0 h5py" \
    "--no-deps tf-keras==2.21.0"

make_venv torch \
    "import torch, h5py, numpy; assert torch.__version__.startswith('2.13.0')" \
    "torch==2.13.0 h5py numpy"

echo "peers ready: $(ls "$VENVS" | tr '\n' ' ')"
