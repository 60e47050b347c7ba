"""Training the model organism: a small Llama trained from scratch on the built-in suite.

`train_organism` is deterministic given its config (seed, data, thread count) and
writes a standard Hugging Face folder (config.json, model.safetensors, tokenizer
files) that `tasklens.load_model` boots as a TransformerLens bridge.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tasklens import io
from tasklens.errors import TasklensError
from tasklens.io import atomic_dir
from tasklens.tasks.task import Task
from tasklens.tasks.tokenize import encode

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]


@dataclass
class OrganismConfig:
    """Everything that determines the organism (plain data, saved beside it)."""

    seed: int = 0
    vocab_size: int = 2048
    d_model: int = 128
    d_mlp: int = 512
    n_layers: int = 4
    n_heads: int = 4
    n_ctx: int = 64
    steps: int = 2800
    batch_size: int = 96
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup: int = 200
    prompt_loss_weight: float = 0.1
    task_weight_power: float = 0.5
    #: extra sampling weight per task name (multiplies n_examples ** task_weight_power)
    task_weights: dict[str, float] = field(default_factory=lambda: {"addition": 2.0})
    threads: int = 2
    extra_tasks: list[str] = field(default_factory=list)


def build_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE over the training texts, digits split one per token."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=10_000,
    )


def _examples(tasks: Sequence[Task], tokenizer) -> list[list[tuple[list[int], list[int]]]]:
    """Per task, (BOS + prompt ids, answer ids + EOS) pairs."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    out = []
    for task in tasks:
        prompts = encode(tokenizer, task.prompts)
        answers = encode(tokenizer, task.answers)
        out.append([([bos, *p], [*a, eos]) for p, a in zip(prompts, answers, strict=True)])
    return out


def _batch(pairs, pad_id: int, prompt_weight: float):
    seqs = [p + a for p, a in pairs]
    width = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    weights = torch.zeros((len(seqs), width))
    for row, ((p, _a), seq) in enumerate(zip(pairs, seqs, strict=True)):
        tokens[row, : len(seq)] = torch.tensor(seq)
        # weight w[t] applies to predicting token t+1 from position t
        weights[row, 1 : len(p)] = prompt_weight
        weights[row, len(p) : len(seq)] = 1.0
    return tokens, weights[:, 1:]


def is_organism_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` holds a checkpoint `train_organism` wrote (its training record)."""
    try:
        record = json.loads((folder / "training.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and {"config", "n_parameters"} <= set(record)


WHAT = "an organism checkpoint"


def check_replaceable(out_dir: str | Path) -> None:
    """``out_dir`` may be written: missing, empty, or an organism checkpoint whose every file
    tasklens's marker lists (`tasklens.io.check_own_folder`).

    Anything else is refused before training starts, so nothing the user keeps there is deleted.
    """
    io.check_own_folder(out_dir, WHAT, is_organism_checkpoint)


def train_organism(
    tasks: Sequence[Task],
    out_dir: str | Path,
    config: OrganismConfig | None = None,
    progress: bool = True,
) -> dict:
    """Train the organism on ``tasks`` and write it to ``out_dir``.

    Returns:
        Training record: config, final losses, wall time, parameter count.
    """
    config = config or OrganismConfig()
    if not isinstance(config.steps, int) or config.steps < 1:
        raise TasklensError(f"Training needs at least 1 step, got steps={config.steps!r}")
    check_replaceable(out_dir)
    if not tasks:
        raise TasklensError("train_organism needs at least one task to train on")
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    torch.set_num_threads(config.threads)

    texts = [t for task in tasks for pair in zip(task.prompts, task.answers, strict=True) for t in pair]
    tokenizer = build_tokenizer(texts, config.vocab_size)
    examples = _examples(tasks, tokenizer)
    longest = max(len(p) + len(a) for ex in examples for p, a in ex)
    if longest > config.n_ctx:
        raise TasklensError(
            f"A training example has {longest} tokens, more than n_ctx={config.n_ctx}; "
            "shorten the prompts or raise n_ctx"
        )
    weights = torch.tensor(
        [
            len(ex) ** config.task_weight_power * config.task_weights.get(task.name, 1.0)
            for task, ex in zip(tasks, examples, strict=True)
        ]
    )
    weights = weights / weights.sum()

    hf_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.d_model,
        intermediate_size=config.d_mlp,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_heads,
        max_position_embeddings=config.n_ctx,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        rope_theta=10000.0,
    )
    model = LlamaForCausalLM(hf_config)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.98),
    )

    def lr_at(step: int) -> float:
        if step < config.warmup:
            return config.lr * (step + 1) / config.warmup
        frac = (step - config.warmup) / max(1, config.steps - config.warmup)
        return config.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))

    generator = torch.Generator().manual_seed(config.seed)
    start = time.time()
    losses: list[float] = []
    from tqdm.auto import tqdm

    bar = tqdm(range(config.steps), desc="training organism", disable=not progress)
    for step in bar:
        task_idx = torch.multinomial(weights, config.batch_size, replacement=True, generator=generator)
        pairs = []
        for t in task_idx.tolist():
            j = int(torch.randint(len(examples[t]), (1,), generator=generator))
            pairs.append(examples[t][j])
        tokens, w = _batch(pairs, tokenizer.pad_token_id, config.prompt_loss_weight)
        logits = model(tokens).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none"
        ).view_as(w)
        loss = (nll * w).sum() / w.sum()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")

    model.eval()
    record = {
        "config": asdict(config),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "seconds": round(time.time() - start, 1),
        "loss_first_50": sum(losses[:50]) / len(losses[:50]),
        "loss_last_50": sum(losses[-50:]) / len(losses[-50:]),
        "tasks": {task.name: len(task) for task in tasks},
    }
    with atomic_dir(out_dir, WHAT, is_organism_checkpoint) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps(record, indent=2))
    return record
