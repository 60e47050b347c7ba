"""The organism's model card: its training record and per-task accuracy, as JSON and Markdown."""

from __future__ import annotations

import json
from pathlib import Path

from tasklens._version import __version__
from tasklens.io import atomic_write_text, write_json, write_marker


def write_card(folder: str | Path, accuracy: dict[str, dict[str, float]]) -> dict:
    """Write ``model_card.json`` and ``README.md`` into the checkpoint folder (and list them in
    its marker, so the folder stays tasklens's alone)."""
    folder = Path(folder)
    training = json.loads((folder / "training.json").read_text())
    card = {
        "tasklens_version": __version__,
        "config": training["config"],
        "n_parameters": training["n_parameters"],
        "training_seconds": training["seconds"],
        "accuracy": accuracy,
    }
    write_json(folder / "model_card.json", card)
    cfg = training["config"]
    lines = [
        "# tasklens model organism",
        "",
        f"A {cfg['n_layers']}-layer Llama-architecture model (SwiGLU MLP of width {cfg['d_mlp']}, "
        f"RMSNorm, rotary positions, d_model {cfg['d_model']}, {training['n_parameters']:,} parameters), "
        "trained from scratch by `tasklens organism train` on tasklens's built-in task suite "
        f"(seed {cfg['seed']}, {cfg['steps']} steps, {training['seconds']:.0f} s on 2 CPU cores).",
        "",
        "Greedy exact match (up to 300 prompts per task and split):",
        "",
        "| task | training templates | held-out template | held-out instances |",
        "|---|---|---|---|",
    ]
    for name, acc in sorted(accuracy.items()):
        cells = [
            f"{acc[k]:.3f}" if k in acc else ""
            for k in ("train_template", "heldout_template", "heldout_instance")
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    atomic_write_text(folder / "README.md", "\n".join(lines) + "\n")
    write_marker(folder, ["model_card.json", "README.md"])
    return card
