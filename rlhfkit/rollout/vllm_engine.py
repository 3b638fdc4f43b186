"""Rollouts from vLLM, colocated with training in this process on one GPU (`rollout.engine=vllm`).

- **Optional and lazy.** `vllm` is imported in the constructor only; without a CUDA device or
  without the extra the error names the config field, the extra and the CPU alternative.
- **Old log-probs are recomputed** (`exact_logprobs = False`): the PPO reference stage replaces
  the behaviour log-probs with the training forward's, as OpenRLHF and verl do. vLLM's own numbers
  (`logprobs_mode="processed_logprobs"`, i.e. after temperature, top-k and top-p; vLLM's default
  is the raw distribution at T = 1) equal log π/T only up to its kernels' rounding, and are of the
  renormalised truncated distribution when top-k / top-p truncate; they stay in the Rollout as a
  diagnostic.
- **Weight sync** after every optimiser update: the policy's weights under their Hugging Face
  names (LoRA deltas merged, the training model untouched) go into the live engine through the
  public `LLM.apply_model` → `model.load_weights`, which maps HF names onto vLLM's fused layers.
  The engine core runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so the tensors pass
  by reference, GPU to GPU. The prefix cache is reset after: its KV blocks hold the old weights.
- **One process** (tensor_parallel_size 1): vLLM's single-GPU executor creates its own
  torch.distributed world, which collides with Accelerate's when several processes run; the
  builder refuses `num_processes > 1`.
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import torch
from torch import nn

from rlhfkit.rollout.engines import SamplingSettings
from rlhfkit.rollout.generate import Rollout, rollout_from_samples

MIN_VLLM = "0.10.2"
"""First vLLM with `logprobs_mode="processed_logprobs"` (log-probs after temperature)."""
UNAVAILABLE = ("rollout.engine=vllm needs a CUDA GPU and `pip install rlhfkit[vllm]`; "
               "use rollout.engine=hf on CPU")
SEED_BOUND = 2**31 - 1
"""Per-request seeds are drawn below this from torch's global RNG (checkpointed, so resumable)."""


def import_vllm():
    """The `vllm` module, or a RuntimeError saying what is missing and what to do instead."""
    if not torch.cuda.is_available():
        raise RuntimeError(f"{UNAVAILABLE} (no CUDA device is visible)")
    try:
        import vllm
    except ImportError as exc:
        raise RuntimeError(f"{UNAVAILABLE} ({exc})") from None
    from packaging.version import Version

    if Version(vllm.__version__) < Version(MIN_VLLM):
        raise RuntimeError(f"rollout.engine=vllm needs vllm>={MIN_VLLM}, found {vllm.__version__}: "
                           "`pip install -U rlhfkit[vllm]`")
    return vllm


def sampling_kwargs(s: SamplingSettings) -> dict:
    """`vllm.SamplingParams` keywords that sample like `rollout.generate`: stop at our EOS only
    (`ignore_eos` drops the model config's EOS ids, `stop_token_ids` keeps ours, as HF's
    `eos_token_id=` does), return the sampled token's log-prob (`logprobs=0`), no detokenising.
    Older vLLM rejects top_k=0; −1 means "no top-k" in every version."""
    return dict(n=1, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k if s.top_k > 0 else -1,
                max_tokens=s.max_new_tokens, logprobs=0, stop_token_ids=[s.eos_id], ignore_eos=True,
                detokenize=False)


def samples_from_outputs(outputs) -> tuple[list[list[int]], list[list[float]]]:
    """(response token ids, sampled-token log-probs) from `LLM.generate`'s RequestOutputs, one
    completion each (n=1); each step's log-prob dict is keyed by token id."""
    responses, logprobs = [], []
    for request in outputs:
        completion = request.outputs[0]
        tokens = list(completion.token_ids)
        responses.append(tokens)
        logprobs.append([step[token].logprob for step, token in zip(completion.logprobs, tokens)])
    return responses, logprobs


@torch.no_grad()
def merged_named_weights(lm: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face name, tensor) of every weight of the causal LM, LoRA adapters merged in:
    W = W_base + ΔW with ΔW = B·A·α/r from PEFT's `get_delta_weight`; the adapters themselves and
    PEFT's name parts (`base_model.model.`, `.base_layer`) are left out. The training model is not
    modified (merging in place and unmerging would drift the bf16 base weights step by step)."""
    if not hasattr(lm, "peft_config"):
        yield from lm.named_parameters()
        return
    from peft.tuners.lora import LoraLayer

    model = lm.get_base_model()
    deltas = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and not module.merged:
            adapters = [a for a in module.active_adapters
                        if a in module.lora_A or a in module.lora_embedding_A]
            if adapters:
                deltas[f"{name}.weight"] = sum(module.get_delta_weight(a) for a in adapters)
    for name, param in model.named_parameters():
        if ".lora_" in name:
            continue
        name = name.replace(".base_layer", "")
        yield name, (param + deltas[name].to(param.dtype)) if name in deltas else param


class VLLMEngine:
    """A vLLM `LLM` on this process's GPU, loaded from the policy's folder and synced after every
    update (see the module docstring for the log-prob and weight-sync design)."""

    exact_logprobs = False

    def __init__(self, model_path: str, sampling: SamplingSettings, *, gpu_memory_utilization: float,
                 dtype: str, enforce_eager: bool, max_model_len: int, seed: int, device: torch.device | str):
        # The engine core in this process (set before vLLM reads its environment): weight sync
        # hands it the training process's tensors.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        vllm = import_vllm()
        self.llm = vllm.LLM(model=model_path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                            enforce_eager=enforce_eager, max_model_len=max_model_len, seed=seed,
                            tensor_parallel_size=1, logprobs_mode="processed_logprobs")
        self.sampling_params = vllm.SamplingParams
        self.sampling = sampling
        self.device = device

    def generate(self, prompts: Sequence[Sequence[int]]) -> Rollout:
        """One response per prompt; request i is seeded from torch's global RNG, so a resumed run
        draws the same seeds (vLLM's samples are then equal as far as its kernels are deterministic)."""
        seeds = torch.randint(SEED_BOUND, (len(prompts),)).tolist()
        kwargs = sampling_kwargs(self.sampling)
        params = [self.sampling_params(seed=seed, **kwargs) for seed in seeds]
        # A dict with `prompt_token_ids` is vLLM's TokensPrompt (a TypedDict).
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        responses, logprobs = samples_from_outputs(outputs)
        return rollout_from_samples(prompts, responses, logprobs, pad_id=self.sampling.pad_id,
                                    eos_id=self.sampling.eos_id, device=self.device)

    @torch.no_grad()
    def sync_weights(self, lm: nn.Module) -> None:
        """Load `lm`'s current weights into the engine and drop its stale prefix cache."""
        weights = merged_named_weights(lm)
        self.llm.apply_model(lambda model: model.load_weights(weights))
        self.llm.reset_prefix_cache()
