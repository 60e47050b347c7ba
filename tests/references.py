"""Independent reference implementations the scorers are checked (and benchmarked) against."""

from __future__ import annotations

import torch
from torch import Tensor

from tasklens.models import DEFAULT_UNIT, ModelInfo
from tasklens.tasks.task import Task
from tasklens.tasks.tokenize import TokenizedTask


def captum_reference(
    model, task: Task, steps: int = 20, rule: str = "riemann_left", layers=None, unit: str = DEFAULT_UNIT
) -> Tensor:
    """The same integrated gradients computed by captum's ``LayerIntegratedGradients``.

    One prompt and one layer at a time, with full forward passes: the independent
    reference `IntegratedGradients` is checked (and benchmarked) against. The
    target-position activation is routed through an identity layer that captum
    scales from a zero baseline. Needs captum (``pip install tasklens[test]``).

    Returns:
        ``[n_prompts, n_layers, d_mlp]``; layers not in ``layers`` are zero.
    """
    from captum.attr import LayerIntegratedGradients

    info = ModelInfo.of(model)
    tokenized = TokenizedTask.for_model(task, model)
    splice = torch.nn.Identity()
    out = torch.zeros(len(task), info.n_layers, info.d_mlp)
    for i, (prompt, answer) in enumerate(zip(tokenized.prompt_ids, tokenized.answer_ids, strict=True)):
        tokens = torch.tensor([prompt], device=model.cfg.device)
        _, cache = model.run_with_cache(tokens, names_filter=info.hook_names(unit))
        for layer in range(info.n_layers) if layers is None else layers:
            name = info.hook_name(layer, unit)

            def forward(z, name=name, tokens=tokens, gold=answer[0]):
                def hook(act, hook):
                    act = act.clone()
                    act[:, -1] = splice(z)
                    return act

                with model.hooks(fwd_hooks=[(name, hook)]):
                    logits = model(tokens.repeat(len(z), 1))
                return logits[:, -1].softmax(-1)[:, gold]

            clean = cache[name][:, -1]
            lig = LayerIntegratedGradients(forward, splice)
            out[i, layer] = lig.attribute(
                clean, baselines=torch.zeros_like(clean), n_steps=steps, method=rule
            )[0]
    return out
