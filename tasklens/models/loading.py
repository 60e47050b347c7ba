"""Loading models as TransformerLens bridges.

`load_model` is the one way in: ``"organism"`` (the embedded default), a model
downloaded by name (`tasklens.models.zoo`), a local Hugging Face folder, or any
name TransformerLens / Hugging Face accepts. Also here: the bridge's key-value
cache on the transformers that pip resolves (`enable_kv_cache`).
"""

from __future__ import annotations

import json
import os
import warnings
import weakref
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from tasklens.errors import TasklensError, TasklensWarning
from tasklens.models import zoo
from tasklens.models.info import is_bridge
from tasklens.models.lean import lean_norms
from tasklens.models.weights import (
    SAVE_AGAIN,
    WeightsError,
    check_tokenizer,
    check_tokenizer_files,
    check_weights,
)
from tasklens.models.zoo import ORGANISM, ORGANISM_DIR


def _cache_as_past_key_values(module, args, kwargs):
    if (
        kwargs.get("cache") is not None
        and kwargs.get("past_key_values") is None
        and "layer_past" not in kwargs
    ):
        kwargs["past_key_values"] = kwargs["cache"]
    return args, kwargs


def enable_kv_cache(model) -> None:
    """Let a bridge's attention read the key-value cache transformers hands it.

    transformers 5.24 passes each layer's cache to the attention module as ``cache=``;
    TransformerLens 4.3's attention bridge reads only ``past_key_values`` (or
    ``layer_past``), so without help its cache stays empty. A forward pre-hook on every
    attention bridge passes ``cache`` on as ``past_key_values``; transformers that pass
    ``past_key_values`` themselves never trigger it. Idempotent; TransformerLens hooks
    (``model.hooks``, ``run_with_cache``) are not touched."""
    if not is_bridge(model) or getattr(model, "_tasklens_kv_cache", False):
        return
    try:
        from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge
    except ImportError:  # a TransformerLens without this module: nothing to adapt
        return
    for module in model.modules():
        if isinstance(module, AttentionBridge):
            module.register_forward_pre_hook(_cache_as_past_key_values, with_kwargs=True)
    model._tasklens_kv_cache = True


@contextmanager
def cached_calls():
    """Silence transformers' notice that the bridge's own ``past_key_values`` argument is
    deprecated (it is how TransformerLens passes the cache on)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated", category=FutureWarning)
        yield


def cache_filled(model, cache, n_positions: int) -> bool:
    """Whether the key-value cache a bridge returned holds all ``n_positions`` positions.

    `enable_kv_cache` makes the bridges tasklens uses keep their cache; a model whose
    cache still comes back short (a TransformerLens or transformers tasklens does not
    know) makes callers rerun the whole sequence, which is exact on any version. Warns
    once per model."""
    if cache is not None and cache.get_seq_length() == n_positions:
        return True
    if model not in _WARNED_EMPTY_CACHE:
        _WARNED_EMPTY_CACHE.add(model)
        from importlib.metadata import version

        warnings.warn(
            f"{type(model).__name__} returned an empty key-value cache (TransformerLens "
            f"{version('transformer-lens')} with transformers {version('transformers')}): "
            "tasklens reruns whole sequences instead, which gives the same results more slowly",
            TasklensWarning,
            stacklevel=3,
        )
    return False


_WARNED_EMPTY_CACHE: weakref.WeakSet = weakref.WeakSet()


def mlp_input(model, layer: int, hooked: Tensor) -> Tensor:
    """What layer ``layer``'s MLP reads, from the value at `ModelInfo.mlp_input_name`: the
    same on a bridge; times the norm's weight (plus its bias) on a HookedTransformer."""
    if is_bridge(model):
        return hooked
    norm = model.blocks[layer].ln2
    weight, bias = getattr(norm, "w", None), getattr(norm, "b", None)
    out = hooked if weight is None else hooked * weight.to(hooked.dtype)
    return out if bias is None else out + bias.to(hooked.dtype)


def weights_folded(model) -> bool:
    """Whether the model's norms were folded into the weights (compatibility mode, or a
    ``HookedTransformer`` loaded with ``fold_ln``): W_in / W_up then differ from the model's own."""
    if is_bridge(model):
        return bool(getattr(model, "compatibility_mode", False))
    return str(getattr(model.cfg, "normalization_type", "")).endswith("Pre")


def _check_folder(folder: Path) -> None:
    config = folder / "config.json"
    if not config.is_file():
        raise TasklensError(
            f"Model folder {str(folder)!r} has no config.json; a model folder needs "
            "config.json, model.safetensors weights and tokenizer files (save_pretrained writes them)"
        )
    try:
        settings = json.loads(config.read_text())
    except ValueError as error:
        raise TasklensError(
            f"Model folder {str(folder)!r}: config.json is not valid JSON ({error})"
        ) from error
    problem = not_causal_lm(settings)
    if problem:
        raise TasklensError(f"Model folder {str(folder)!r} {problem}")
    if not any((folder / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
        raise TasklensError(
            f"Model folder {str(folder)!r} has no model.safetensors (or its index); save the model with "
            "save_pretrained(folder) (tasklens loads safetensors only and never unpickles .bin checkpoints)"
        )


def not_causal_lm(config: dict) -> str | None:
    """What makes a Hugging Face ``config.json`` (as a dict) not a causal language model's, or
    None. transformers would load a masked LM (BERT...) as a causal one with a fresh head; its
    next-token predictions mean nothing, so tasklens refuses it."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as causal

    fix = (
        "tasklens reads next-token predictions, so it needs a causal language model "
        "(LlamaForCausalLM, GPT2LMHeadModel...); give such a model's folder, or 'organism'"
    )
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not isinstance(model_type, str) or model_type not in causal:
        return (
            f"holds a {model_type!r} model, which transformers cannot run as a causal language model; {fix}"
        )
    architectures = config.get("architectures") or []
    classes = {c for value in causal.values() for c in ((value,) if isinstance(value, str) else value)}
    causal_class = [a in classes or str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in architectures]
    if architectures and not any(causal_class):
        return f"holds a {', '.join(map(str, architectures))}, not a causal language model; {fix}"
    return None


def check_device(device: str | torch.device, cpu: str = "device='cpu'") -> None:
    """Refuse a device this machine's torch cannot place a model on (a model would otherwise be
    left on the CPU while its config says ``cuda``); ``cpu`` is how the caller's user asks for
    the CPU instead (a keyword here, a TOML setting in a run config)."""
    try:
        kind = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise TasklensError(
            f"Unknown device {device!r}; choose cpu, cuda, cuda:N (N a GPU's number) or mps"
        ) from error
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(kind.type, False):
        what = "is not a device tasklens runs on" if kind.type not in available else "is not available here"
        raise TasklensError(f"device {str(device)!r}: {kind.type.upper()} {what}; use {cpu}")
    if kind.type == "cuda" and kind.index is not None and kind.index >= torch.cuda.device_count():
        raise TasklensError(
            f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
            f"choose cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )


def nonfinite_weights(named) -> tuple[str, int] | None:
    """The first parameter holding NaN or infinite values and how many, or None. A sum per
    tensor is the fast test (any NaN or inf makes it non-finite); only a tensor it flags is
    counted exactly (float16 sums can overflow)."""
    for name, tensor in named:
        if tensor.is_floating_point() and not torch.isfinite(tensor.detach().sum()):
            bad = int((~torch.isfinite(tensor.detach())).sum())
            if bad:
                return name, bad
    return None


def _check_finite(named, spec: str, source: str) -> None:
    found = nonfinite_weights(named)
    if found is None:
        return
    name, bad = found
    if zoo.is_known(spec):
        command = zoo.source_of(spec).command_name
        fix = (
            f"its files changed since the download: run `tasklens models verify {command}` to check "
            f"them, then `tasklens models download {command} --force` to download it again"
        )
    else:
        fix = "the weights file is damaged or was saved from a diverged model: re-create or copy it again"
    raise TasklensError(f"The model {source!r} has {bad:,} NaN or infinite weights in {name}; {fix}")


def _not_a_folder(spec: str, path: Path) -> TasklensError:
    holder = path.parent
    hint = f" ({str(holder)!r}, which holds it, looks like one)" if (holder / "config.json").is_file() else ""
    return TasklensError(
        f"Model {spec!r} is a file, not a model folder; give the folder that holds config.json, "
        f"model.safetensors and the tokenizer files{hint}"
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub answers at all (one TCP connect, no retries)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _is_cached(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # an invalid repo id is simply not cached
        return False


def _hub_error(spec: str, detail: str) -> TasklensError:
    return TasklensError(
        f"Could not load {spec!r}: it is not a local folder and the model hub could not provide "
        f"it ({detail}). Offline, use the embedded model with spec='organism', or pass the path "
        "of a local Hugging Face folder (config.json + safetensors + tokenizer files)."
    )


def _repair(spec: str) -> str:
    return f"run `tasklens models download {zoo.source_of(spec).command_name} --force`"


def _check_spec(spec) -> str:
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise TasklensError(
            f"load_model needs a model spec, got {type(spec).__name__} {spec!r:.60}: give 'organism', a "
            "downloaded model's name (tasklens models list) or the path of a local Hugging Face folder"
        )
    return spec


def _check_dtype(dtype) -> torch.dtype | None:
    """``dtype`` as a torch floating-point dtype (a name such as ``"bfloat16"`` is accepted), or None."""
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        return dtype
    named = getattr(torch, dtype, None) if isinstance(dtype, str) else None
    if isinstance(named, torch.dtype) and named.is_floating_point:
        return named
    raise TasklensError(
        f"dtype must be a floating-point torch dtype, got {dtype!r}; choose torch.float32, "
        "torch.bfloat16 or torch.float16 (or their names)"
    )


def _load_checked(folder: Path, dtype: torch.dtype):
    """The Hugging Face model of a local folder, its weights checked against its config before any
    allocation (`check_weights`) and every parameter loaded from them (none left at its random init)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    check_tokenizer_files(folder)
    config = AutoConfig.from_pretrained(folder)
    check_weights(folder, config)
    hf_model, info = AutoModelForCausalLM.from_pretrained(
        folder, config=config, use_safetensors=True, dtype=dtype, output_loading_info=True
    )
    for key, what in (
        ("missing_keys", "lacks"),
        ("unexpected_keys", "holds unused"),
        ("mismatched_keys", "mismatches"),
    ):
        names = sorted(map(str, info.get(key) or ()))
        if names:
            raise WeightsError(
                f"Model folder {str(folder)!r}: transformers reports the weights {what} "
                f"{', '.join(names[:3])}{' ...' if len(names) > 3 else ''}; its config and weights do not "
                "belong together",
                SAVE_AGAIN,
            )
    return hf_model


def model_folder(spec: str) -> Path:
    """The local folder ``spec`` names for `load_model`: the organism's, a downloaded model's
    (`tasklens models download NAME`), or ``spec`` itself as a path (which may not exist)."""
    if spec == ORGANISM:
        return Path(ORGANISM_DIR)
    if zoo.is_known(spec):
        return zoo.local_folder(spec)
    return Path(spec).expanduser()


def load_model(
    spec: str = ORGANISM, device: str = "cpu", dtype: torch.dtype | None = None
) -> TransformerBridge:
    """Load a model as a TransformerLens `TransformerBridge`.

    Args:
        spec: ``"organism"`` (the embedded default), a model tasklens downloads
            (``"smollm2-135m"``, ``"gemma3-270m"``, ``"qwen2.5-coder-0.5b"``,
            ``"qwen2.5-coder-1.5b"``: `tasklens models download NAME` first), a path to a
            local Hugging Face folder (config.json + model.safetensors + tokenizer), or a
            model name that TransformerLens / Hugging Face can load (needs the hub or a
            local cache). Local weights are read from safetensors only.
        device: torch device.
        dtype: parameter dtype; by default float32, or the dtype a downloaded model was
            stored in (``tasklens models download NAME --dtype bfloat16``).

    Returns:
        The bridge in eval mode with Hugging Face numerics (weights not folded),
        ``cfg.model_name`` set to ``spec``.
    """

    spec = _check_spec(spec)
    dtype = _check_dtype(dtype)
    check_device(device)
    folder = model_folder(spec)
    if spec != ORGANISM and not zoo.is_known(spec) and folder.is_file():
        raise _not_a_folder(spec, folder)
    if zoo.is_known(spec):
        dtype = dtype or getattr(torch, zoo.stored_dtype(spec))
    is_local = spec == ORGANISM or zoo.is_known(spec) or folder.is_dir()
    dtype = dtype or torch.float32
    hf_model = None
    if is_local:
        _check_folder(folder)
        source = str(folder)
    elif os.sep in spec and spec.startswith((".", "/", "~")):
        raise TasklensError(f"Model folder {spec!r} does not exist; check the path")
    else:
        from huggingface_hub import constants

        source = spec
        if not _is_cached(spec) and not constants.HF_HUB_OFFLINE and not _hub_reachable():
            raise _hub_error(spec, "the hub is unreachable from this machine and the model is not cached")
    try:
        if is_local:
            hf_model = _load_checked(folder, dtype)
            _check_finite(hf_model.named_parameters(), spec, source)
        model = TransformerBridge.boot_transformers(source, device=device, dtype=dtype, hf_model=hf_model)
        enable_kv_cache(model)
        lean_norms(model)
        if is_local:
            check_tokenizer(model, source)
    except WeightsError as error:
        if zoo.is_known(spec):
            raise TasklensError(f"{error.problem}; {_repair(spec)}") from error
        raise
    except TasklensError:
        raise
    except OSError as error:
        if is_local:
            raise TasklensError(f"Could not load the model folder {source!r}: {error}") from error
        raise _hub_error(spec, f"not cached, and: {error}") from error
    except Exception as error:  # corrupt weights or configs surface as many types
        if not is_local:
            raise
        fix = (
            _repair(spec)
            if zoo.is_known(spec)
            else "re-create it with save_pretrained, or use spec='organism'"
        )
        raise TasklensError(
            f"The model folder {source!r} is corrupt or incomplete ({type(error).__name__}: {error}); {fix}"
        ) from error
    if not is_local:
        config = getattr(getattr(model, "original_model", None), "config", None)
        problem = not_causal_lm(config.to_dict()) if config is not None else None
        if problem:
            raise TasklensError(f"Model {spec!r} {problem}")
        _check_finite(model.named_parameters(), spec, spec)
    model.eval()
    model.cfg.model_name = spec
    if zoo.is_known(spec):
        model.cfg.default_prepend_bos = zoo.source_of(spec).prepend_bos
    return model
