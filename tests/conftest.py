from __future__ import annotations

import os
from pathlib import Path

import pytest

from tasklens.models import load_model


@pytest.fixture(scope="session")
def organism():
    """The shipped organism, loaded once for the whole session."""
    return load_model("organism")


@pytest.fixture(scope="module", autouse=True)
def one_thread(request):
    """Modules of tiny models (``ONE_THREAD = True``) run torch on one thread: their matrices are too
    small to share, and idle threads spinning beside other processes cost more than the work."""
    if not getattr(request.module, "ONE_THREAD", False):
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(folder)``: ``os.access`` says ``folder`` cannot be written, as the system says to
    anyone but root (root writes anywhere, so a chmod shows nothing to a test run as root)."""

    def make(folder) -> None:
        real = os.access
        denied = lambda p, mode: Path(p) == Path(folder) and bool(mode & os.W_OK)  # noqa: E731
        monkeypatch.setattr(os, "access", lambda p, mode: not denied(p, mode) and real(p, mode))

    return make


@pytest.fixture(scope="session")
def family_folder(tmp_path_factory):
    """Factory: ``family_folder(family)``, the folder of a tiny model of that family
    (`tests/families.py`), built once per session for every test that reads it."""
    from families import build_family

    built = {}

    def folder(family: str):
        if family not in built:
            built[family] = build_family(tmp_path_factory.mktemp(family), family)
        return built[family]

    return folder


@pytest.fixture
def tiny_model(tmp_path):
    """Factory: ``tiny_model(arch, n_layers)`` loads a random-init model of another architecture."""

    def make(arch: str, n_layers: int = 2):
        return load_model(str(build_tiny(tmp_path / f"{arch}_{n_layers}", arch, n_layers)))

    return make


def build_tiny(folder, arch: str, n_layers: int = 2, seed: int = 0):
    """A random-init Hugging Face model of another architecture, saved with the organism's tokenizer."""
    import torch
    from transformers import (
        AutoTokenizer,
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    from tasklens.models import ORGANISM_DIR

    tokenizer = AutoTokenizer.from_pretrained(ORGANISM_DIR)
    vocab = len(tokenizer)
    torch.manual_seed(seed)
    if arch == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=vocab,
                n_positions=64,
                n_embd=32,
                n_layer=n_layers,
                n_head=2,
                bos_token_id=1,
                eos_token_id=2,
            )
        )
    elif arch == "pythia":
        model = GPTNeoXForCausalLM(
            GPTNeoXConfig(
                vocab_size=vocab,
                hidden_size=32,
                intermediate_size=128,
                num_hidden_layers=n_layers,
                num_attention_heads=2,
                max_position_embeddings=64,
                bos_token_id=1,
                eos_token_id=2,
            )
        )
    elif arch == "llama":
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=vocab,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=n_layers,
                num_attention_heads=2,
                num_key_value_heads=2,
                max_position_embeddings=64,
                bos_token_id=1,
                eos_token_id=2,
                pad_token_id=0,
                initializer_range=0.3,
            )
        )
    else:
        raise ValueError(arch)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


TIERS = ("unit", "integration", "acceptance")

# Integration tests left out of the fast loop (``pytest -m "not slow"``): each takes tens of seconds
# on two cores (fine-tuning for a hundred steps and more, verified patching of every relation,
# evaluating dozens of neuron sets, exact ablation of every neuron). A name without ``[...]``
# covers every parametrization.
SLOW = (
    "tests/integration/test_experiments.py::test_each_relation_set_hurts_its_relation_more_than_random_sets",
    "tests/integration/test_experiments.py::test_relation_sets_are_specific_on_average",
    "tests/integration/test_experiments.py::test_interference_matrix_matches_the_ablation_matrix",
    "tests/integration/test_experiments.py::test_cross_language_reports_each_language",
    "tests/integration/test_experiments.py::test_exclusive_vs_shared_ablation",
    "tests/integration/test_experiments.py::test_cumulativity_accuracy_does_not_rise_with_k",
    "tests/integration/test_experiments.py::test_cumulativity_sets_every_k_beside_random_sets",
    "tests/integration/test_matrix.py::test_the_test_against_random_sets_can_pass_and_can_fail",
    "tests/integration/test_matrix.py::test_cell_tests_find_the_planted_drop_and_allow_rises",
    "tests/integration/test_scorers.py::test_exact_ablation_equals_a_plain_loop",
    "tests/integration/test_scorers.py::test_every_scorer_has_the_same_entry_point",
    "tests/integration/test_interventions.py::test_an_empty_key_value_cache_falls_back_to_exact_reruns",
    "tests/integration/test_doctests.py::test_docstring_examples_pass[tasklens.scoring.exact]",
    "tests/integration/test_doctests.py::test_docstring_examples_pass[tasklens.scoring.integrated_gradients]",
    "tests/integration/test_finetune.py::test_neuron_finetuning_learns_a_task_the_organism_never_saw",
    "tests/integration/test_finetune.py::test_continual_learning_matrix_shows_catastrophic_forgetting",
    "tests/integration/test_matrix.py::test_the_specificity_test_can_pass_and_can_fail",
    "tests/integration/test_matrix.py::test_every_cell_has_its_prompts_an_interval_and_the_controls_kept",
    "tests/integration/test_scorers.py::test_exact_ablation_falls_back_to_full_forwards_with_one_warning",
    "tests/integration/test_user_files.py::test_organism_retrain_keeps_the_users_files",
    "tests/integration/test_user_files.py::test_a_ladder_stage_writes_beside_the_users_files_and_keeps_them_on_reruns",
)


def pytest_collection_modifyitems(items):
    """Tiers by folder (TransformerLens's split): ``tests/unit`` (no model), ``tests/integration``
    (the organism or tiny random models), ``tests/acceptance`` (whole commands, notebooks, real
    models, several processes: marked ``slow``). ``pytest -m "not slow"`` is the fast loop."""
    for item in items:
        tier = next((t for t in TIERS if f"/{t}/" in item.path.as_posix()), None)
        if tier is not None:
            item.add_marker(getattr(pytest.mark, tier))
        if tier == "acceptance" or item.nodeid in SLOW or item.nodeid.split("[")[0] in SLOW:
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("reliability") is not None:
            item.user_properties.append(("reliability", True))


def pytest_terminal_summary(terminalreporter):
    """Print how many reliability cases (tests marked ``reliability``, beside the tests of the
    module each exercises) were replayed."""
    outcomes = {}
    for key in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(key, []):
            if ("reliability", True) not in getattr(report, "user_properties", ()):
                continue
            if report.when == "call" or (key != "passed" and report.when == "setup"):
                outcomes[key] = outcomes.get(key, 0) + 1
    if outcomes:
        total = sum(outcomes.values())
        parts = ", ".join(f"{n} {k}" for k, n in outcomes.items())
        terminalreporter.write_line(f"reliability: {total} cases replayed ({parts})")


def hooked_transformer(folder, cls=None):
    """A classic TransformerLens 3 ``HookedTransformer`` (or ``cls``, e.g. SAELens's
    HookedSAETransformer) with the weights of a local Llama folder, built the way a user would:
    config by hand, weights through TransformerLens's own Llama conversion, no hub."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
        from transformer_lens.pretrained.weight_conversions import convert_llama_weights
    except ImportError:
        pytest.skip("HookedTransformer is TransformerLens 3 only (this is TransformerLens 4)")
    hf = AutoModelForCausalLM.from_pretrained(folder)
    c = hf.config
    cfg = HookedTransformerConfig(
        d_model=c.hidden_size,
        d_head=c.hidden_size // c.num_attention_heads,
        n_heads=c.num_attention_heads,
        n_key_value_heads=c.num_key_value_heads,
        d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers,
        n_ctx=c.max_position_embeddings,
        d_vocab=c.vocab_size,
        act_fn="silu",
        normalization_type="RMS",
        final_rms=True,
        eps=c.rms_norm_eps,
        positional_embedding_type="rotary",
        rotary_dim=c.hidden_size // c.num_attention_heads,
        rotary_adjacent_pairs=False,
        gated_mlp=True,
        model_name="organism-hooked",
        original_architecture="LlamaForCausalLM",
        default_prepend_bos=True,
    )
    model = (cls or HookedTransformer)(cfg, tokenizer=AutoTokenizer.from_pretrained(folder))
    model.load_state_dict(convert_llama_weights(hf, cfg), strict=False)
    return model.eval()


@pytest.fixture(scope="session")
def hooked_organism():
    """The organism as a classic HookedTransformer (TransformerLens 3 only)."""
    from tasklens.models import ORGANISM_DIR

    return hooked_transformer(ORGANISM_DIR)


@pytest.fixture(scope="session")
def continent(organism):
    """Eight detection prompts of the built-in task ``continent_of``."""
    from tasklens.tasks.builtin import load_builtin

    return load_builtin("continent_of", "detection").head(8)


@pytest.fixture(scope="session")
def same_grid_model(tmp_path_factory):
    """A random-init Llama with the organism's neuron grid (4 x 512) and other weights."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tasklens.models import ORGANISM_DIR

    folder = tmp_path_factory.mktemp("same_grid")
    tokenizer = AutoTokenizer.from_pretrained(ORGANISM_DIR)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return load_model(str(folder))
