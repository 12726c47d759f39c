"""The largest attention logit of Hugging Face models, measured by the collector on check steps,
against transformers' own attention computing it (its eager kernel, spied on)."""

from __future__ import annotations

import sys

import pytest
import torch

from tests import needs

needs.module("transformers")
import transformers  # noqa: E402

import collector  # noqa: E402
from collector.attention import AttentionLogitMax, attention_modules, module_logit_max  # noqa: E402
from storage import Database, runs, stats  # noqa: E402

VOCAB, SEQ = 64, 12
SHAPE = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # grouped-query attention
    "max_position_embeddings": 64,
    "tie_word_embeddings": False,
}
MEASURED = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "MixtralForCausalLM",
    "Qwen2ForCausalLM",
    "GemmaForCausalLM",
    "GraniteForCausalLM",
    "CohereForCausalLM",  # its own rotary layout: interleaved pairs
    "Starcoder2ForCausalLM",
    "GPT2LMHeadModel",  # one fused c_attn projection, learned positions
    "Phi3ForCausalLM",  # one fused qkv_proj
)
TOKEN_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}  # Phi-3's are past VOCAB


def _model(architecture: str, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    if architecture == "GPT2LMHeadModel":
        config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4)
    else:
        family = architecture.removesuffix("ForCausalLM")
        config = getattr(transformers, f"{family}Config")(**SHAPE, **TOKEN_IDS, **extra)
    config._attn_implementation = "eager"  # the kernel whose scores the spy reads
    return getattr(transformers, architecture)(config)


class _EagerSpy:
    """Wraps the eager attention kernel of a model's modelling file and keeps the largest
    ``|q·k| × scaling`` of every call since ``clear()``: what the collector must report."""

    def __init__(self, model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch):
        self.file = sys.modules[type(model).__module__]
        self.original = self.file.eager_attention_forward
        self.maxima: list[float] = []
        monkeypatch.setattr(self.file, "eager_attention_forward", self)

    def __call__(self, module, query, key, value, attention_mask, scaling, **kwargs):  # noqa: ANN001
        repeat = getattr(module, "num_key_value_groups", 1)  # grouped-query attention
        keys = self.file.repeat_kv(key, repeat) if repeat > 1 else key
        scores = query.float() @ keys.float().transpose(-2, -1)
        self.maxima.append(float(scores.detach().abs().amax()) * scaling)
        return self.original(module, query, key, value, attention_mask, scaling=scaling, **kwargs)


def _train(model, monitor, spy: _EagerSpy, steps: int) -> dict[int, float]:
    """A few real optimizer steps; the kernel's largest logit of each step's forward pass."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    gen = torch.Generator().manual_seed(1)
    seen = {}
    for step in range(steps):
        ids = torch.randint(0, VOCAB, (3, SEQ), generator=gen)
        spy.maxima.clear()
        loss = model(input_ids=ids, labels=ids).loss
        seen[step] = max(spy.maxima)
        loss.backward()
        monitor.log(step, loss=loss)
        opt.step()
        opt.zero_grad()
    monitor.close()
    return seen


def _stored(url: str, run: str) -> dict[int, float]:
    db = Database(url)
    series = stats.scalar_series(db, runs.find_run(db, run).id, ["attn_logit_max"])
    return {p.step: p.value for p in series}


@pytest.mark.parametrize("architecture", MEASURED)
def test_the_largest_attention_logit_is_stored_on_check_steps(
    architecture, sqlite_url, tmp_path, monkeypatch
):
    model = _model(architecture)
    assert len(attention_modules(model)) == SHAPE["num_hidden_layers"]
    spy = _EagerSpy(model, monkeypatch)
    monitor = collector.watch(model, run=architecture, db=sqlite_url, every=2, spool_dir=tmp_path)
    seen = _train(model, monitor, spy, steps=5)
    assert monitor.errors == 0
    stored = _stored(sqlite_url, architecture)
    assert stored.keys() == {0, 2, 4}
    for step, value in stored.items():
        assert value == pytest.approx(seen[step], rel=1e-5)
    assert stored[4] != pytest.approx(stored[0], rel=1e-3)  # it follows the training


def test_a_rotary_embedding_on_part_of_each_head_inside_the_models_own_function(
    sqlite_url, tmp_path, monkeypatch
):
    model = _model("Phi3ForCausalLM", partial_rotary_factor=0.5)  # as Phi-4-mini
    spy = _EagerSpy(model, monkeypatch)
    monitor = collector.watch(model, run="partial", db=sqlite_url, every=2, spool_dir=tmp_path)
    seen = _train(model, monitor, spy, steps=3)
    stored = _stored(sqlite_url, "partial")
    assert stored.keys() == {0, 2}
    for step, value in stored.items():
        assert value == pytest.approx(seen[step], rel=1e-5)


def test_lora_wrapped_projections_are_measured_too(sqlite_url, tmp_path, monkeypatch):
    needs.module("peft")
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        _model("LlamaForCausalLM"), LoraConfig(r=4, target_modules=["q_proj", "k_proj"])
    )
    assert len(attention_modules(model)) == SHAPE["num_hidden_layers"]
    spy = _EagerSpy(model.get_base_model(), monkeypatch)
    monitor = collector.watch(model, run="lora", db=sqlite_url, every=2, spool_dir=tmp_path)
    seen = _train(model, monitor, spy, steps=5)
    assert monitor.errors == 0
    stored = _stored(sqlite_url, "lora")
    assert stored.keys() == {0, 2, 4}
    for step, value in stored.items():
        assert value == pytest.approx(seen[step], rel=1e-5)


def test_a_long_sequence_is_measured_in_chunks_and_a_large_batch_on_its_first_sequences():
    model = _model("LlamaForCausalLM")
    attention = attention_modules(model)[0]
    hidden = torch.randn(4, SEQ, SHAPE["hidden_size"])
    rotary = model.model.rotary_emb(hidden, torch.arange(SEQ).unsqueeze(0))

    def largest(rows: slice, budget: int | None = None) -> float:
        q, k = attention.q_proj(hidden[rows]), attention.k_proj(hidden[rows])
        extra = {} if budget is None else {"budget": budget}
        return float(module_logit_max(attention, q, k, rotary, **extra))

    each = [largest(slice(i, i + 1)) for i in range(4)]
    assert largest(slice(None)) == pytest.approx(max(each), rel=1e-6)
    one_sequence = 4 * SEQ * SEQ  # heads × tokens × tokens: the budget takes one, in one go
    assert largest(slice(None), one_sequence) == pytest.approx(each[0], rel=1e-6)
    assert largest(slice(None), 4 * SEQ) == pytest.approx(each[0], rel=1e-6)  # a query at a time


def test_models_it_cannot_measure_are_left_alone(sqlite_url, tmp_path):
    others = {
        "qk-norm": _model("Qwen3ForCausalLM", head_dim=16),
        "soft-capped logits": _model("Gemma2ForCausalLM"),
        "rotary on part of each head": _model("PhiForCausalLM"),
        "a rotary function of its own kind": transformers.GPTJForCausalLM(
            transformers.GPTJConfig(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, rotary_dim=16)
        ),
        "other fused projections": transformers.GPTNeoXForCausalLM(
            transformers.GPTNeoXConfig(
                vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2
            )
        ),
    }
    assert {name: attention_modules(m) for name, m in others.items()} == dict.fromkeys(others, [])
    for name, model in others.items():
        monitor = collector.watch(model, run=name, db=sqlite_url, every=1, spool_dir=tmp_path)
        ids = torch.randint(0, VOCAB, (2, SEQ))
        model(input_ids=ids, labels=ids).loss.backward()
        monitor.log(0, loss=1.0)
        monitor.close()
        assert monitor.errors == 0 and _stored(sqlite_url, name) == {}


def test_a_value_the_loop_logs_wins_and_it_can_be_turned_off(sqlite_url, tmp_path):
    for name, kwargs, logged in (("own", {}, {"attn_logit_max": 123.0}), ("off", {}, {})):
        model = _model("LlamaForCausalLM")
        if name == "off":
            kwargs = {"attention_logits": False}
        monitor = collector.watch(
            model, run=name, db=sqlite_url, every=1, spool_dir=tmp_path, **kwargs
        )
        ids = torch.randint(0, VOCAB, (2, SEQ))
        model(input_ids=ids, labels=ids).loss.backward()
        monitor.log(0, loss=1.0, **logged)
        monitor.close()
    assert _stored(sqlite_url, "own") == {0: 123.0}
    assert _stored(sqlite_url, "off") == {}


def test_a_module_that_cannot_be_measured_is_logged_once_and_training_goes_on(caplog):
    model = _model("LlamaForCausalLM")
    probe = AttentionLogitMax(attention_modules(model))
    attention = probe.modules[0]
    hidden = torch.randn(2, SEQ, SHAPE["hidden_size"])
    for _ in range(2):
        probe.arm()
        with pytest.raises(TypeError):  # the module's own forward fails without rotary inputs
            attention(hidden_states=hidden, position_embeddings=None, attention_mask=None)
        assert probe.take() is None
    assert [r.message for r in caplog.records].count(
        "tripwire: cannot measure the attention logits of LlamaAttention "
        "(no rotary embedding passed to it); left out"
    ) == 1
