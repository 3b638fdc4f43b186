"""SFT learns the task, resumes exactly, and runs data-parallel with the same loss curve."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from rlhfkit.config.base import load_config
from rlhfkit.config.sft import SFTConfig
from rlhfkit.rundir import read_metrics
from rlhfkit.train.sft import train_sft

TINY = ["model.tiny.hidden_size=64", "model.tiny.num_layers=2", "model.tiny.vocab_size=512",
        "model.tiny.tokenizer_lines=1500", "run.progress=false"]


def _cfg(out, *extra):
    return load_config(SFTConfig, None, TINY + [f"run.out_dir={out}", *extra])


def _weights(run_dir):
    return load_file(str(run_dir / "model" / "model.safetensors"))


def test_sft_learns_the_task(tmp_path):
    summary = train_sft(_cfg(tmp_path / "sft", "data.n_train=1600", "data.n_eval=128", "epochs=3",
                             "eval.n_sample_prompts=96", "run.eval_every=1000"))
    assert summary["eval_loss"] < 0.75 * summary["unigram_loss"], summary
    assert summary["eval_loss"] < summary["eval_loss_before"] - 1.0
    assert summary["gold_reward_after"] > summary["gold_reward_before"] + 0.5, summary
    saved = json.loads((tmp_path / "sft" / "summary.json").read_text())
    for key in ("eval_loss", "unigram_loss", "gold_reward_before", "gold_reward_after"):
        assert key in saved
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(tmp_path / "sft" / "model"))  # a standard HF directory


def test_killed_and_resumed_run_equals_uninterrupted(tmp_path):
    common = ["data.n_train=256", "data.n_eval=32", "max_steps=6", "batch_size=16", "micro_batch_size=8",
              "eval.n_sample_prompts=4", "run.eval_every=2", "run.save_every=3", "run.log_every=1"]
    train_sft(_cfg(tmp_path / "full", *common))
    stopped = train_sft(_cfg(tmp_path / "resumed", *common, "run.stop_after_steps=3"))
    assert stopped == {"stopped_at_step": 3}
    train_sft(_cfg(tmp_path / "resumed", *common))
    full, resumed = _weights(tmp_path / "full"), _weights(tmp_path / "resumed")
    assert full.keys() == resumed.keys()
    for name in full:
        torch.testing.assert_close(resumed[name], full[name], rtol=0, atol=0, msg=name)
    assert [r["step"] for r in read_metrics(tmp_path / "resumed")] == list(range(1, 7))


def test_grad_accumulation_does_not_change_the_step():
    """One SGD step (lr 1, no clipping) moves the weights by −∇: 1 micro-batch of 16 and 8 of 2
    must give the same gradient of the global token-mean loss."""
    from accelerate import Accelerator

    from rlhfkit.models.loading import load_or_build_policy
    from rlhfkit.tasks import get_task
    from rlhfkit.train.common import BatchPlan
    from rlhfkit.train.sft import sft_step, tokenize_sft
    from rlhfkit.data.errors import SkipReport

    task = get_task("reviews", seed=0)
    deltas = []
    for micro in (16, 2):
        cfg = _cfg("unused", "batch_size=16", f"micro_batch_size={micro}", "optim.max_grad_norm=null")
        model, tok = load_or_build_policy(cfg.model, task.corpus, seed=0)
        data = tokenize_sft(task.sft_examples(64), tok, 96, "raise", "task", SkipReport())
        before = {k: v.clone() for k, v in model.state_dict().items()}
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        plan = BatchPlan.make(16, micro, 1)
        sft_step(model, optimizer, scheduler, Accelerator(cpu=True), data, plan, cfg, 0, tok.pad_token_id)
        deltas.append({k: v - before[k] for k, v in model.state_dict().items()})
    for name in deltas[0]:
        torch.testing.assert_close(deltas[1][name], deltas[0][name], rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.timeout(300)
def test_two_processes_match_one_process(tmp_path):
    common = TINY + ["data.n_train=128", "data.n_eval=16", "max_steps=4", "batch_size=8", "micro_batch_size=2",
                     "eval.n_sample_prompts=0", "run.log_every=1"]
    # torchrun + ACCELERATE_USE_CPU gives Accelerate 2 gloo processes; `accelerate launch --cpu
    # --num_processes 2` starts one process on a CPU-only machine, which would prove nothing.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    for name, procs in (("one", 1), ("two", 2)):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "-m", "rlhfkit.cli",
               "sft", *common, f"run.out_dir={tmp_path / name}"]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=280, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert yaml.safe_load((tmp_path / name / "config.yaml").read_text())["derived"]["num_processes"] == procs
    one = [r["train/loss"] for r in read_metrics(tmp_path / "one")]
    two = [r["train/loss"] for r in read_metrics(tmp_path / "two") if "train/loss" in r]
    assert len(one) == len(two) == 4
    assert two == pytest.approx(one, rel=1e-4)


def test_file_data_errors_name_file_line_and_field(tmp_path):
    from rlhfkit.data import DataError

    path = tmp_path / "sft.jsonl"
    path.write_text('{"prompt": "write a positive short review of a hotel : the", "response": "room was nice ."}\n'
                    '{"prompt": "write a negative short review of a hotel : the", "response": "  "}\n')
    with pytest.raises(DataError, match=r"sft.jsonl:2.*response"):
        train_sft(_cfg(tmp_path / "r", f"data.train_path={path}", "max_steps=1"))


def test_too_long_examples_raise_or_are_counted(tmp_path):
    from rlhfkit.data import DataError

    with pytest.raises(DataError, match=r"task:reviews:\d+.*too long|task:reviews:\d+.*tokens"):
        train_sft(_cfg(tmp_path / "a", "data.n_train=64", "data.n_eval=8", "data.max_seq_len=20", "max_steps=1",
                       "eval.n_sample_prompts=0"))
    summary = train_sft(_cfg(tmp_path / "b", "data.n_train=64", "data.n_eval=8", "data.max_seq_len=36",
                             "data.on_error=skip", "max_steps=1", "batch_size=4", "eval.n_sample_prompts=0"))
    assert summary["skipped"]["by_reason"].get("too_long", 0) > 0


def test_response_nll_and_budgeted_held_out_loss_match_a_per_token_reference(monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhfkit.train import sft
    from rlhfkit.train.sft import TokenizedExample, _budget_batches, held_out_loss

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64, vocab_size=64)).eval()
    gen = torch.Generator().manual_seed(1)
    examples = [TokenizedExample(torch.randint(3, 64, (p,), generator=gen).tolist(),
                                 torch.randint(3, 64, (r,), generator=gen).tolist())
                for p, r in [(3, 4), (7, 2), (1, 5), (4, 4), (6, 1)]]
    # Reference: one example at a time, Σ −log softmax(logits)[next token] over response tokens.
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples:
            ids = torch.tensor([e.prompt_ids + e.response_ids])
            logp = model(input_ids=ids).logits[0].log_softmax(-1)
            for t in range(len(e.prompt_ids), ids.shape[1]):
                total -= float(logp[t - 1, ids[0, t]])
                count += 1
    # Lengths 7, 9, 6, 8, 7 under a budget of 24 padded tokens × 64: [7, 9] (a third row would
    # pad to 3 × 9 = 27), then [6, 8, 7] (3 × 8 = 24).
    monkeypatch.setattr(sft, "HELD_OUT_LOGITS_BUDGET", 24 * 64)
    assert [len(b) for b in _budget_batches(examples, 64, 64)] == [2, 3]
    assert [len(b) for b in _budget_batches(examples, 1, 64)] == [1] * 5
    assert held_out_loss(model, examples, pad_id=0) == pytest.approx(total / count, rel=1e-5)


def test_lora_sft_trains_the_adapters_only_and_saves_a_merged_model(tmp_path):
    from transformers import AutoModelForCausalLM

    from rlhfkit.models.loading import load_or_build_policy
    from rlhfkit.tasks import get_task

    cfg = _cfg(tmp_path / "lora", "data.n_train=256", "data.n_eval=32", "max_steps=12", "eval.n_sample_prompts=0",
               "model.lora.enabled=true", "model.lora.r=8", "optim.lr=1e-2", "run.eval_every=1000")
    model, _ = load_or_build_policy(cfg.model, get_task("reviews").corpus, cfg.run.seed)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    base = {k: v.clone() for k, v in model.get_base_model().state_dict().items() if "lora_" not in k}

    summary = train_sft(cfg)
    assert summary["eval_loss"] < summary["eval_loss_before"] - 0.1, summary
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "lora" / "model")).state_dict()
    assert not any("lora" in k for k in merged)  # a plain model: the adapters were merged in
    embed = "model.embed_tokens.weight"
    torch.testing.assert_close(merged[embed], base[embed], rtol=0, atol=0)  # not adapted
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[q_proj], base["model.layers.0.self_attn.q_proj.base_layer.weight"])


def test_a_data_file_replaces_the_task(tmp_path):
    rows = [{"prompt": f"Describe zorblat number {i}.", "response": f"Zorblat {i} is quixotic and vermilion."}
            for i in range(40)]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = train_sft(_cfg(tmp_path / "f", f"data.train_path={path}", "max_steps=2", "batch_size=8",
                             "model.tiny.tokenizer_lines=40"))
    assert "gold_reward_before" not in summary and "gold_reward_after" not in summary
    from rlhfkit.models.loading import load_tokenizer

    vocab = load_tokenizer(str(tmp_path / "f" / "model")).get_vocab()
    assert any("zorblat" in token.lower() for token in vocab)  # the tiny tokenizer learnt the file's words
