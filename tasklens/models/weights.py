"""A model folder's weights checked against its config before any tensor is allocated.

`check_weights` reads only the safetensors headers (names, shapes) and the parameters the
config's architecture expects (built on the ``meta`` device, which allocates nothing), and
refuses, in one line naming the mismatch, a folder whose weights lack a parameter the model
needs (transformers would fill it with random values), hold a tensor the model never uses,
or disagree with the config in shape (layers, widths, vocabulary). `check_tokenizer` refuses
a folder without tokenizer files, and a tokenizer that produces ids the embedding lacks.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from tasklens.errors import TasklensError

#: files that hold a tokenizer's vocabulary (one of them is needed)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")
#: the first numbered part of a parameter's name: the layer of ``model.layers.3.mlp...``
_NUMBERED = re.compile(r"^(?P<prefix>.+?)\.(?P<index>\d+)\.")
#: how many names an error lists before "and N more"
_SHOWN = 3


class WeightsError(TasklensError):
    """A folder's weights, config or tokenizer do not belong together: ``problem``, then ``fix``
    (a downloaded model's loader gives its own fix: download it again)."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}; {fix}")
        self.problem, self.fix = problem, fix


SAVE_AGAIN = "save the whole model again with save_pretrained, or copy the folder again"
RESTORE_CONFIG = "restore the config.json saved with these weights"


def _listing(names, shown: int = _SHOWN) -> str:
    names = sorted(names)
    more = f" and {len(names) - shown:,} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a model folder: ``model.safetensors``, or every shard its index names
    (each checked to exist)."""
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return [folder / "model.safetensors"]
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise WeightsError(
            f"{str(index)!r} is not a safetensors index (no weight_map: {error})", SAVE_AGAIN
        ) from error
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise WeightsError(
            f"Model folder {str(folder)!r} lacks the weight file(s) {_listing(missing)} its index names",
            SAVE_AGAIN,
        )
    return [folder / n for n in names]


def weight_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's name and shape in a folder's safetensors files, from their headers alone (a
    truncated or damaged file is refused)."""
    return {name: shape for name, (shape, _) in weight_headers(folder).items()}


def weight_headers(folder: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every tensor's name, shape and stored dtype (``F32``, ``BF16``, ``I64``...) in a folder's
    safetensors files, from their headers alone (a truncated or damaged file is refused)."""
    from safetensors import SafetensorError, safe_open

    shapes: dict[str, tuple[tuple[int, ...], str]] = {}
    for file in weight_files(folder):
        try:
            with safe_open(str(file), "pt") as handle:
                for key in handle.keys():
                    part = handle.get_slice(key)
                    shapes[key] = (tuple(part.get_shape()), str(part.get_dtype()))
        except (SafetensorError, OSError, ValueError) as error:
            raise WeightsError(
                f"{str(file)!r} is corrupt or incomplete (not a readable safetensors file: {error}; "
                "truncated or damaged)",
                SAVE_AGAIN,
            ) from error
    return shapes


def _layers(shapes) -> tuple[str, set[int]] | None:
    """The numbered container most names sit in (``model.layers``) and the numbers found, or None."""
    found: dict[str, set[int]] = {}
    counts: Counter = Counter()
    for key in shapes:
        match = _NUMBERED.match(key)
        if match:
            found.setdefault(match["prefix"], set()).add(int(match["index"]))
            counts[match["prefix"]] += 1
    if not counts:
        return None
    prefix = counts.most_common(1)[0][0]
    return prefix, found[prefix]


def _n_layers(config) -> int | None:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text, "num_hidden_layers", None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _expected(config):
    """The model the config describes, on the meta device: nothing is allocated."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _ignored(patterns) -> re.Pattern | None:
    patterns = [p for p in patterns or () if p]
    return re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None


def _renamer(model, expected: dict):
    """``key -> (name in the model, whether a converter merges it)``: transformers' own renaming of
    checkpoint keys (legacy names, a base model's prefix), or the names as they are where this
    transformers has no such machinery."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, rename_source_key

        transforms = get_model_conversion_mapping(model)
    except Exception:  # another transformers: names are compared as they are
        return lambda key: (key, False)
    renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    prefix = getattr(model, "base_model_prefix", None) or None

    def rename(key: str) -> tuple[str, bool]:
        try:
            name, converted = rename_source_key(key, renamings, converters, prefix, expected)
        except Exception:
            return key, False
        return name, converted is not None

    return rename


def _no_overlap(where: str, kind: str, shapes) -> WeightsError:
    return WeightsError(
        f"{where}: config.json describes a {kind}, but the weights hold none of its parameters "
        f"(they hold {_listing(shapes)}); config.json does not belong to these weights",
        RESTORE_CONFIG,
    )


def _layer_error(where: str, n_config: int, prefix: str, indices: set[int]) -> WeightsError:
    return WeightsError(
        f"{where}: config.json gives {n_config:,} layers (num_hidden_layers) but the weights hold "
        f"{len(indices):,} ({prefix}.0 to {prefix}.{max(indices)}); config.json does not belong to "
        "these weights",
        RESTORE_CONFIG,
    )


def _with_layers(config, n_layers: int):
    """A copy of ``config`` with ``n_layers`` layers, or None where the config refuses it."""
    import copy

    probe = copy.deepcopy(config)
    text = probe.get_text_config() if hasattr(probe, "get_text_config") else probe
    try:
        text.num_hidden_layers = n_layers
        if isinstance(getattr(text, "layer_types", None), list):
            text.layer_types = text.layer_types[:n_layers]
        return _expected(probe)
    except Exception:
        return None


def _names(model, shapes) -> tuple[dict[str, tuple[int, ...]], dict, set[str], set[str]]:
    """The parameters ``model`` expects (name -> shape), the weights under the names it gives them
    (name -> (stored name, shape)), the names a converter fills by merging stored tensors, and the
    tied parameters (filled from another)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tied = getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None)
    rename = _renamer(model, expected)
    renamed: dict[str, tuple[str, tuple[int, ...]]] = {}
    converted: set[str] = set()
    for key, shape in shapes.items():
        name, merged = rename(key)
        if merged:
            converted.add(name)
        else:
            renamed.setdefault(name, (key, shape))
    return expected, renamed, converted, set(tied or ())


def check_weights(folder: Path, config) -> None:
    """Refuse, before any tensor is allocated, weights that do not fit the model ``config`` (a
    transformers config) describes: another layer count, a parameter missing or left unused, a
    shape the config does not give. Each error is one line naming the mismatch and the fix."""
    headers = weight_headers(folder)
    shapes = {name: shape for name, (shape, _) in headers.items()}
    where = f"Model folder {str(folder)!r}"
    kind = f"{type(config).__name__.removesuffix('Config')} model (model_type {config.model_type!r})"
    if not shapes:
        raise WeightsError(f"{where}: the weights hold no tensors", SAVE_AGAIN)
    n_config, layers = _n_layers(config), _layers(shapes)
    if n_config is not None and layers is not None and n_config > len(layers[1]):
        # a config claiming more layers than stored: compare names on a model of the stored depth
        # (a meta model of thousands of layers takes minutes to build)
        probe = _with_layers(config, len(layers[1]))
        if probe is not None:
            expected, renamed, converted, _ = _names(probe, shapes)
            if not converted and not any(name in expected for name in renamed):
                raise _no_overlap(where, kind, shapes)
        raise _layer_error(where, n_config, *layers)
    model = _expected(config)
    expected, renamed, converted, tied = _names(model, shapes)
    common = [name for name in renamed if name in expected]
    if not common and not converted:
        raise _no_overlap(where, kind, shapes)
    stored, wanted = _layers(renamed), _layers(expected)
    if stored and wanted and stored[0] == wanted[0] and stored[1] != wanted[1] and n_config is not None:
        raise _layer_error(where, n_config, *stored)
    extra = [r"rotary_emb\.inv_freq", r"(^|\.)position_ids$"]
    skip_missing = _ignored(getattr(model, "_keys_to_ignore_on_load_missing", None))
    skip_unused = _ignored([*(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ()), *extra])
    missing = [
        k
        for k in expected
        if k not in renamed
        and k not in converted
        and k not in tied
        and not (skip_missing and skip_missing.search(k))
    ]
    if missing:
        raise WeightsError(
            f"{where}: the weights lack {len(missing):,} parameter(s) a {kind} needs ({_listing(missing)}); "
            "transformers would fill them with random values",
            SAVE_AGAIN,
        )
    unused = [
        key
        for name, (key, _) in renamed.items()
        if name not in expected and not (skip_unused and skip_unused.search(name))
    ]
    if unused:
        raise WeightsError(
            f"{where}: the weights hold {len(unused):,} tensor(s) a {kind} does not use "
            f"({_listing(unused)}); config.json does not describe these weights",
            RESTORE_CONFIG,
        )
    floating = {k for k, v in model.state_dict().items() if v.is_floating_point()}
    not_float = [n for n in common if n in floating and not headers[renamed[n][0]][1].startswith(("F", "BF"))]
    if not_float:
        name = not_float[0]
        raise WeightsError(
            f"{where}: the weights store {name} as {headers[renamed[name][0]][1]} (and {len(not_float) - 1} "
            f"more), but a {kind} computes with floating-point weights: they are quantized or not this "
            "model's",
            SAVE_AGAIN,
        )
    differing = [(n, renamed[n][1], expected[n]) for n in common if renamed[n][1] != expected[n]]
    if differing:
        name, held, made = differing[0]
        more = f" (and {len(differing) - 1:,} more tensors)" if len(differing) > 1 else ""
        raise WeightsError(
            f"{where}: config.json and the weights disagree on {name}: the weights hold {list(held)}, "
            f"the config makes it {list(made)}{more}; config.json's sizes (vocab_size, hidden_size, "
            "intermediate_size, heads) do not belong to these weights",
            RESTORE_CONFIG,
        )


def check_tokenizer_files(folder: Path) -> None:
    """Refuse a model folder without a tokenizer's vocabulary file (transformers would load
    another tokenizer or none, and every prompt would be tokenised wrongly)."""
    if any((folder / name).is_file() for name in TOKENIZER_FILES) or any(folder.glob("*.tiktoken")):
        return
    raise WeightsError(
        f"Model folder {str(folder)!r} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)})",
        "copy the tokenizer saved with the model into it (tokenizer.save_pretrained(folder))",
    )


def check_tokenizer(model, source: str) -> None:
    """Refuse a loaded model whose tokenizer is missing or makes token ids its embedding lacks."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise WeightsError(
            f"The model {source!r} loaded without a tokenizer",
            "put the tokenizer files saved with it (tokenizer.json...) in its folder",
        )
    rows = int(model.cfg.d_vocab)
    ids = len(tokenizer)
    if ids > rows:
        raise WeightsError(
            f"The model {source!r}'s tokenizer has {ids:,} tokens but its embedding only {rows:,} rows: "
            f"token ids from {rows:,} on would index outside it; the tokenizer files are not the model's",
            "put the tokenizer saved with the model in its folder",
        )
