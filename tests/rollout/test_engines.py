"""Rollout engines: the HF engine is `generate`; samples from another engine take generate's exact
layout; the vLLM engine's glue (sampling parameters, outputs, weight sync with LoRA merged) and the
PPO loop's use of an engine without exact log-probs (recomputed) and with its own weights (synced
after every update, and on resume). The vLLM engine itself runs in the `gpu` tests at the end."""

import copy
import json
import subprocess
import sys
import types
from contextlib import nullcontext
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.algos.logprobs import logprobs_from_logits
from rlhfkit.config.base import ConfigError, load_config
from rlhfkit.config.common import LoraConfig, TinyModelConfig
from rlhfkit.config.ppo import PPOConfig
from rlhfkit.data.collate import left_pad
from rlhfkit.models.loading import apply_lora, load_causal_lm, load_tokenizer, save_hf
from rlhfkit.models.policy import PolicyWithValueHead
from rlhfkit.models.text import encode_prompt
from rlhfkit.models.tiny import build_tiny_causal_lm
from rlhfkit.rollout import vllm_engine
from rlhfkit.rollout.engines import HFEngine, SamplingSettings
from rlhfkit.rollout.generate import Rollout, generate, rollout_from_samples
from rlhfkit.rollout.vllm_engine import VLLMEngine, merged_named_weights, samples_from_outputs, sampling_kwargs
from rlhfkit.train.ppo import train_ppo
from rlhfkit.train.ppo_setup import build_rollout_engine
from rlhfkit.rundir import read_metrics

NS = types.SimpleNamespace
ROLLOUT_FIELDS = ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "logprobs", "finished")


def _assert_same_rollout(a: Rollout, b: Rollout) -> None:
    for name in ROLLOUT_FIELDS:
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0, msg=name)


@pytest.fixture(scope="module")
def small(task):
    """(model, tokenizer, prompts): a one-layer tiny Llama and six prompts."""
    model, tok = build_tiny_causal_lm(TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, vocab_size=256,
                                                      tokenizer_lines=300), task.corpus(300), seed=0)
    return model.eval(), tok, [encode_prompt(tok, p.prompt) for p in task.prompts("eval", 6)]


@pytest.fixture(scope="module")
def model_dir(task, tmp_path_factory):
    """A tiny untrained Llama saved as a Hugging Face folder (head size 64, which vLLM's attention
    kernels take); PPO mechanics need no SFT."""
    model, tok = build_tiny_causal_lm(TinyModelConfig(hidden_size=128, num_layers=2, num_heads=2, vocab_size=512,
                                                      tokenizer_lines=1500), task.corpus(1500), seed=0)
    return save_hf(model, tok, tmp_path_factory.mktemp("tiny-policy"))


def _settings(tok, **overrides) -> SamplingSettings:
    values = dict(pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, max_new_tokens=12, temperature=0.7, top_p=1.0,
                  top_k=0)
    return SamplingSettings(**{**values, **overrides})


# ------------------------------------------------------------------------------------ layout
def test_hf_engine_is_generate(small):
    model, tok, prompts = small
    torch.manual_seed(5)
    expected = generate(model, prompts, **asdict(_settings(tok)))
    torch.manual_seed(5)
    _assert_same_rollout(HFEngine(model, _settings(tok), nullcontext).generate(prompts), expected)


def test_rollout_from_samples_by_hand():
    eos, pad = 2, 0
    roll = rollout_from_samples([[5, 6, 7], [8]], [[2, 9, 9], [12, 13, 14]], [[-0.5, -7.0, -7.0], [-1.0, -2.0, -3.0]],
                                pad_id=pad, eos_id=eos)
    assert roll.prompt_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert roll.prompt_mask.tolist() == [[True, True, True], [False, False, True]]
    assert roll.response_ids.tolist() == [[2, 0, 0], [12, 13, 14]]  # cut after the EOS, then padded
    assert roll.response_mask.tolist() == [[True, False, False], [True, True, True]]
    assert roll.logprobs.tolist() == [[-0.5, 0.0, 0.0], [-1.0, -2.0, -3.0]]
    assert roll.finished.tolist() == [True, False]
    with pytest.raises(ValueError, match="log-prob"):
        rollout_from_samples([[5]], [[9, 9]], [[-1.0]], pad_id=pad, eos_id=eos)


def test_samples_of_generate_rebuild_its_rollout(small):
    """The engine-agnostic builder reproduces `generate`'s own Rollout from its token lists."""
    model, tok, prompts = small
    torch.manual_seed(3)
    roll = generate(model, prompts, **asdict(_settings(tok)))
    lengths = roll.response_mask.sum(1).tolist()
    responses = [row[:n] for row, n in zip(roll.response_ids.tolist(), lengths)]
    logprobs = [row[:n] for row, n in zip(roll.logprobs.tolist(), lengths)]
    rebuilt = rollout_from_samples(prompts, responses, logprobs, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id)
    _assert_same_rollout(rebuilt, roll)


def test_samples_from_outputs_take_the_sampled_tokens_logprob():
    def step(token, logprob):  # the sampled token plus a more likely one (logprobs=1 would return both)
        return {token: NS(logprob=logprob), 999: NS(logprob=-0.01)}

    outputs = [NS(outputs=[NS(token_ids=(4, 2), logprobs=[step(4, -1.5), step(2, -0.25)])]),
               NS(outputs=[NS(token_ids=[7], logprobs=[step(7, -3.0)])])]
    assert samples_from_outputs(outputs) == ([[4, 2], [7]], [[-1.5, -0.25], [-3.0]])


def test_vllm_sampling_matches_generate_semantics():
    s = SamplingSettings(pad_id=0, eos_id=1, max_new_tokens=48, temperature=0.7, top_p=0.9, top_k=0)
    assert sampling_kwargs(s) == dict(n=1, temperature=0.7, top_p=0.9, top_k=-1, max_tokens=48, logprobs=0,
                                      stop_token_ids=[1], ignore_eos=True, detokenize=False)
    assert sampling_kwargs(SamplingSettings(**{**asdict(s), "top_k": 20}))["top_k"] == 20


# ------------------------------------------------------------------------------------ config and errors
def _ppo(*extra):
    return load_config(PPOConfig, None, ["policy.path=unused", "reward.source=gold", *extra])


def test_engine_config():
    assert _ppo().rollout.engine == "hf"
    cfg = _ppo("rollout.engine=vllm", "rollout.vllm.gpu_memory_utilization=0.5", "rollout.vllm.dtype=float32")
    assert (cfg.rollout.vllm.gpu_memory_utilization, cfg.rollout.vllm.dtype) == (0.5, "float32")
    with pytest.raises(ConfigError, match=r"rollout\.engine.*'hf'.*'vllm'"):
        _ppo("rollout.engine=sglang")
    with pytest.raises(ConfigError, match=r"rollout\.vllm\.gpu_memory_utilization"):
        _ppo("rollout.vllm.gpu_memory_utilization=1.5")


def test_vllm_engine_without_cuda_or_vllm_says_what_to_do(monkeypatch):
    message = r"rollout.engine=vllm needs a CUDA GPU and `pip install rlhfkit\[vllm\]`; use rollout.engine=hf on CPU"
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # the engine sets it; restored after the test
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=message):
        VLLMEngine("unused", None, gpu_memory_utilization=0.3, dtype="bfloat16", enforce_eager=False,
                   max_model_len=64, seed=0, device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed
    with pytest.raises(RuntimeError, match=message):
        vllm_engine.import_vllm()
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    sys.modules["vllm"].__version__ = "0.9.2"
    with pytest.raises(RuntimeError, match=r"needs vllm>=0\.10\.2, found 0\.9\.2"):
        vllm_engine.import_vllm()


def test_vllm_engine_refuses_several_processes():
    accelerator = NS(num_processes=2, autocast=nullcontext, device="cpu")
    with pytest.raises(ValueError, match="rollout.engine=vllm runs in one process"):
        build_rollout_engine(_ppo("rollout.engine=vllm"), None, NS(pad_token_id=0, eos_token_id=1), accelerator)


# ------------------------------------------------------------------------------------ weight sync
def _lora_policy(model, seed=0):
    """`model` with LoRA adapters whose B is random, so the adapters change the outputs."""
    lm = apply_lora(copy.deepcopy(model), LoraConfig(enabled=True, r=4))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in lm.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return lm


def test_merged_weights_carry_hf_names_and_the_adapters(small):
    model, tok, prompts = small
    assert list(merged_named_weights(model)) == list(model.named_parameters())  # no adapters: as is
    lm = _lora_policy(model)
    before = {name: p.detach().clone() for name, p in lm.named_parameters()}
    plain = copy.deepcopy(model)
    plain.load_state_dict(dict(merged_named_weights(lm)), strict=True)  # exactly the HF names
    ids, mask = left_pad(prompts, tok.pad_token_id)
    with torch.no_grad():
        expected = lm(input_ids=ids, attention_mask=mask.long()).logits
        got = plain(input_ids=ids, attention_mask=mask.long()).logits
        unmerged = model(input_ids=ids, attention_mask=mask.long()).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (unmerged - expected).abs().max() > 0.1  # the adapters matter here
    for name, p in lm.named_parameters():  # the training model is untouched
        assert torch.equal(p, before[name]), name


def _fake_vllm(calls: dict, receiver) -> types.ModuleType:
    """A stand-in `vllm` module recording what the engine asks of it; `generate` answers each
    prompt with [last prompt token + 1, EOS] (even rows) or three tokens without EOS (odd rows)."""

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LLM:
        def __init__(self, model, **kwargs):
            calls["llm"] = dict(model=model, **kwargs)

        def generate(self, prompts, params, use_tqdm):
            calls["generate"] = (prompts, [p.kwargs for p in params])
            eos = params[0].kwargs["stop_token_ids"][0]
            outputs = []
            for i, prompt in enumerate(prompts):
                tokens = [prompt["prompt_token_ids"][-1] + 1, eos] if i % 2 == 0 else [3, 3, 3]
                steps = [{t: NS(logprob=-0.5 - t / 100)} for t in tokens]
                outputs.append(NS(outputs=[NS(token_ids=tokens, logprobs=steps)]))
            return outputs

        def apply_model(self, fn):
            calls["order"].append("apply_model")
            return [fn(receiver)]

        def reset_prefix_cache(self):
            calls["order"].append("reset_prefix_cache")

    module = types.ModuleType("vllm")
    module.__version__, module.LLM, module.SamplingParams = "0.11.0", LLM, SamplingParams
    return module


def test_vllm_engine_glue_with_a_stand_in_vllm(small, monkeypatch):
    model, tok, prompts = small
    vllm_copy = copy.deepcopy(model)  # the engine's own weights
    receiver = NS(load_weights=lambda weights: vllm_copy.load_state_dict(dict(weights), strict=True))
    calls = {"order": []}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "vllm", _fake_vllm(calls, receiver))
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # restored after the test
    settings = _settings(tok)
    engine = VLLMEngine("/models/policy", settings, gpu_memory_utilization=0.3, dtype="bfloat16", enforce_eager=True,
                        max_model_len=112, seed=7, device="cpu")
    assert calls["llm"] == dict(model="/models/policy", dtype="bfloat16", gpu_memory_utilization=0.3,
                                enforce_eager=True, max_model_len=112, seed=7, tensor_parallel_size=1,
                                logprobs_mode="processed_logprobs")
    assert vllm_engine.os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"

    torch.manual_seed(0)
    roll = engine.generate(prompts)
    sent, params = calls["generate"]
    assert sent == [{"prompt_token_ids": p} for p in prompts]
    seeds = [p.pop("seed") for p in params]
    assert all(p == sampling_kwargs(settings) for p in params) and len(set(seeds)) == len(prompts)
    torch.manual_seed(0)
    engine.generate(prompts)
    assert [p["seed"] for p in calls["generate"][1]] == seeds  # seeded by torch's RNG: resumable
    eos = tok.eos_token_id
    responses = [[p[-1] + 1, eos] if i % 2 == 0 else [3, 3, 3] for i, p in enumerate(prompts)]
    expected = rollout_from_samples(prompts, responses, [[-0.5 - t / 100 for t in r] for r in responses],
                                    pad_id=tok.pad_token_id, eos_id=eos)
    _assert_same_rollout(roll, expected)

    lm = _lora_policy(model, seed=1)
    engine.sync_weights(lm)
    assert calls["order"] == ["apply_model", "reset_prefix_cache"]  # no stale KV blocks after a sync
    merged = dict(merged_named_weights(lm))
    for name, tensor in vllm_copy.state_dict().items():
        assert torch.equal(tensor, merged[name]), name


# ------------------------------------------------------------------------------------ the PPO loop
class CopyEngine:
    """Stands in for the vLLM engine on CPU: HF `generate` on its own copy of the weights (stale
    until synced) with deliberately wrong behaviour log-probs, which the loop must recompute."""

    exact_logprobs = False
    events: list[str] = []
    last = None

    def __init__(self, model_path, sampling, **engine_args):
        self.lm, self.sampling = load_causal_lm(model_path).eval(), sampling
        CopyEngine.last = self

    def generate(self, prompts):
        self.events.append("generate")
        roll = generate(self.lm, prompts, **asdict(self.sampling))
        roll.logprobs = torch.where(roll.response_mask, -1.0, 0.0)
        return roll

    def sync_weights(self, lm):
        self.events.append("sync")
        self.lm.load_state_dict(dict(merged_named_weights(lm)), strict=True)


def test_loop_recomputes_old_logprobs_and_syncs_after_every_update(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(vllm_engine, "VLLMEngine", CopyEngine)
    CopyEngine.events = []
    args = [f"policy.path={model_dir}", "reward.source=gold", "rollout.engine=vllm", "advantage=rloo",
            "rollout.group_size=2", "max_steps=2", "rollout_batch_size=8", "minibatch_size=4", "microbatch_size=2",
            "ppo_epochs=2", "rollout.max_new_tokens=12", "data.n_train_prompts=64", "data.n_eval_prompts=4",
            "run.save_every=1", "run.progress=false", "optim.lr=3e-3", f"run.out_dir={tmp_path}"]
    assert train_ppo(load_config(PPOConfig, None, [*args, "run.stop_after_steps=1"])) == {"stopped_at_step": 1}
    # Fresh run: SFT evaluation, step 1's rollout, the sync after its update.
    assert CopyEngine.events == ["generate", "generate", "sync"]
    CopyEngine.events = []
    train_ppo(load_config(PPOConfig, None, args))
    # Resumed run: the new engine loads the checkpoint's weights before sampling step 2.
    assert CopyEngine.events == ["sync", "generate", "sync", "generate"]
    rows = read_metrics(tmp_path)
    assert [row["step"] for row in rows] == [1, 2] and "time/sync" in rows[0]
    for row in rows:  # the wrong behaviour log-probs (−1) were replaced by the policy's: ratio 1
        assert row["ppo/first_ratio_dev"] < 1e-5
    final = load_file(str(tmp_path / "model" / "model.safetensors"))
    for name, tensor in CopyEngine.last.lm.state_dict().items():
        assert torch.equal(tensor, final[name]), name  # the engine samples from the trained policy


# ------------------------------------------------------------------------------------ on a GPU
def _vllm_or_skip():
    if not torch.cuda.is_available():
        pytest.skip("rollout.engine=vllm runs on CUDA only; no CUDA device here")
    pytest.importorskip("vllm", reason="vLLM is not installed (`pip install rlhfkit[vllm]`)")


def _forward_logprobs(lm, roll: Rollout, temperature: float) -> torch.Tensor:
    ids, mask = roll.sequences()
    with torch.no_grad():
        logits = PolicyWithValueHead(lm, False)(ids, mask, roll.response_ids.shape[1]).logits
    return logprobs_from_logits(logits.float(), roll.response_ids, temperature)


def _gap(roll: Rollout, logprobs: torch.Tensor) -> float:
    return float((roll.logprobs - logprobs).abs()[roll.response_mask].mean())


@pytest.mark.gpu
def test_vllm_samples_from_synced_weights(model_dir, task):
    """vLLM's log-probs (processed: ÷ T) match the HF forward of the weights it holds: the SFT
    folder's, then, after a sync, a LoRA policy's with the adapters merged. bf16 engine: the
    tolerance is bf16 rounding over two layers, against a gap of nats for stale weights."""
    _vllm_or_skip()
    base = load_causal_lm(model_dir).cuda().eval()
    tok = load_tokenizer(model_dir)
    prompts = [encode_prompt(tok, p.prompt) for p in task.prompts("eval", 16)]
    engine = VLLMEngine(str(model_dir), _settings(tok, max_new_tokens=16), gpu_memory_utilization=0.25,
                        dtype="bfloat16", enforce_eager=True, max_model_len=128, seed=0, device="cuda")
    torch.manual_seed(0)
    before = engine.generate(prompts)
    assert torch.equal(before.prompt_ids.cpu(), left_pad(prompts, tok.pad_token_id)[0])
    lengths = before.response_mask.sum(1)
    last = before.response_ids.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)
    assert torch.equal(before.finished, last == tok.eos_token_id)
    assert _gap(before, _forward_logprobs(base, before, 0.7)) < 0.05

    policy = _lora_policy(base, seed=2).eval()  # PEFT puts the adapters on the base weights' device
    engine.sync_weights(policy)
    torch.manual_seed(0)
    after = engine.generate(prompts)
    synced, stale = _gap(after, _forward_logprobs(policy, after, 0.7)), _gap(after, _forward_logprobs(base, after, 0.7))
    assert synced < 0.05 and stale > 10 * synced, (synced, stale)


@pytest.mark.gpu
def test_two_ppo_steps_with_the_vllm_engine(model_dir, tmp_path):
    """Two PPO steps, engine in a fresh process (its GPU memory is released when it ends)."""
    _vllm_or_skip()
    args = [f"policy.path={model_dir}", "reward.source=gold", "rollout.engine=vllm",
            "rollout.vllm.gpu_memory_utilization=0.25", "rollout.vllm.enforce_eager=true", "max_steps=2",
            "rollout_batch_size=8", "minibatch_size=4", "microbatch_size=4", "ppo_epochs=2",
            "rollout.max_new_tokens=16", "data.n_train_prompts=64", "data.n_eval_prompts=4", "run.progress=false",
            f"run.out_dir={tmp_path}"]
    result = subprocess.run([sys.executable, "-m", "rlhfkit.cli", "ppo", *args], capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = read_metrics(tmp_path)
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:
        # Old log-probs recomputed by the fp32 training forward; GPU GEMMs pick kernels by batch
        # shape, so the ratio is 1 up to fp32 rounding, not bit-exactly.
        assert row["ppo/first_ratio_dev"] < 1e-4 and row["response/length"] > 0
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 2
