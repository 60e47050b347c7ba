"""Looking at one neuron: vocabulary decoding, top contexts, clamping, neuron pages."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tasklens import Task, clamp, load_builtin
from tasklens.cli import app
from tasklens.data.neurons import NeuronSet
from tasklens.errors import TasklensError
from tasklens.tasks.tokenize import TokenizedTask
from tasklens.views.contexts import sequences, top_contexts
from tasklens.views.page import NeuronPage, neuron_pages, parse_neuron
from tasklens.views.vocab import NeuronVocab, decode_neurons

GRID = (4, 512)
VOID = {"br", "hr", "img", "input", "meta", "link", "col", "area", "base", "wbr", "source"}


def element_tree(fragment: str) -> list[dict]:
    """The elements of an HTML fragment as a browser nests them: per element its tag, class,
    depth and parent's index; a last entry gives the depth left open at the end. ``<div/>`` is
    not self-closing in HTML, so it opens an element like ``<div>``."""
    from html.parser import HTMLParser

    elements: list[dict] = []
    stack: list[int] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            parent = stack[-1] if stack else None
            elements.append(
                {"tag": tag, "class": dict(attrs).get("class"), "depth": len(stack), "parent": parent}
            )
            if tag not in VOID:
                stack.append(len(elements) - 1)

        def handle_startendtag(self, tag, attrs):
            self.handle_starttag(tag, attrs)

        def handle_endtag(self, tag):
            if tag not in VOID:
                assert elements[stack.pop()]["tag"] == tag, f"</{tag}> closes another element"

    Parser().feed(fragment)
    return [*elements, {"tag": None, "class": None, "depth": len(stack), "parent": None}]


def test_output_decoding_equals_the_weights_through_norm_and_unembedding(organism):
    vocab = decode_neurons(organism, "output", k=10)
    hf = organism.original_model
    for layer, index in [(0, 21), (2, 300), (3, 7)]:
        row = hf.model.layers[layer].mlp.down_proj.weight[:, index].detach()  # W_out row, HF layout
        logits = (row * hf.model.norm.weight.detach()) @ hf.lm_head.weight.detach().T
        top = logits.topk(10)
        assert vocab.top_ids[layer, index].tolist() == top.indices.tolist()
        torch.testing.assert_close(vocab.top_values[layer, index], top.values, rtol=1e-5, atol=1e-5)
        assert vocab.bottom_ids[layer, index].tolist() == logits.topk(10, largest=False).indices.tolist()


def test_input_decoding_reads_the_normalised_embedding(organism):
    vocab = decode_neurons(organism, "hook_pre_linear", k=5)
    hf = organism.original_model
    embed = hf.model.embed_tokens.weight.detach()
    normed = hf.model.layers[1].post_attention_layernorm(embed[None])[0].detach()  # the MLP's input norm
    scores = normed @ hf.model.layers[1].mlp.up_proj.weight.detach().T  # [vocab, d_mlp]
    assert vocab.top_ids[1, 42].tolist() == scores[:, 42].topk(5).indices.tolist()


def test_layer_norm_models_are_centred(tiny_model):
    model = tiny_model("gpt2", 2)
    vocab = decode_neurons(model, "output", k=5)
    hf = model.original_model
    row = hf.transformer.h[1].mlp.c_proj.weight[7].detach()  # Conv1D: [d_mlp, d_model]
    logits = ((row - row.mean()) * hf.transformer.ln_f.weight.detach()) @ hf.lm_head.weight.detach().T
    assert vocab.top_ids[1, 7].tolist() == logits.topk(5).indices.tolist()


def test_decoding_a_set_and_saving_it(organism, tmp_path):
    chosen = NeuronSet.from_pairs([(0, 1), (3, 9)], GRID)
    vocab = decode_neurons(organism, "output", k=3, neurons=chosen)
    assert vocab.top_values[1].abs().sum() == 0 and vocab.top_values[3, 9].abs().sum() > 0
    vocab.save(tmp_path / "vocab")
    again = NeuronVocab.load(tmp_path / "vocab")
    assert again.top(3, 9) == vocab.top(3, 9) and again.to_frame([(3, 9)]).index.tolist() == [(3, 9)]
    with pytest.raises(TasklensError, match="side"):
        decode_neurons(organism, "hook_post")


def test_top_contexts_equal_a_brute_force_search(organism):
    task = load_builtin("currency_of", "detection").head(40)
    chosen = NeuronSet.from_pairs([(0, 5), (1, 77), (3, 500)], GRID)
    found = top_contexts(organism, task, chosen, k=6, window=3, batch_size=7)
    tokenized = TokenizedTask.for_model(task, organism)
    for layer, index in chosen.pairs():
        best = []
        for p, a in zip(tokenized.prompt_ids, tokenized.answer_ids, strict=True):
            ids = p + a
            name = f"blocks.{layer}.mlp.hook_post"
            _, cache = organism.run_with_cache(torch.tensor([ids]), names_filter=name)
            acts = cache[name][0, :, index]
            # position 0 is BOS, left out as a centre
            best += [
                (float(v), ids[max(0, t - 3) : t + 4], acts[max(0, t - 3) : t + 4])
                for t, v in enumerate(acts)
                if t > 0
            ]
        best.sort(key=lambda x: -x[0])
        row = found.row(layer, index)
        torch.testing.assert_close(
            found.values[row], torch.tensor([v for v, _, _ in best[:6]]), atol=1e-5, rtol=0
        )
        for slot in range(6):  # prompts sharing a prefix tie: any of the tied contexts will do
            kept = found.windows[row, slot] >= 0
            ids, acts = found.windows[row, slot][kept].tolist(), found.window_values[row, slot][kept]
            same = [b for b in best if abs(b[0] - float(found.values[row, slot])) < 1e-5 and b[1] == ids]
            assert same, f"slot {slot} of L{layer}N{index}: no context with this value and window"
            torch.testing.assert_close(acts, same[0][2], atol=1e-5, rtol=0)
    pairs = zip(tokenized.prompt_ids, tokenized.answer_ids, strict=True)
    assert found.n_tokens == sum(len(p) + len(a) for p, a in pairs)


def test_top_contexts_keep_fewer_contexts_than_k_empty(organism):
    found = top_contexts(organism, ["Paris"], NeuronSet.from_pairs([(0, 5)], GRID), k=4, window=1)
    eligible = len(sequences(organism, ["Paris"])[0]) - 1  # every token but BOS
    assert found.values.shape == (1, min(4, eligible))
    assert torch.isfinite(found.values).all() and (found.windows[..., 1] >= 0).all()


def test_top_contexts_memory_does_not_grow_with_the_source(organism):
    small = top_contexts(organism, ["the capital of France is Paris"] * 3, k=4, window=2)
    large = top_contexts(organism, ["the capital of France is Paris"] * 60, k=4, window=2)
    assert small.values.shape == large.values.shape == (2048, 4)
    assert large.windows.shape == (2048, 4, 5) and large.n_tokens == 20 * small.n_tokens


def test_contexts_from_files(organism, tmp_path):
    (tmp_path / "docs.jsonl").write_text(json.dumps({"text": "Country: Chad. Continent: Africa"}) + "\n")
    (tmp_path / "docs.txt").write_text("Country: Chad. Continent: Africa\n\n")
    a = top_contexts(organism, tmp_path / "docs.jsonl", NeuronSet.from_pairs([(0, 1)], GRID), k=2)
    b = top_contexts(organism, tmp_path / "docs.txt", NeuronSet.from_pairs([(0, 1)], GRID), k=2)
    assert torch.equal(a.values, b.values)
    with pytest.raises(TasklensError, match="does not exist"):
        top_contexts(organism, tmp_path / "missing.txt")


def test_clamping_a_decoded_neuron_raises_its_own_top_token_more_than_a_random_neuron(organism):
    """A last-layer neuron's decoded top token gains probability when the neuron is clamped high;
    random last-layer neurons clamped to the same value raise that token far less."""
    vocab = decode_neurons(organism, "output", k=1)
    layer = 3
    candidates = vocab.top_values[layer, :, 0].topk(8).indices.tolist()
    task = load_builtin("sentiment", "evaluation").head(16)
    batch = next(TokenizedTask.for_model(task, organism).batches(16, with_answers=False))
    last = batch.last_prompt
    rows = torch.arange(batch.size)

    def logprob_of(token: int, neuron: int | None, value: float) -> float:
        if neuron is None:
            logits = organism(batch.tokens)
        else:
            with clamp(organism, NeuronSet.from_pairs([(layer, neuron)], GRID), value):
                logits = organism(batch.tokens)
        return float(logits[rows, last].log_softmax(-1)[:, token].mean())

    generator = torch.Generator().manual_seed(0)
    gains, random_gains = [], []
    with torch.no_grad():
        for neuron in candidates:
            token = int(vocab.top_ids[layer, neuron, 0])
            clean = logprob_of(token, None, 0.0)
            gains.append(logprob_of(token, neuron, 20.0) - clean)
            for other in torch.randint(0, 512, (4,), generator=generator).tolist():
                random_gains.append(logprob_of(token, other, 20.0) - clean)
    gains, random_gains = torch.tensor(gains), torch.tensor(random_gains)
    assert (gains > 1.0).all(), gains
    assert gains.mean() > 3 * random_gains.abs().mean(), (gains, random_gains)


def test_clamping_during_generation_only_at_the_newest_token(organism):
    from tasklens.evaluation.evaluate import greedy_generate

    prompts = TokenizedTask.for_model(load_builtin("addition", "evaluation").head(4), organism).prompt_ids
    vocab = decode_neurons(organism, "output", k=1)
    neuron = int(vocab.top_values[3, :, 0].argmax())
    token = int(vocab.top_ids[3, neuron, 0])
    with clamp(organism, NeuronSet.from_pairs([(3, neuron)], GRID), 1000.0, positions=[-1]):
        steered = greedy_generate(organism, prompts, 3)
    # the clamp acts at every decoding step: every generated token is the neuron's top token
    assert all(ids == [token] * 3 for ids in steered), steered
    assert all(token not in ids for ids in greedy_generate(organism, prompts, 3))


def test_a_neuron_page_puts_the_evidence_together(organism):
    tasks = [load_builtin(n, "evaluation").head(12) for n in ("continent_of", "addition")]
    from tasklens.scoring import ActivationStats

    scores = {t.name: ActivationStats().attribute(organism, t) for t in tasks}
    layer, index, _ = scores["continent_of"].top(1)[0]
    sets = [NeuronSet.from_pairs([(layer, index)], GRID, "mine")]
    page = neuron_pages(organism, [(layer, index)], tasks, scores, sets)[0]
    assert page.scores[0]["rank"] == 1 and page.sets == ["mine"]
    assert len(page.promotes) == 8 and len(page.contexts) == 4 and len(page.ablation) == 2
    text = page.to_text()
    assert f"neuron L{layer}N{index}" in text and "top contexts" in text and "zero-ablating" in text
    fragment = page.to_html()
    assert "<script" not in fragment and "http" not in fragment and "BOS left out" in fragment
    tree = element_tree(fragment)
    contexts = [e for e in tree if e["class"] == "context"]
    assert len(contexts) == 4 and tree[-1]["depth"] == 0  # every element closed
    # siblings: each context is a child of the one .contexts box, none inside another
    boxes = [i for i, e in enumerate(tree) if e["class"] == "contexts"]
    assert len(boxes) == 1 and {e["parent"] for e in contexts} == set(boxes)


def test_neuron_names_and_the_cli(organism):
    assert parse_neuron("3.17") == parse_neuron("L3N17") == (3, 17)
    with pytest.raises(TasklensError, match=r"LAYER\.INDEX"):
        parse_neuron("three")
    result = CliRunner().invoke(app, ["neuron", "L0N21", "-t", "continent_of", "--max-prompts", "8"])
    assert result.exit_code == 0 and "promotes" in result.output, result.output
    result = CliRunner().invoke(app, ["neuron", "9.1", "-t", "continent_of"])
    assert result.exit_code == 2 and "outside" in result.output


def test_a_task_is_a_context_source(organism):
    task = Task.from_lists("t", ["Q: What is 2 + 2? A:"], [" 4"])
    found = top_contexts(organism, task, NeuronSet.from_pairs([(2, 2)], GRID), k=3, window=1)
    assert torch.isfinite(found.values).all()


def one_line_error(result, fragment: str) -> None:
    """Exit 2, one error line, ending the output (after the model's loading bar, if it loaded)."""
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert fragment in lines[-1] and [line for line in lines if "error" in line] == lines[-1:], result.output


@pytest.mark.reliability
@pytest.mark.parametrize("spec", ["²1.3", "1.³", "١.٢"])
def test_neuron_names_take_ascii_digits_only(spec):
    one_line_error(CliRunner().invoke(app, ["neuron", spec]), "LAYER.INDEX")
    for wrong in (spec, "1.", "L1", "1.2.3"):
        with pytest.raises(TasklensError, match=r"LAYER\.INDEX"):
            parse_neuron(wrong)
    assert parse_neuron("l3n17") == parse_neuron(" 3.17 ") == (3, 17)


@pytest.mark.reliability
@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--n-contexts", "-1"], "n_contexts must be a whole number of at least 1, got -1"),
        (["--n-tokens", "0"], "n_tokens must be a whole number of at least 1, got 0"),
        (["--n-tokens", "100000"], "n_tokens=100000 is more than the 2048 tokens in the vocabulary"),
    ],
)
def test_neuron_page_counts_are_checked(organism, option, message):
    result = CliRunner().invoke(app, ["neuron", "0.1", "-t", "addition", "--max-prompts", "2", *option])
    one_line_error(result, message)


@pytest.mark.reliability
def test_a_huge_context_count_shows_what_there_is(organism):
    task = Task.from_lists("t", ["Q: What is 2 + 2? A:"], [" 4"])
    page = neuron_pages(organism, [(0, 1)], [task], n_contexts=10**9)[0]
    tokenized = TokenizedTask.for_model(task, organism)
    n_tokens = len(tokenized.prompt_ids[0]) + len(tokenized.answer_ids[0])
    assert len(page.contexts) == n_tokens - 1  # every token but BOS


@pytest.mark.reliability
def test_control_characters_in_model_text_are_escaped_when_printed():
    page = NeuronPage(
        layer=0,
        index=1,
        model="organism",
        promotes=[("\x1b[2J", 1.0)],
        suppresses=[("\x00", -1.0)],
        contexts=[
            {"value": 2.0, "tokens": ["a\x07", "b\u202e", "\n", "é"], "activations": [0] * 4, "centre": 1}
        ],
    )
    text = page.to_text()
    assert "   2.000: a\\x07[b\\u202e]\\né" in text and "\\x1b[2J" in text and "\\x00" in text
    assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or c == "\u202e" for c in text.replace("\n", ""))


@pytest.mark.reliability
def test_bad_context_sources_are_clear_errors(organism, tmp_path):
    only = NeuronSet.from_pairs([(0, 1)], GRID)
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)))
    (tmp_path / "notext.jsonl").write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    (tmp_path / "broken.jsonl").write_text('{"text": "fine"}\n{"text": \n')
    (tmp_path / "folder.txt").mkdir()
    cases = [
        ("binary.txt", r"'.*binary\.txt' is not UTF-8 text \(byte 128\)"),
        ("notext.jsonl", r'Line 2 of .*notext\.jsonl.* has no "text" string'),
        ("broken.jsonl", r"Line 2 of .*broken\.jsonl.* is not JSON"),
        ("folder.txt", r"'.*folder\.txt' is a folder; give a \.txt or \.jsonl file"),
    ]
    for name, message in cases:
        with pytest.raises(TasklensError, match=message):
            top_contexts(organism, tmp_path / name, only)
    for k in (-1, 0):
        with pytest.raises(TasklensError, match=f"k must be a whole number of at least 1, got {k}"):
            top_contexts(organism, ["some text"], only, k=k)
    with pytest.raises(TasklensError, match="window must be"):
        top_contexts(organism, ["some text"], only, window=-2)
    with pytest.raises(TasklensError, match="k=5000 is more than the 2048 tokens"):
        decode_neurons(organism, k=5000, neurons=only)


@pytest.mark.reliability
def test_the_views_package_exports_what_the_readme_names():
    import tasklens.views

    assert tasklens.views.top_contexts is top_contexts and tasklens.views.decode_neurons is decode_neurons
    assert tasklens.views.neuron_pages is neuron_pages


def test_top_contexts_leave_out_bos_unless_asked(organism, tmp_path):
    from tasklens.views.contexts import PAD, TopContexts

    task = load_builtin("continent_of", "evaluation").head(24)
    special = torch.tensor(sorted(organism.tokenizer.all_special_ids))
    found = top_contexts(organism, task, k=4, window=2)
    assert torch.isfinite(found.values).all() and not found.include_special
    # window 2: index 1 is the token before the centre, PAD only when the centre is position 0
    assert not (found.windows[:, :, 1] == PAD).any()
    assert not torch.isin(found.windows[:, :, 2], special).any()
    asked = top_contexts(organism, task, k=4, window=2, include_special=True)
    at_start = asked.windows[:, :, 1] == PAD
    assert at_start.any() and (asked.windows[:, :, 2][at_start] == organism.tokenizer.bos_token_id).all()
    # L3N86 fires hardest at BOS, with one value in every prompt (the same state: an attention sink)
    bos_values = asked.values[asked.row(3, 86)]
    assert at_start[asked.row(3, 86)].all() and bos_values.max() - bos_values.min() < 1e-3
    assert found.values[found.row(3, 86)].max() < bos_values.min() / 2
    found.save(tmp_path / "contexts")
    assert not TopContexts.load(tmp_path / "contexts").include_special


def test_pages_ask_the_organism_in_its_own_form(organism):
    from tasklens.views.page import page_tasks

    tasks = page_tasks(organism, ["continent_of", "addition"], "evaluation", 12)
    for task, name in zip(tasks, ["continent_of", "addition"], strict=True):
        assert task.prompts == load_builtin(name, "evaluation").sample(12).prompts
        assert "known_by" not in task.meta and "style" not in task.meta
    page = neuron_pages(organism, [(3, 86)], tasks[:1])[0]
    assert [a["n_prompts"] for a in page.ablation] == [12] and not page.ablation[0]["known"]
    assert "12 prompts" in page.to_text() and "known facts" not in page.to_text()


def test_pages_ask_a_pretrained_model_the_facts_it_knows_in_natural_form(tiny_model, monkeypatch, tmp_path):
    """A pretrained model's built-in tasks go through `load_for_model` (natural form, known facts
    only); task files stay as written. The random model knows nothing, so the known filter is
    replaced by one that keeps the first five prompts."""
    import dataclasses

    import tasklens.evaluation.known as known
    from tasklens.models import ModelInfo
    from tasklens.views.page import page_tasks

    model = tiny_model("llama", 2)
    calls = []

    def spy(*args, **kwargs):
        calls.append((args[1:], kwargs))
        return known.load_for_model(*args, **kwargs)

    def knows_first_five(model, task, batch_size=32, need=None, seed=0):
        meta = {**task.meta, "known_by": ModelInfo.of(model).name, "n_known": 5, "n_asked": len(task)}
        return dataclasses.replace(task.head(5), meta=meta)

    monkeypatch.setattr("tasklens.views.page.load_for_model", spy)
    monkeypatch.setattr(known, "known_by", knows_first_five)
    mine = tmp_path / "mine.jsonl"
    mine.write_text("".join(json.dumps({"prompt": f"Q: {i}?", "answer": " A"}) + "\n" for i in range(3)))
    tasks = page_tasks(model, ["continent_of", str(mine)], "evaluation", 8)
    assert calls == [(("continent_of", "evaluation"), {"asked": 32, "n": 8})]
    assert tasks[0].meta["style"] == "natural" and "is a country in" in tasks[0].prompts[0]
    assert len(tasks[0]) == 5 and tasks[1].prompts == ("Q: 0?", "Q: 1?", "Q: 2?")
    page = neuron_pages(model, [(1, 3)], tasks)[0]
    assert [(a["n_prompts"], a["known"]) for a in page.ablation] == [(5, True), (3, False)]
    text = page.to_text()
    assert "5 known facts" in text and "3 prompts" in text
    assert f"known facts: prompts {page.model} answers correctly in its own natural form" in text
    assert "known facts" in page.to_html()

    # the command line takes the same path and prints the count
    monkeypatch.setattr("tasklens.models.load_model", lambda *args, **kwargs: model)
    result = CliRunner().invoke(app, ["neuron", "1.3", "--model", "tiny", "-t", "continent_of"])
    assert result.exit_code == 0, result.output
    assert "continent_of" in result.output and "5 known facts" in result.output
    assert calls[-1] == (("continent_of", "evaluation"), {"asked": 160, "n": 40})


def test_a_task_the_model_knows_none_of_is_left_out_only_when_asked(tiny_model):
    from tasklens.errors import TasklensWarning
    from tasklens.views.page import page_tasks

    model = tiny_model("llama", 2)  # random: answers no prompt correctly
    with pytest.raises(TasklensError, match="answers none of the 8 prompts"):
        page_tasks(model, ["continent_of"], "evaluation", 2)
    with pytest.warns(TasklensWarning, match="continent_of left out of the page"):
        assert page_tasks(model, ["continent_of"], "evaluation", 2, skip_unknown=True) == []


@pytest.mark.reliability
def test_a_file_given_as_a_run_folder_is_named_a_file(tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("not a run")
    for args in (["report", str(file)], ["neuron", "0.1", "--run", str(file)]):
        one_line_error(CliRunner().invoke(app, args), "is a file, not a run folder")


# --- replayed review cases: the report's token views -----------------------------------------------


@pytest.mark.reliability
def test_the_report_shows_the_tokens_that_were_scored_escaped(organism):
    import html
    import re

    from tasklens.runs.report import top_neuron_views
    from tasklens.scoring import ActivationStats
    from tasklens.tasks.tokenize import TokenizedTask

    task = Task.from_lists("html", ["Q: is <b>this</b> bold? A:"], [" <i>no</i>"])
    scores = ActivationStats().attribute(organism, task)
    text, _ = top_neuron_views(organism, task, scores, n_neurons=2, n_prompts=1)
    tokenized = TokenizedTask.for_model(task, organism)
    ids = tokenized.prompt_ids[0] + tokenized.answer_ids[0]
    match = re.search(r'\{"tokens": (\[\[.*?\]\])', text)
    assert match, "no tokens in the view"
    tokens = json.loads(match.group(1))[0]
    # exactly the scored sequence (BOS, prompt, answer), each token escaped for HTML
    assert tokens == [html.escape(organism.tokenizer.decode([i])) for i in ids]
    assert tokens[0] == "&lt;s&gt;" and "&lt;" in tokens and not any("<" in t for t in tokens)
