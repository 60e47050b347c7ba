"""Conformance over model families, the other scorers and views: integrated gradients, mean and
resample ablation, input decoding, top contexts and neuron fine-tuning of tasklens against an
independent implementation on the plain Hugging Face model (`tests/families.py`).

Integrated gradients against captum's ``LayerIntegratedGradients`` on the plain model; mean and
resample ablation against own forward pre-hooks on the down projections (means and resampling
pools computed from the plain model's own activations); input decoding against each token's
embedding passed through the model's own pre-MLP norm and gate / input projection; top contexts
against a brute-force scan of every activation; fine-tuning against the parameters themselves,
before and after (only the chosen neurons' slices of the MLP projections may move).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from families import DOWN, FAMILIES, GATE_OR_IN, UP, Plain, answer_logprob, record

from tasklens.data.neurons import NeuronSet
from tasklens.errors import TasklensError, TasklensWarning
from tasklens.evaluation.evaluate import evaluate_metrics
from tasklens.finetune import FinetuneConfig, finetune
from tasklens.interventions import ablate
from tasklens.models import load_model
from tasklens.scoring import IntegratedGradients
from tasklens.tasks import Task
from tasklens.tasks.tokenize import TokenizedTask
from tasklens.views.contexts import sequences, top_contexts
from tasklens.views.vocab import decode_neurons

ONE_THREAD = True

PROMPTS = ["Q: What is the capital of Peru? A:", "reverse: a b c ->"]
ANSWERS = [" Lima", " c b a"]
#: the task whose activations mean and resample ablation take
SOURCE = (["Element: Iron. Symbol:", "Country: Chad. Continent:"], [" Fe", " Africa"])
TEXTS = ["The cat sat on the mat.", "Paris is in France", "copy: x y -> x y"]
#: (layer, neuron) pairs ablated and fine-tuned: every layer (first, inner, last), 8 neurons each
CHOSEN = [(layer, n) for layer in range(3) for n in range(layer, 64, 8)]
RTOL, ATOL = 1e-4, 1e-5
#: an answer's log-probability (up to ~25 nats here) agrees to 7e-8 nats on every family in float32;
#: a relative tolerance on the log-probability itself would allow 2e-3 nats, more than the effects
LOGPROB_ATOL = 1e-6
#: the ablations must move some answer by this much (nats) for the comparison to mean anything
EFFECT = 1e-4


class Pair:
    """One family: its tasklens model, the plain Hugging Face model and the tasks."""

    def __init__(self, family: str, folder) -> None:
        from transformers import AutoTokenizer

        self.family = family
        with warnings.catch_warnings():
            warnings.simplefilter("error", TasklensWarning)  # a claimed family takes no fallback
            self.model = load_model(str(folder))
        self.plain = Plain.load(folder, family)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.task = Task.from_lists("t", PROMPTS, ANSWERS)
        self.source = Task.from_lists("source", *SOURCE)
        self.n_layers, self.d_mlp = len(self.plain.layers), self.plain.w_out(0).shape[0]
        self.chosen = NeuronSet.from_pairs(CHOSEN, (self.n_layers, self.d_mlp), "chosen")

    def ids(self, task: Task) -> list[tuple[list[int], list[int]]]:
        """(prompt, prompt + answer) token ids of each prompt, as tasklens tokenises them (BOS
        first where TransformerLens prepends one for the architecture: not GPT-NeoX, Phi, Qwen)."""
        tokenized = TokenizedTask.for_model(task, self.model)
        return [
            (list(p), list(p) + list(a))
            for p, a in zip(tokenized.prompt_ids, tokenized.answer_ids, strict=True)
        ]

    def activations(self, ids: list[int]) -> list[torch.Tensor]:
        """``[pos, d_mlp]`` per layer: the input of each down projection over one sequence."""
        acts: dict[int, torch.Tensor] = {}

        def keep(layer):
            def hook(act):
                acts[layer] = act[0].detach()
                return act

            return hook

        with torch.no_grad():
            self.plain.logits(ids, {layer: keep(layer) for layer in range(self.n_layers)})
        return [acts[layer] for layer in range(self.n_layers)]

    def index(self, layer: int) -> torch.Tensor:
        return self.chosen.mask[layer].nonzero().flatten()


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request, family_folder) -> Pair:
    family = request.param
    return Pair(family, family_folder(family))


@pytest.fixture
def notes():
    """The warnings given during a test: a fallback note of tasklens (a shortcut replaced by the
    exact path) makes the cell "falls back"."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TasklensWarning)
        yield caught


def _record(pair: Pair, feature: str, difference: float, notes) -> None:
    falls_back = any(
        issubclass(w.category, TasklensWarning) and "exact path" in str(w.message) for w in notes
    )
    record(pair.family, feature, difference, "falls back" if falls_back else "verified")


def _close(ours: torch.Tensor, ref: torch.Tensor, what: str, rtol: float = RTOL, atol: float = ATOL) -> float:
    """Assert ``ours`` matches ``ref`` (to RTOL / ATOL unless given); the largest absolute difference."""
    torch.testing.assert_close(
        ours.double(), ref.double(), rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}"
    )
    return float((ours.double() - ref.double()).abs().max())


# --- integrated gradients ---------------------------------------------------------------------------
def test_integrated_gradients_against_captum_on_the_plain_model(pair, notes):
    """Every layer, every neuron: captum integrates the gradient of the first answer token's
    probability at the last prompt position while the down projection's input there is scaled
    from zero (an identity module spliced in by a forward pre-hook), as tasklens defines it."""
    from captum.attr import LayerIntegratedGradients

    steps = 8
    ours = IntegratedGradients(steps=steps, rule="riemann_left").per_prompt(pair.model, pair.task)
    splice = torch.nn.Identity()
    ref = torch.zeros(len(PROMPTS), pair.n_layers, pair.d_mlp, dtype=torch.float64)
    for i, (prompt, full) in enumerate(pair.ids(pair.task)):
        gold = full[len(prompt)]
        clean = pair.activations(prompt)
        for layer in range(pair.n_layers):

            def forward(z, layer=layer, prompt=prompt, gold=gold):
                def put(module, args):
                    act = args[0].clone()
                    act[:, -1] = splice(z)
                    return (act,)

                tokens = torch.tensor([prompt]).repeat(len(z), 1)
                handle = pair.plain.down(layer).register_forward_pre_hook(put)
                try:
                    logits = pair.plain.model(tokens, logits_to_keep=1).logits
                finally:
                    handle.remove()
                return logits[:, -1].softmax(-1)[:, gold]

            last = clean[layer][-1:]
            lig = LayerIntegratedGradients(forward, splice)
            attributions = lig.attribute(
                last, baselines=torch.zeros_like(last), n_steps=steps, method="riemann_left"
            )
            ref[i, layer] = attributions[0].double()
    assert ref.abs().max() > 1e-7  # attributions to compare (probabilities of a 2048-token vocabulary)
    scale = float(ref.abs().max())
    torch.testing.assert_close(
        ours.double(), ref, rtol=0.0, atol=ATOL * scale, msg=lambda m: f"integrated gradients: {m}"
    )
    _record(pair, "integrated_gradients", float((ours.double() - ref).abs().max()) / scale, notes)


# --- mean and resample ablation -----------------------------------------------------------------------
def _logprobs(pair: Pair, replace=None) -> torch.Tensor:
    """Per prompt, the answer's log-probability on the plain model; ``replace(layer, n_pos, row)``
    gives the chosen neurons' values ``[n_pos, k]`` (row: the prompt's index)."""
    out = []
    for row, (prompt, full) in enumerate(pair.ids(pair.task)):
        hooks = {}
        if replace is not None:
            for layer in range(pair.n_layers):
                idx = pair.index(layer)
                if len(idx):

                    def put(act, layer=layer, idx=idx, row=row):
                        act = act.clone()
                        act[0, :, idx] = replace(layer, act.shape[1], row).to(act.dtype)
                        return act

                    hooks[layer] = put
        with torch.no_grad():
            out.append(answer_logprob(pair.plain.logits(full, hooks), len(prompt), full))
    return torch.stack(out)


def _source_activations(pair: Pair) -> list[torch.Tensor]:
    """Per layer, ``[n_tokens, k]``: the chosen neurons over every token (prompt and answer, BOS
    included where the model has one) of the source task, prompt after prompt."""
    per_prompt = [pair.activations(full) for _, full in pair.ids(pair.source)]
    return [
        torch.cat([acts[layer] for acts in per_prompt])[:, pair.index(layer)]
        for layer in range(pair.n_layers)
    ]


def test_mean_ablation_against_own_hooks(pair, notes):
    """The chosen neurons set, at every position, to their mean over every token (BOS, prompt and
    answer) of the source task, as tasklens defines the mean."""
    mean = [acts.double().mean(0) for acts in _source_activations(pair)]
    ref = _logprobs(pair, lambda layer, n, row: mean[layer].expand(n, -1))
    with ablate(pair.model, pair.chosen, mode="mean", source=pair.source):
        ours = evaluate_metrics(pair.model, pair.task, ["logprob"])[:, 0]
    assert (ref - _logprobs(pair)).abs().max() > EFFECT  # the ablation changes the answer
    _record(pair, "mean_ablation", _close(ours, ref, "mean ablation", 0.0, LOGPROB_ATOL), notes)


def test_resample_ablation_against_own_hooks(pair, notes):
    """Resampling as tasklens defines it: every edited position takes the values the neurons had on
    one token drawn uniformly from the source's tokens (one draw per layer and forward pass, from a
    generator seeded by ``seed``); evaluated one prompt at a time, shortest first."""
    seed = 3
    pool = _source_activations(pair)
    ids = pair.ids(pair.task)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i][1]))  # tasklens's batches, by length
    generator = torch.Generator().manual_seed(seed)
    drawn: dict[tuple[int, int], torch.Tensor] = {}
    for row in order:
        for layer in range(pair.n_layers):
            if len(pair.index(layer)):
                n = len(ids[row][1])
                drawn[row, layer] = pool[layer][
                    torch.randint(len(pool[layer]), (1, n), generator=generator)[0]
                ]
    ref = _logprobs(pair, lambda layer, n, row: drawn[row, layer])
    with ablate(pair.model, pair.chosen, mode="resample", source=pair.source, seed=seed):
        ours = evaluate_metrics(pair.model, pair.task, ["logprob"], batch_size=1)[:, 0]
    assert (ref - _logprobs(pair)).abs().max() > EFFECT
    _record(pair, "resample_ablation", _close(ours, ref, "resample ablation", 0.0, LOGPROB_ATOL), notes)


# --- input decoding ---------------------------------------------------------------------------------
def test_input_decoding_against_the_measured_pre_activation(pair, notes):
    """Each token's embedding through the layer's own pre-MLP norm (none for OLMo-2) and the gate /
    input projection (its bias, one constant per neuron, left out): tasklens's top and bottom
    tokens must score what the best and worst tokens score (ties allowed)."""
    k = 5
    gated = hasattr(pair.plain.layers[0].mlp, UP[0])
    sides = {"hook_pre": GATE_OR_IN, **({"hook_pre_linear": UP} if gated else {})}
    if not gated:
        with pytest.raises(TasklensError, match="hook_pre_linear"):
            decode_neurons(pair.model, side="hook_pre_linear", k=k)
    worst = 0.0
    for side, names in sides.items():
        vocab = decode_neurons(pair.model, side=side, k=k)
        for layer in range(pair.n_layers):
            norm, projection = pair.plain.pre_mlp_norm(layer), pair.plain.mlp_part(layer, names)
            with torch.no_grad():
                read = pair.plain.embedding if norm is None else norm(pair.plain.embedding)
                scores = projection(read)
                if getattr(projection, "bias", None) is not None:
                    scores = scores - projection.bias
            scores = scores.T.double()  # [d_mlp, vocab]
            scale = float(scores.abs().max())
            for ids, largest in ((vocab.top_ids, True), (vocab.bottom_ids, False)):
                best = scores.topk(k, dim=-1, largest=largest).values
                picked = scores.gather(1, ids[layer])
                gap = float((picked - best).abs().max()) / scale
                assert gap < RTOL, (side, layer, "top" if largest else "bottom", gap)
                worst = max(worst, gap)
    _record(pair, "input_decoding", worst, notes)


# --- top contexts -----------------------------------------------------------------------------------
def test_top_contexts_against_a_brute_force_scan(pair, notes):
    k, window = 3, 2
    found = top_contexts(pair.model, TEXTS, k=k, window=window)
    seqs = sequences(pair.model, TEXTS)
    special = set(pair.tokenizer.all_special_ids)
    acts = [pair.activations(ids) for ids in seqs]
    where = [(s, p) for s, ids in enumerate(seqs) for p, t in enumerate(ids) if t not in special]
    # [eligible position, layer, neuron]
    every = torch.stack(
        [torch.stack([acts[s][layer][p] for layer in range(pair.n_layers)]) for s, p in where]
    )

    def around(s: int, p: int, layer: int, neuron: int) -> tuple[list[int], torch.Tensor]:
        inside = [q if 0 <= q < len(seqs[s]) else None for q in range(p - window, p + window + 1)]
        tokens = [seqs[s][q] if q is not None else -1 for q in inside]
        values = torch.tensor([0.0 if q is None else float(acts[s][layer][q, neuron]) for q in inside])
        return tokens, values

    assert found.neurons.tolist() == [[layer, n] for layer in range(pair.n_layers) for n in range(pair.d_mlp)]
    worst = 0.0
    for row, (layer, neuron) in enumerate(found.neurons.tolist()):
        column = every[:, layer, neuron]
        best = column.topk(k).values
        worst = max(worst, _close(found.values[row], best, f"top values L{layer}N{neuron}"))
        for slot in range(k):
            value = found.values[row, slot]
            tokens = found.windows[row, slot].tolist()
            centres = ((column - value).abs() <= ATOL + RTOL * value.abs()).nonzero().flatten().tolist()
            matches = [around(*where[c], layer, neuron) for c in centres]
            matches = [values for ids, values in matches if ids == tokens]
            assert matches, (layer, neuron, slot, "no position of the texts has this window")
            worst = max(
                worst, _close(found.window_values[row, slot], matches[0], f"window L{layer}N{neuron}")
            )
    _record(pair, "top_contexts", worst, notes)


# --- fine-tuning --------------------------------------------------------------------------------------
def _neuron_slices(pair: Pair) -> dict[str, torch.Tensor]:
    """Parameter name -> mask of the entries the chosen neurons own in the plain model: their rows
    of the gate / input / up projections (columns of GPT-2's ``Conv1D``) and those projections' bias
    entries, their columns of the down projection (rows of ``Conv1D``)."""
    names = {id(module): name for name, module in pair.plain.model.named_modules()}
    owned: dict[str, torch.Tensor] = {}
    for layer in range(pair.n_layers):
        idx = pair.index(layer)
        for attr in (*GATE_OR_IN, *UP, *DOWN):
            module = getattr(pair.plain.layers[layer].mlp, attr, None)
            if module is None:
                continue
            reads = attr not in DOWN  # one output feature per neuron
            conv = type(module).__name__ == "Conv1D"  # weight stored [in, out]
            mask = torch.zeros_like(module.weight, dtype=torch.bool)
            if reads != conv:
                mask[idx] = True
            else:
                mask[:, idx] = True
            owned[f"{names[id(module)]}.weight"] = mask
            if reads and getattr(module, "bias", None) is not None:
                bias = torch.zeros_like(module.bias, dtype=torch.bool)
                bias[idx] = True
                owned[f"{names[id(module)]}.bias"] = bias
    return owned


def _parameters(pair: Pair) -> dict[str, torch.Tensor]:
    """The tasklens model's Hugging Face parameters under the plain model's names (the bridge wraps
    each module it hooks in an ``_original_component``)."""
    out: dict[str, torch.Tensor] = {}
    for name, value in pair.model.original_model.named_parameters(remove_duplicate=False):
        out.setdefault(name.replace("_original_component.", ""), value.detach().clone())
    return out


def test_finetuning_deltas_touch_only_the_chosen_neurons(pair, notes):
    """Against the plain model loaded from the same folder: after fine-tuning and merging, every
    parameter entry outside the chosen neurons' slices is bit for bit the same, every entry inside
    them has moved; restoring puts everything back."""
    original = dict(pair.plain.model.named_parameters(remove_duplicate=False))
    owned = _neuron_slices(pair)
    assert len(owned) >= 2 * pair.n_layers
    config = FinetuneConfig(steps=2, batch_size=2, lr=1e-2)
    run = finetune(pair.model, pair.task, pair.chosen, config)
    try:
        after = _parameters(pair)
    finally:
        run.restore()
    outside = 0.0
    for name, old in original.items():
        moved = after[name] != old
        mask = owned.get(name, torch.zeros_like(old, dtype=torch.bool))
        outside = max([outside, *(after[name] - old).abs()[~mask].tolist()])
        assert not moved[~mask].any(), (name, "changed outside the chosen neurons")
        if name in owned:
            assert moved[mask].all(), (
                name,
                f"{int((~moved[mask]).sum())} entries of the chosen neurons kept",
            )
    restored = _parameters(pair)
    assert all(torch.equal(restored[name], value) for name, value in original.items())
    _record(pair, "finetune_deltas", outside, notes)
