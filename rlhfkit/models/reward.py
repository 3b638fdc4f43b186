"""The reward model: a Hugging Face backbone plus a linear head read at the last real token.

`RewardModel` wraps any `AutoModel` backbone — the trunk of a causal LM (a local model dir, an
SFT run's `model/`, a tiny Llama) or an encoder such as MiniLM — and a linear head with one
output per objective. Inputs are right-padded prompt+response sequences; the reward is the head
applied to the hidden state of each row's last real token, which is the EOS token of a finished
response (rlhf-details b2). Because attention is causal (or masked, for encoders), that hidden
state does not depend on how much padding follows it.

The public scoring API takes *text*, so the RM may use its own tokenizer whatever the policy's
(decoding the policy's tokens and re-encoding is the caller's business). Normalisation is stored
with the model: `r·g + b` per head, with g and b fitted after training so that a reference
distribution of responses scores mean 0 and std 1 (lm-human-preferences, rlhf-details b7).

A saved RM directory is a standard HF directory of the backbone and tokenizer (safetensors) plus
`reward_head.safetensors` and `reward_config.json`; `load_reward_model(dir)` restores it.

For an LM loss on the chosen response (`loss.lm_coef > 0`) the model also holds the causal LM's
output embeddings (`lm_head`; the input embeddings themselves when tied) and computes logits only
at the positions that predict the chosen response's tokens. The LM head serves training only: it
is in checkpoints, not in the saved RM directory.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from rlhfkit.algos.logprobs import logprobs_from_logits
from rlhfkit.config.rm import RMModelConfig
from rlhfkit.data.chat import drop_oldest_turn, prompt_to_messages
from rlhfkit.data.collate import right_pad
from rlhfkit.models.loading import apply_lora, disable_dropout, load_causal_lm, load_tokenizer, resolve_model_path
from rlhfkit.models.text import encode_prompt, encode_response, plain_prompt_text

HEAD_FILE = "reward_head.safetensors"
CONFIG_FILE = "reward_config.json"
FORMAT_VERSION = 1
INPUT_FORMATS = ("chat", "plain", "pair")
DEFAULT_MAX_LENGTH = 512
"""Truncation length (tokens) of an RM on an HF backbone when the config gives none."""
LM_LOSS_NEEDS = "loss.lm_coef > 0 (an LM loss on the chosen response) needs a causal-LM backbone with its LM head"
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")
"""Config fields of HF causal LMs whose logits are not plain lm_head(hidden) (Gemma 2 soft-capping,
Cohere and Granite scaling); the LM loss computes lm_head(hidden) and refuses them."""


@dataclass(frozen=True)
class RMInput:
    """One tokenised prompt+response: token ids and, for pair-encoded encoders, segment ids."""

    ids: list[int]
    type_ids: list[int] | None = None
    prompt_len: int = 0
    """How many leading ids are the prompt (0 = unknown): responses to one prompt can then share it."""


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last True in each row of a (B, T) mask (True = real token): T − 1 −
    argmax(flip(mask)). For right padding it is length − 1; rows must have a real token."""
    width = attention_mask.shape[1]
    return width - 1 - attention_mask.long().flip(1).argmax(dim=1)


def collate_inputs(inputs: Sequence[RMInput], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of inputs: `input_ids`, `attention_mask` (bool, True = real) and, when
    the inputs carry segment ids, `token_type_ids` (padding gets segment 0)."""
    ids, mask = right_pad([x.ids for x in inputs], pad_id)
    batch = {"input_ids": ids, "attention_mask": mask}
    if inputs[0].type_ids is not None:
        batch["token_type_ids"], _ = right_pad([x.type_ids for x in inputs], 0, width=ids.shape[1])
    return batch


def shares_prompt(group: Sequence[RMInput]) -> bool:
    """True when every input starts with the same, known prompt ids (none truncated differently)."""
    p = group[0].prompt_len
    return p > 0 and all(x.prompt_len == p and x.ids[:p] == group[0].ids[:p] for x in group)


def lm_positions(spans: Sequence[tuple[int, int, int, Sequence[int]]]) -> dict[str, torch.Tensor]:
    """Where the LM loss reads, one span per group: (row, context column, first column, ids) of the
    chosen response. The state at the context column (the prompt's last token; −1 = none, e.g. a
    prompt truncated away) predicts the response's first token, and each response token's state
    predicts the next one, its EOS last. Returns `lm_at` (G, L, 2) (row, column) of each
    predicting state, `lm_targets` (G, L) the token it predicts and `lm_mask` (G, L) True = real;
    padding points at (0, 0) with token 0."""
    at, targets = [], []
    for row, context, start, ids in spans:
        sources = [context] + list(range(start, start + len(ids) - 1))
        kept = [(c, t) for c, t in zip(sources, ids) if c >= 0]
        at.append([(row, c) for c, _ in kept])
        targets.append([t for _, t in kept])
    width = max(1, max(len(t) for t in targets))
    lm_at = torch.zeros(len(spans), width, 2, dtype=torch.long)
    lm_targets = torch.zeros(len(spans), width, dtype=torch.long)
    lm_mask = torch.zeros(len(spans), width, dtype=torch.bool)
    for g, (where, tokens) in enumerate(zip(at, targets)):
        if tokens:
            lm_at[g, : len(tokens)] = torch.tensor(where)
            lm_targets[g, : len(tokens)] = torch.tensor(tokens)
            lm_mask[g, : len(tokens)] = True
    return {"lm_at": lm_at, "lm_targets": lm_targets, "lm_mask": lm_mask}


def collate_shared_prompt(groups: Sequence[Sequence[RMInput]], pad_id: int,
                          float_mask_dtype: torch.dtype | None = None,
                          lm_response: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """Pack each group (K responses to one prompt, all with the same `prompt_len` prompt ids)
    into ONE row `prompt, response_1, …, response_K`, so a causal backbone runs the prompt once.

    Returns `input_ids` (G, T) right-padded; `position_ids` (G, T): the prompt at 0..P−1 and every
    response restarting at P, as if it followed the prompt alone; `attention_mask` (G, 1, T, T)
    True = may attend: causal, and a response token sees the prompt and its own response only
    (padding rows see themselves, so no row is empty); `read_at` (N, 2) the (row, column) of each
    response's last token, responses in group order; `token_mask` (G, T) True = real token.
    With `float_mask_dtype` the mask is additive instead (0 = attend, dtype min = blocked), for
    eager attention. The rewards equal those of separate prompt+response rows (causal attention
    and per-response positions make every response token see the same context).
    `lm_response` (one index per group) adds `lm_positions` of those responses: the prompt's last
    token predicts the response's first, each response token the next inside its own segment."""
    rows, positions, segments, read_at, spans = [], [], [], [], []
    for g, group in enumerate(groups):
        if not shares_prompt(group):
            raise ValueError("prompt sharing needs every response of a group to follow the same prompt ids")
        p = group[0].prompt_len
        row, pos, seg = list(group[0].ids[:p]), list(range(p)), [0] * p
        for k, x in enumerate(group, start=1):
            response = x.ids[p:]
            if lm_response is not None and k - 1 == lm_response[g]:
                spans.append((g, p - 1, len(row), response))
            row += response
            pos += range(p, p + len(response))
            seg += [k] * len(response)
            read_at.append((g, len(row) - 1))
        rows.append(row)
        positions.append(pos)
        segments.append(seg)
    ids, token_mask = right_pad(rows, pad_id)
    position_ids, _ = right_pad(positions, 0, width=ids.shape[1])
    seg, _ = right_pad(segments, -1, width=ids.shape[1])
    width = ids.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    q, kv = seg.unsqueeze(2), seg.unsqueeze(1)
    allowed = causal & (kv >= 0) & ((kv == 0) | (kv == q))
    allowed |= torch.eye(width, dtype=torch.bool) & ~token_mask.unsqueeze(2)
    mask = allowed.unsqueeze(1)
    if float_mask_dtype is not None:
        mask = torch.zeros(mask.shape, dtype=float_mask_dtype).masked_fill(~mask, torch.finfo(float_mask_dtype).min)
    out = {"input_ids": ids, "position_ids": position_ids, "attention_mask": mask,
           "read_at": torch.tensor(read_at, dtype=torch.long), "token_mask": token_mask}
    return out if lm_response is None else {**out, **lm_positions(spans)}


def resolve_input_format(tokenizer, input_format: str) -> str:
    """`auto` → `chat` with a chat template, `pair` for a tokenizer without EOS but with a
    separator (BERT-style encoders), else `plain`; an explicit choice is checked."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if input_format == "auto":
        if has_template:
            return "chat"
        return "pair" if tokenizer.eos_token_id is None and tokenizer.sep_token_id is not None else "plain"
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"unknown input_format {input_format!r}; valid: auto, {', '.join(INPUT_FORMATS)}")
    if input_format == "chat" and not has_template:
        raise ValueError("input_format 'chat' needs a tokenizer with a chat template")
    if input_format == "plain" and tokenizer.eos_token_id is None:
        raise ValueError("input_format 'plain' needs a tokenizer with an EOS token; use 'pair' for encoders")
    return input_format


@torch.no_grad()
def is_causal_trunk(backbone) -> bool:
    """Whether the trunk's attention is causal, probed: two 3-token inputs that differ only in the
    last token must give the same hidden states at the first two positions. An encoder with an
    EOS token (RoBERTa-style, `plain` format) fails it and is never packed with a shared prompt."""
    vocab = getattr(backbone.config, "vocab_size", None)
    if getattr(backbone.config, "is_encoder_decoder", False) or not vocab or vocab < 4:
        return False
    ids = torch.tensor([[1, 2, 3], [1, 2, vocab - 1]], device=next(backbone.parameters()).device)
    was_training = backbone.training
    backbone.eval()
    hidden = backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state.float()
    backbone.train(was_training)
    return bool(torch.allclose(hidden[0, :2], hidden[1, :2], atol=1e-4, rtol=1e-4))


def load_trunk(path: str, dtype=None):
    """The `AutoModel` trunk of a model dir, without a BERT-style pooler when the class can skip
    it (the reward reads the last token's hidden state; the pooler is unused). In `dtype`; None
    means float32, as in `load_causal_lm` (transformers 5 would take the checkpoint's own dtype,
    and a bf16 trunk under the float32 head fails at the first score)."""
    from transformers import AutoConfig, AutoModel
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    config = AutoConfig.from_pretrained(path)
    trunk_class = MODEL_MAPPING.get(type(config), None)
    skip_pooler = trunk_class is not None and "add_pooling_layer" in inspect.signature(trunk_class.__init__).parameters
    return AutoModel.from_pretrained(path, config=config, dtype=dtype or torch.float32,
                                     **({"add_pooling_layer": False} if skip_pooler else {}))


class RewardModel(torch.nn.Module):
    """Backbone + linear head (H outputs) at the last real token; see the module docstring."""

    def __init__(self, backbone, tokenizer, num_heads: int = 1, input_format: str = "auto",
                 max_length: int = DEFAULT_MAX_LENGTH, head_std: float | None = None,
                 lm_head: torch.nn.Module | None = None):
        super().__init__()
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None  # BERT's pooler is unused here (and would get no gradient under DDP)
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.input_format = resolve_input_format(tokenizer, input_format)
        self.max_length = max_length
        self._causal_trunk = is_causal_trunk(backbone)
        if lm_head is not None and not self.can_share_prompt:
            raise ValueError(f"{LM_LOSS_NEEDS}; {type(backbone).__name__} with input format "
                             f"{self.input_format!r} is not one (an encoder or encoder-decoder)")
        self.lm_head = lm_head  # the causal LM's output embeddings (tied: the input embeddings) or None
        hidden = backbone.config.hidden_size
        self.head = torch.nn.Linear(hidden, num_heads)
        # N(0, 1/√(d+1)) weights and zero bias (lm-human-preferences; rlhf-details b3).
        torch.nn.init.normal_(self.head.weight, std=head_std if head_std is not None else 1 / math.sqrt(hidden + 1))
        torch.nn.init.zeros_(self.head.bias)
        self.register_buffer("norm_gain", torch.ones(num_heads))
        self.register_buffer("norm_bias", torch.zeros(num_heads))
        params = inspect.signature(backbone.forward).parameters
        self._no_cache = {"use_cache": False} if "use_cache" in params else {}

    @property
    def num_heads(self) -> int:
        return self.head.out_features

    # ------------------------------------------------------------------ encoding
    def encode(self, prompt, response: str, finished: bool = True) -> RMInput:
        """Token ids of one prompt+response in this model's input format (see `encode_group`)."""
        return self.encode_group(prompt, [response], [finished])[0]

    def encode_group(self, prompt, responses: Sequence[str], finished: Sequence[bool]) -> list[RMInput]:
        """Token ids of each prompt+response, at most `max_length` long, truncated from the
        left so the last turns survive. chat/plain: the oldest exchanges of a conversation are
        dropped until the longest response fits (the same prompt for every response, so they
        are compared on one context), then the first tokens of what is left are cut; pair: the
        longer segment is trimmed from its start (`longest_first`, left side)."""
        tok = self.tokenizer
        if self.input_format == "pair":
            tok.truncation_side = "left"
            outs = [tok(plain_prompt_text(prompt), r, truncation="longest_first", max_length=self.max_length)
                    for r in responses]
            return [RMInput(list(o["input_ids"]), list(o["token_type_ids"]) if "token_type_ids" in o else None)
                    for o in outs]
        response_ids = [encode_response(tok, r, f) for r, f in zip(responses, finished)]
        longest = max(len(r) for r in response_ids)
        messages = prompt_to_messages(prompt)
        prompt_ids = self._prompt_ids(messages)
        while len(prompt_ids) + longest > self.max_length:
            shorter = drop_oldest_turn(messages)
            if not any(m.role == "user" for m in shorter):
                break  # keep the last user turn; its start is cut below
            messages, prompt_ids = shorter, self._prompt_ids(shorter)
        inputs = []
        for r in response_ids:
            cut = max(0, len(prompt_ids) + len(r) - self.max_length)
            inputs.append(RMInput((list(prompt_ids) + r)[cut:], prompt_len=max(0, len(prompt_ids) - cut)))
        return inputs

    def _prompt_ids(self, messages) -> list[int]:
        if self.input_format == "chat":
            return encode_prompt(self.tokenizer, messages)
        return self.tokenizer(plain_prompt_text(messages), add_special_tokens=False)["input_ids"]

    def collate(self, inputs: Sequence[RMInput]) -> dict[str, torch.Tensor]:
        return collate_inputs(inputs, self.tokenizer.pad_token_id)

    @property
    def can_share_prompt(self) -> bool:
        """Prompt sharing needs causal attention: decoder trunks in chat/plain format, not encoders."""
        return self.input_format != "pair" and self._causal_trunk

    def collate_groups(self, groups: Sequence[Sequence[RMInput]],
                       lm_response: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        """Forward inputs for groups of responses: one shared-prompt row per group when the
        backbone is causal and no prompt was truncated (`collate_shared_prompt`), else one row
        per response. Either way the
        model's output rows are the responses in group order; `token_mask` marks real tokens.
        `lm_response` (one index per group) adds the LM-loss positions of those responses
        (`lm_positions`; needs the LM head)."""
        if lm_response is not None and self.lm_head is None:
            raise ValueError("LM-loss positions need a RewardModel built with its LM head")
        if not (self.can_share_prompt and all(shares_prompt(g) for g in groups)):
            flat = [x for g in groups for x in g]
            batch = self.collate(flat)
            batch["token_mask"] = batch["attention_mask"]
            if lm_response is not None:
                rows = [sum(len(g) for g in groups[:n]) + k for n, k in enumerate(lm_response)]
                batch.update(lm_positions([(r, flat[r].prompt_len - 1, flat[r].prompt_len,
                                            flat[r].ids[flat[r].prompt_len:]) for r in rows]))
            return batch
        eager = getattr(self.backbone.config, "_attn_implementation", "sdpa") == "eager"
        return collate_shared_prompt(groups, self.tokenizer.pad_token_id, self.head.weight.dtype if eager else None,
                                     lm_response)

    # ------------------------------------------------------------------ scoring
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                read_at: torch.Tensor | None = None, token_mask: torch.Tensor | None = None,
                normalized: bool = False, lm_at: torch.Tensor | None = None,
                lm_targets: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Rewards (N, H). Plain batches: right-padded (B, T) inputs and mask, read at each row's
        last real token (N = B). Shared-prompt batches (`collate_groups`): a 4-D mask, position
        ids and `read_at` (N, 2) (row, column) of each response's last token. `token_mask` is
        bookkeeping for the caller and unused here. `normalized` applies r·g + b.

        With `lm_at` (G, L, 2) and `lm_targets` (G, L) (`lm_positions`) it returns (rewards,
        logprobs): logprobs (G, L) fp32 = log π(lm_targets | the state at lm_at), the LM head
        applied at those G·L states only (not at every position of the batch); the caller masks
        the padding with `lm_mask`."""
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        if position_ids is not None:
            extra["position_ids"] = position_ids
        mask = attention_mask if attention_mask.dim() == 4 else attention_mask.long()
        hidden = self.backbone(input_ids=input_ids, attention_mask=mask, **extra, **self._no_cache).last_hidden_state
        if read_at is None:
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            read_at = torch.stack([rows, last_token_index(attention_mask)], dim=1)
        rewards = self.head(hidden[read_at[:, 0], read_at[:, 1]]).float()
        if normalized:
            rewards = rewards * self.norm_gain + self.norm_bias
        if lm_at is None:
            return rewards
        states = hidden[lm_at[..., 0], lm_at[..., 1]]  # (G, L, d)
        return rewards, logprobs_from_logits(self.lm_head(states), lm_targets)

    @torch.no_grad()
    def score_texts(self, prompts: Sequence, responses: Sequence[str], finished: Sequence[bool] | None = None,
                    normalized: bool = True, batch_size: int = 64) -> torch.Tensor:
        """Rewards (B, H) of text responses to their prompts, normalised by default. Batches are
        formed from length-sorted inputs (little padding) and the result is in input order."""
        if len(prompts) != len(responses) or (finished is not None and len(finished) != len(prompts)):
            raise ValueError("prompts, responses and finished must have the same length")
        flags = [True] * len(prompts) if finished is None else list(finished)
        inputs = [self.encode(p, r, f) for p, r, f in zip(prompts, responses, flags)]
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i].ids))
        device = self.head.weight.device
        out = torch.empty(len(inputs), self.num_heads)
        was_training = self.training
        self.eval()
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in self.collate([inputs[i] for i in chunk]).items()}
            out[chunk] = self(**batch, normalized=normalized).cpu()
        self.train(was_training)
        return out

    def set_normalization(self, gain: torch.Tensor, bias: torch.Tensor) -> None:
        """Store gain and bias, (H,) each."""
        self.norm_gain.copy_(torch.as_tensor(gain, dtype=torch.float32).reshape(self.num_heads))
        self.norm_bias.copy_(torch.as_tensor(bias, dtype=torch.float32).reshape(self.num_heads))

    def fit_normalization(self, prompts: Sequence, responses: Sequence[str], finished: Sequence[bool] | None = None,
                          target_mean: float = 0.0, target_std: float = 1.0) -> tuple[list[float], list[float]]:
        """Set gain/bias per head so the normalised rewards of these samples have the target
        mean and population std (`rlhfkit.algos.rewards.reward_normalization`, lm-h-p);
        return (gain, bias) as lists."""
        from rlhfkit.algos.rewards import reward_normalization

        raw = self.score_texts(prompts, responses, finished, normalized=False)
        gain, bias = zip(*(reward_normalization(raw[:, h], target_mean, target_std) for h in range(self.num_heads)))
        self.set_normalization(torch.tensor(gain), torch.tensor(bias))
        return list(gain), list(bias)

    # ------------------------------------------------------------------ persistence
    def save(self, out_dir: str | Path) -> Path:
        """Write the backbone and tokenizer as a standard HF dir (safetensors; LoRA adapters are
        merged into a copy, this model keeps them) plus the head and `reward_config.json`."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        backbone = self.backbone
        if hasattr(backbone, "merge_and_unload"):
            backbone = copy.deepcopy(backbone).merge_and_unload()
        backbone.save_pretrained(str(out), safe_serialization=True)
        self.tokenizer.save_pretrained(str(out))
        tensors = {"weight": self.head.weight, "bias": self.head.bias, "norm_gain": self.norm_gain,
                   "norm_bias": self.norm_bias}
        save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(out / HEAD_FILE))
        config = {"format_version": FORMAT_VERSION, "num_heads": self.num_heads, "input_format": self.input_format,
                  "max_length": self.max_length, "norm_gain": self.norm_gain.tolist(),
                  "norm_bias": self.norm_bias.tolist(), "backbone_class": type(backbone).__name__}
        (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return out

    @classmethod
    def from_pretrained(cls, path: str | Path, num_heads: int = 1, input_format: str = "auto",
                        max_length: int = DEFAULT_MAX_LENGTH, dtype=None, lm_head: bool = False) -> "RewardModel":
        """A fresh head on the `AutoModel` trunk of a local HF dir (causal LM or encoder), in `dtype`
        (None = float32); the LM head, if any, is dropped unless `lm_head` (then the dir must hold
        a causal LM)."""
        from transformers import AutoConfig

        if not lm_head:
            backbone = load_trunk(resolve_model_path(path), dtype)
            return cls(backbone, load_tokenizer(path), num_heads, input_format, max_length)
        architectures = AutoConfig.from_pretrained(resolve_model_path(path)).architectures or []
        if not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
            raise ValueError(f"{LM_LOSS_NEEDS}; {path} holds {architectures or 'no architecture'} "
                             "(an encoder, or a trunk without LM head)")
        model = load_causal_lm(path, dtype)
        return cls.from_causal_lm(model, load_tokenizer(path), num_heads, input_format, max_length, lm_head=True)

    @classmethod
    def from_causal_lm(cls, model, tokenizer, num_heads: int = 1, input_format: str = "auto",
                       max_length: int = DEFAULT_MAX_LENGTH, lm_head: bool = False) -> "RewardModel":
        """A fresh head on the trunk of an in-memory causal LM; its LM head (output embeddings,
        the same tensor as the input embeddings when tied) is kept when `lm_head`, else dropped."""
        if not lm_head:
            return cls(model.base_model, tokenizer, num_heads, input_format, max_length)
        transforms = [k for k in LOGIT_TRANSFORMS if getattr(model.config, k, None) not in (None, 1, 1.0)]
        if transforms:
            raise ValueError(f"{LM_LOSS_NEEDS} whose logits are lm_head(hidden); this one also applies {transforms}")
        return cls(model.base_model, tokenizer, num_heads, input_format, max_length,
                   lm_head=model.get_output_embeddings())


def is_reward_model_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def saved_reward_config(path: str | Path) -> dict:
    """The `reward_config.json` of a directory written by `RewardModel.save`, version checked."""
    path = Path(path)
    if not is_reward_model_dir(path):
        raise FileNotFoundError(f"{path}: no {CONFIG_FILE}; not a reward-model directory")
    config = json.loads((path / CONFIG_FILE).read_text())
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}/{CONFIG_FILE}: unsupported format_version {config.get('format_version')}")
    return config


def load_reward_model(path: str | Path, dtype=None, lm_head: bool = False, max_length: int | None = None
                      ) -> RewardModel:
    """Restore a directory written by `RewardModel.save` (backbone, tokenizer, head, normalisation).
    The directory holds no LM head; `lm_head` rebuilds one only where the backbone ties it to
    its input embeddings. `max_length` replaces the saved truncation length (None = keep it)."""
    from safetensors.torch import load_file

    path = Path(path)
    config = saved_reward_config(path)
    backbone = load_trunk(str(path), dtype)
    head = None
    if lm_head:
        if not getattr(backbone.config, "tie_word_embeddings", False):
            raise ValueError(f"{LM_LOSS_NEEDS}; {path} is a saved RM, which keeps no (untied) LM head: start "
                             "from the causal LM instead (e.g. the SFT run's model/)")
        embeddings = backbone.get_input_embeddings()
        head = torch.nn.Linear(embeddings.embedding_dim, embeddings.num_embeddings, bias=False)
        head.weight = embeddings.weight  # tied: the same tensor, trained through both uses
    model = RewardModel(backbone, load_tokenizer(path), config["num_heads"], config["input_format"],
                        max_length or config["max_length"], lm_head=head)
    tensors = load_file(str(path / HEAD_FILE))
    with torch.no_grad():
        model.head.weight.copy_(tensors["weight"])
        model.head.bias.copy_(tensors["bias"])
    model.set_normalization(tensors["norm_gain"], tensors["norm_bias"])
    return model


def transformer_blocks(backbone) -> torch.nn.ModuleList:
    """The backbone's list of transformer blocks: the first ModuleList of length
    `config.num_hidden_layers` (Llama `layers`, GPT-2 `h`, BERT `encoder.layer`)."""
    n = backbone.config.num_hidden_layers
    for module in backbone.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"cannot find the {n} transformer blocks of {type(backbone).__name__}")


def freeze_lower(backbone, embeddings: bool, n_layers: int) -> None:
    """Stop gradients to the embeddings (token, plus position/segment where the backbone has
    them) and to the lowest `n_layers` transformer blocks."""
    blocks = transformer_blocks(backbone)
    if n_layers > len(blocks):
        raise ValueError(f"freeze_layers={n_layers} but the backbone has {len(blocks)} blocks")
    frozen = list(blocks[:n_layers])
    if embeddings:
        frozen.append(backbone.get_input_embeddings())
        frozen += [getattr(backbone, name) for name in ("embeddings", "wpe") if hasattr(backbone, name)]
    for module in frozen:
        module.requires_grad_(False)


def check_saved_settings(cfg: RMModelConfig, saved: dict) -> None:
    """Refuse a config whose head count or input format differs from those of the saved RM at
    `cfg.path` (its head and weights were trained for them; null / `auto` take the saved ones)."""
    unset = {"num_heads": None, "input_format": "auto"}
    for name, keep in unset.items():
        value = getattr(cfg, name)
        if value != keep and value != saved[name]:
            raise ValueError(f"model.{name}={value} but the saved reward model {cfg.path} has {name}="
                             f"{saved[name]}; leave model.{name} at {keep or 'null'} to take the saved value, "
                             "or start a new reward model from a backbone directory")


def checked_max_length(cfg: RMModelConfig, default: int) -> int:
    """`model.max_length` for the backbone at `cfg.path`, or `default` capped at its positions
    (`max_position_embeddings` of its config.json, when it gives one); a value past them is refused."""
    from transformers import AutoConfig

    positions = getattr(AutoConfig.from_pretrained(resolve_model_path(cfg.path)), "max_position_embeddings", None)
    if cfg.max_length is None:
        return default if positions is None else min(default, positions)
    if positions is not None and cfg.max_length > positions:
        raise ValueError(f"model.max_length={cfg.max_length} exceeds the {positions} positions of the backbone "
                         f"{cfg.path} (max_position_embeddings in its config.json)")
    return cfg.max_length


def build_reward_model(cfg: RMModelConfig, corpus_fn: Callable[[int], list[str]], seed: int,
                       lm_head: bool = False) -> RewardModel:
    """The RM a config asks for: a saved RM dir (training continues; `check_saved_settings`), a
    fresh head on an HF dir (either way `checked_max_length`), or on a tiny Llama built from `cfg.tiny` with a tokenizer trained on
    `corpus_fn(n)`; then dropout off, freezing and LoRA (PEFT, FEATURE_EXTRACTION) as configured.
    The head is initialised from torch's RNG under `seed`. `lm_head` keeps the causal LM's output
    embeddings for an LM loss (`loss.lm_coef`); `freeze_embeddings` and LoRA freeze them too."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if cfg.path and is_reward_model_dir(cfg.path):
            saved = saved_reward_config(cfg.path)
            check_saved_settings(cfg, saved)
            model = load_reward_model(cfg.path, lm_head=lm_head, max_length=checked_max_length(cfg, saved["max_length"]))
        elif cfg.path:
            model = RewardModel.from_pretrained(cfg.path, cfg.num_heads or 1, cfg.input_format,
                                                checked_max_length(cfg, DEFAULT_MAX_LENGTH), lm_head=lm_head)
        else:
            from rlhfkit.models.tiny import build_tiny_causal_lm

            lm, tokenizer = build_tiny_causal_lm(cfg.tiny, corpus_fn(cfg.tiny.tokenizer_lines), seed)
            # The config refuses a max_length above max_positions, so none is clamped here.
            model = RewardModel.from_causal_lm(lm, tokenizer, cfg.num_heads or 1, cfg.input_format,
                                               cfg.max_length or cfg.tiny.max_positions, lm_head=lm_head)
    if cfg.disable_dropout:
        disable_dropout(model.backbone)
    if cfg.freeze_embeddings or cfg.freeze_layers:
        freeze_lower(model.backbone, cfg.freeze_embeddings, cfg.freeze_layers)
    if model.lm_head is not None and (cfg.freeze_embeddings or cfg.lora.enabled):
        model.lm_head.requires_grad_(False)
    if cfg.lora.enabled:
        model.backbone = apply_lora(model.backbone, cfg.lora, task_type="FEATURE_EXTRACTION")
    return model


class RewardEnsemble:
    """Several reward models, or the heads of one multi-head model, combined into one reward
    per sample with `rlhfkit.algos.rm_losses.combine_rewards` (weighted sum, min, mean − λ·std,
    mean − λ·var; Coste et al. 2023)."""

    def __init__(self, members: RewardModel | Sequence[RewardModel], mode: str = "mean",
                 weights: Sequence[float] | None = None, uncertainty_coef: float | None = None):
        self.members = [members] if isinstance(members, RewardModel) else list(members)
        if not self.members:
            raise ValueError("a RewardEnsemble needs at least one reward model")
        self.mode = mode
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        self.uncertainty_coef = uncertainty_coef
        n = self.num_rewards
        if self.weights is not None and self.weights.shape != (n,):
            raise ValueError(f"{len(self.weights)} weights for {n} rewards (every head of every member)")

    @property
    def num_rewards(self) -> int:
        """M: the number of heads over all members."""
        return sum(m.num_heads for m in self.members)

    def score_all(self, prompts: Sequence, responses: Sequence[str], finished: Sequence[bool] | None = None,
                  normalized: bool = True, batch_size: int = 64) -> torch.Tensor:
        """(M, B): every head of every member (members in order, heads in order); `batch_size`
        responses per forward pass."""
        return torch.cat([m.score_texts(prompts, responses, finished, normalized, batch_size).T for m in self.members])

    def combine(self, rewards: torch.Tensor) -> torch.Tensor:
        """(M, B) → (B,) by the ensemble's rule."""
        from rlhfkit.algos.rm_losses import combine_rewards

        return combine_rewards(rewards, self.mode, weights=self.weights, uncertainty_coef=self.uncertainty_coef)

    def score_texts(self, prompts: Sequence, responses: Sequence[str], finished: Sequence[bool] | None = None,
                    normalized: bool = True) -> torch.Tensor:
        """(B,) combined reward of text responses."""
        return self.combine(self.score_all(prompts, responses, finished, normalized))
