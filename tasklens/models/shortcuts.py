"""Where tasklens computes a model's behaviour by hand instead of running it, and when it may.

Two places read an MLP neuron's effect without running the blocks after it: exact ablation
takes the last layer's effect off the final residual stream (`tasklens.scoring.ExactAblation`)
and output-side decoding reads a neuron's write through the final norm and the unembedding
(`tasklens.views.decode_neurons`). Both follow the neuron's write to the residual stream,
which differs by family: Llama, Qwen and GPT-2 add the down projection's output straight to
the residual; Gemma-2/3 and OLMo-2 normalise it first (the block's ``ln2_post``); GPT-NeoX
and Phi add it beside attention. Everything here reads that write off the model's own
modules, never off a family's name.

A shortcut runs only on a family that the conformance suite (``tests/integration/
test_conformance.py``, table in ``docs/conformance.md``) checked against the plain Hugging
Face model, and only after the model itself agreed once (`check_shortcut`); otherwise the
exact path runs and a one-line `TasklensWarning` says so, once per model and shortcut.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from tasklens.errors import TasklensError, TasklensWarning
from tasklens.models.hooks import owned_hooks
from tasklens.models.info import ModelInfo

#: Hugging Face ``model_type`` of every family the conformance suite checks
#: (the rows of ``docs/conformance.md``; a unit test keeps the two equal).
VERIFIED_FAMILIES = frozenset(
    {
        "gemma2",
        "gemma3_text",
        "gpt2",
        "gpt_neox",
        "llama",
        "mistral",
        "olmo2",
        "phi",
        "qwen2",
        "qwen3",
    }
)

#: The shortcuts, by name, with what each computes by hand.
SHORTCUTS = {
    "final_readout": "logits read off the last residual stream by the final norm and unembedding",
    "analytic_last_layer": "exact ablation of the last layer read off the final residual stream",
    "analytic_write": "exact ablation of an inner layer from its write to the next block's input",
    "output_decoding": "output-side decoding of each neuron's write through the final norm and unembedding",
    "input_decoding": "input-side decoding of each token's embedding through the MLP's input norm",
}

#: largest difference (in the metric's units, or 1 - cosine) a shortcut may show against the
#: model, by parameter precision: half precisions round each step to about 3 digits
TOLERANCE = {"float32": 1e-4, "float64": 1e-4, "bfloat16": 5e-2, "float16": 5e-2}


def family(model) -> str:
    """The Hugging Face ``model_type`` behind ``model`` (a bridge's wrapped model, or a classic
    HookedTransformer's ``original_architecture``); ``"unknown"`` when neither says."""
    hf = getattr(model, "original_model", None)
    config = getattr(hf, "config", None)
    if config is not None and getattr(config, "model_type", None):
        return str(config.model_type)
    architecture = str(getattr(model.cfg, "original_architecture", "") or "")
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    by_class = {cls: kind for kind, cls in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items()}
    return by_class.get(architecture, architecture or "unknown")


def _state(model) -> dict[str, bool]:
    state = model.__dict__.get("_tasklens_shortcuts")
    if state is None:
        state = {}
        model.__dict__["_tasklens_shortcuts"] = state
    return state


def _note(model, name: str, why: str) -> None:
    warnings.warn(
        f"{ModelInfo.of(model).name} ({family(model)}): {SHORTCUTS[name]} is not used ({why}); "
        "tasklens runs the exact path instead (same quantity, slower)",
        TasklensWarning,
        stacklevel=3,
    )


def shortcut_allowed(model, name: str) -> bool:
    """Whether ``model`` may take shortcut ``name``: its family is in `VERIFIED_FAMILIES` and no
    check on this model refused it. Says once per model why not."""
    if name not in SHORTCUTS:
        raise TasklensError(f"Unknown shortcut {name!r}; choose one of {sorted(SHORTCUTS)}")
    state = _state(model)
    if name not in state and family(model) not in VERIFIED_FAMILIES:
        state[name] = False
        _note(model, name, "its family is not in the conformance table, docs/conformance.md")
    return state.get(name, True)


def check_shortcut(model, name: str, difference: Callable[[], float]) -> bool:
    """Compare shortcut ``name`` with the model's own forward once per model.

    ``difference`` computes the largest difference between the two on a few neurons; above
    `TOLERANCE` (for the model's dtype) the shortcut is turned off for this model, with a
    one-line note. Returns whether the shortcut may be used."""
    if not shortcut_allowed(model, name):
        return False
    state = _state(model)
    if name not in state:
        gap = float(difference())
        state[name] = gap <= TOLERANCE.get(ModelInfo.of(model).dtype, 1e-4)
        if not state[name]:
            _note(model, name, f"it differs from the model's own forward by {gap:.2g}")
    return state[name]


def final_readout(model, resid: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch vocab"]:
    """The logits the model computes from its last residual stream: the final norm, the
    unembedding and, where the model's config asks for it (Gemma-2), the final soft-capping."""
    logits = model.unembed(model.ln_final(resid))
    hf = getattr(model, "original_model", None)
    cap = getattr(getattr(hf, "config", None), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def readout_allowed(model) -> bool:
    """Whether `final_readout` gives the model's own logits (checked once on a short sequence)."""

    @torch.no_grad()
    def difference() -> float:
        info = ModelInfo.of(model)
        probe = _probe(model)
        resid_name = info.residual_names(info.n_layers - 1)["resid_post"]
        logits, cache = model.run_with_cache(probe, names_filter=[resid_name])
        return float((final_readout(model, cache[resid_name]) - logits).abs().max())

    return check_shortcut(model, "final_readout", difference)


def _probe(model) -> Tensor:
    """A short fixed token sequence to compare a shortcut with the model's own forward on."""
    vocab = int(model.cfg.d_vocab)
    return torch.tensor([[i * 7919 % vocab for i in range(1, 9)]], device=model.cfg.device)


def mlp_input_norm(model, layer: int):
    """The norm layer ``layer``'s MLP reads the residual stream through: the block's ``ln2``,
    else ``ln1`` (blocks that run attention and MLP side by side from one norm, Phi), else None
    (OLMo-2 normalises only outputs). `input_norm_gap` checks the choice against the model."""
    block = model.blocks[layer]
    return getattr(block, "ln2", None) or getattr(block, "ln1", None)


@torch.no_grad()
def normalised_embedding(model) -> Float[Tensor, "vocab d_model"]:
    """Every token's embedding as the MLPs' input norms see it before their weights: centred
    (LayerNorm) and divided by its root mean square with the model's epsilon; as it is where the
    MLP reads the residual stream without a norm."""
    embed = model.W_E.detach().float()
    norm = mlp_input_norm(model, 0)
    if norm is None:
        return embed
    if centres(norm):
        embed = embed - embed.mean(-1, keepdim=True)
    eps = float(getattr(model.cfg, "eps", 1e-5))
    return embed / embed.pow(2).mean(-1, keepdim=True).add(eps).sqrt()


@torch.no_grad()
def input_norm_gap(model, n_tokens: int = 8) -> float:
    """Largest relative difference between what decoding assumes the MLPs read and what they do:
    on a short sequence at the first and last layer, `mlp_input_norm` applied to the residual
    stream against the MLP's own input; on a few embeddings at every layer, the norm module's
    output against `normalised_embedding` times the norm's probed weight (plus its bias)."""
    from tasklens.models.loading import mlp_input

    info = ModelInfo.of(model)
    gap = 0.0

    def worse(ours: Tensor, theirs: Tensor) -> float:
        return max(gap, float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-30)))

    for layer in sorted({0, info.n_layers - 1}):
        stream = f"blocks.{layer}.hook_resid_mid"
        if stream not in model.hook_dict:  # attention and MLP read the same input
            stream = f"blocks.{layer}.hook_resid_pre"
        read = info.mlp_input_name(layer)
        _, cache = model.run_with_cache(_probe(model), names_filter=[stream, read])
        norm = mlp_input_norm(model, layer)
        gap = worse(
            cache[stream] if norm is None else norm(cache[stream]), mlp_input(model, layer, cache[read])
        )
    tokens = _probe(model)[0, :n_tokens]
    shared = normalised_embedding(model)[tokens.to(model.W_E.device)]
    embed = model.W_E.detach()[tokens.to(model.W_E.device)]
    for layer in range(info.n_layers):
        norm = mlp_input_norm(model, layer)
        if norm is None:
            gap = worse(shared, embed.float())
            continue
        offset = norm(torch.zeros_like(embed[:1])[None])[0].float()
        expected = shared * norm_scale(norm, shared.shape[-1]).to(shared.device) + offset
        gap = worse(expected, norm(embed[None])[0].float())
    return gap


def post_mlp_norm(model, layer: int):
    """The norm a block applies to its MLP's output before the residual add (Gemma-2/3, OLMo-2:
    ``ln2_post``), or None."""
    return getattr(model.blocks[layer], "ln2_post", None)


def mlp_write_change(
    model, layer: int, raw: Float[Tensor, "*batch d_model"], new_raw: Float[Tensor, "*batch d_model"]
) -> Float[Tensor, "*batch d_model"]:
    """The change of layer ``layer``'s write to the residual stream when its MLP's output (the
    down projection's, ``blocks.{l}.mlp.hook_out``) goes from ``raw`` to ``new_raw``, computed
    by the block's own post-MLP norm where it has one."""
    norm = post_mlp_norm(model, layer)
    if norm is None:
        return new_raw - raw
    return norm(new_raw) - norm(raw)


def norm_scale(norm, d_model: int) -> Float[Tensor, " d_model"]:
    """The per-dimension scale g of a LayerNorm or RMSNorm module, read off the module itself
    (so every variant, e.g. a weight offset, is covered): for a zero-mean probe p of unit
    variance, norm(p) - norm(-p) = 2 p g."""
    if d_model % 2:
        raise TasklensError(f"Cannot probe the norm of an odd residual width ({d_model})")
    probe = torch.ones(d_model)
    probe[1::2] = -1
    device = next((p.device for p in norm.parameters()), torch.device("cpu"))
    dtype = next((p.dtype for p in norm.parameters()), torch.float32)
    probe = probe.to(device, dtype)
    with torch.no_grad():
        both = norm(torch.stack([probe, -probe])[:, None])[:, 0].float()
    return ((both[0] - both[1]) / (2 * probe.float())).cpu()


def centres(norm) -> bool:
    """Whether a norm module subtracts the mean (LayerNorm) rather than only rescaling (RMSNorm)."""
    if isinstance(norm, torch.nn.LayerNorm):
        return True
    flag = getattr(norm, "uses_rms_norm", None)
    if flag is not None:
        return not bool(flag)
    return "RMS" not in type(norm).__name__ and "rms" not in type(norm).__name__.lower()


def write_directions(model, layer: int, rows: Float[Tensor, "k d_model"]) -> Float[Tensor, "k d_model"]:
    """The directions in which rows of ``W_out`` move the residual stream, per unit of the
    post-MLP norm's input scale: the rows themselves, or times that norm's weight (centred
    first for a LayerNorm) where the block normalises its MLP's output."""
    norm = post_mlp_norm(model, layer)
    if norm is None:
        return rows
    rows = rows - rows.mean(-1, keepdim=True) if centres(norm) else rows
    return rows * norm_scale(norm, rows.shape[-1]).to(rows.device, rows.dtype)


@torch.no_grad()
def measured_write_directions(
    model, layer: int, neurons: Tensor, probe: Tensor | None = None
) -> Float[Tensor, "k d_model"]:
    """The change of ``blocks.{layer}.hook_resid_post`` at the last position of ``probe`` (default:
    a short fixed sequence) when each neuron's activation there rises by 1, with the post-MLP
    norm's scale held at its clean value: the write the model itself makes, per neuron (up to
    one positive factor per layer, that norm's scale)."""
    info = ModelInfo.of(model)
    probe = _probe(model) if probe is None else probe.to(model.cfg.device)
    scale_name = f"blocks.{layer}.ln2_post.hook_scale"
    resid_name = info.residual_names(layer)["resid_post"]
    frozen_scale = post_mlp_norm(model, layer) is not None
    cache = {}
    if frozen_scale:
        _, cache = model.run_with_cache(probe, names_filter=[scale_name])
    k = len(neurons)
    copies = torch.arange(1, k + 1)

    def add(act: Tensor, hook) -> Tensor:
        act = act.clone()
        act[copies.to(act.device), -1, neurons.to(act.device)] += 1.0
        return act

    def frozen(act: Tensor, hook) -> Tensor:
        return cache[scale_name].to(act.dtype).expand_as(act).clone()

    out: dict[str, Tensor] = {}

    def read(act: Tensor, hook) -> None:
        out["resid"] = act

    hooks = [(info.hook_name(layer), add), (resid_name, read)]
    if frozen_scale:
        hooks.append((scale_name, frozen))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="A forward hook edited hook_scale")
        with owned_hooks(model, hooks):
            model(probe.repeat(k + 1, 1), return_type=None)
    resid = out["resid"][:, -1].double()
    return (resid[1:] - resid[:1]).float().cpu()
