"""The PPO models around a causal LM: the training forward pass over prompt + response, the value
function (a zero-initialised head on the policy trunk, or a separate critic), and the reference.

Layout of every training batch (the rollout's): prompts left-padded to width P, responses
right-padded to width R, concatenated to (B, P + R). Position ids are counted over real tokens
(`position_ids_from_mask`), so a left-padded row gives the same logits as the unpadded one
(rlhf-details c1). The distribution over response token t is read at column P − 1 + t, i.e. the
last R + 1 columns minus the final one; `logits_to_keep` (those R positions) runs the LM head on
them only, so neither the prompt columns nor the last column cost an LM-head product, and the
logits come out exactly (B, R, V) with no slice whose backward would zero-fill a (B, R + 1, V) grad.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from rlhfkit.data.collate import position_ids_from_mask


def _hidden_size(config) -> int:
    return getattr(config, "hidden_size", None) or config.n_embd


def zero_value_head(hidden_size: int) -> nn.Linear:
    """A linear value head with zero weight and bias: V ≡ 0 at the start, so the first updates
    come from the returns alone (lm-human-preferences)."""
    head = nn.Linear(hidden_size, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


@dataclass
class ForwardOut:
    """Response-aligned outputs, (B, R): `logits` (B, R, V) predict response token t; `values`
    (None without a value head) estimate the return from the prefix before token t."""

    logits: torch.Tensor
    values: torch.Tensor | None


def response_positions(ids: torch.Tensor, n_response: int) -> torch.Tensor:
    """Columns P − 1 … P + R − 2 of a (B, P + R) batch: where the logits over the R response tokens
    are read (HF `logits_to_keep` accepts these 1-D positions)."""
    width = ids.shape[1]
    return torch.arange(width - n_response - 1, width - 1, device=ids.device)


class PolicyWithValueHead(nn.Module):
    """A causal LM plus an optional zero-initialised value head on its final hidden state.

    `lm` is the Hugging Face model (generation calls `lm.generate`); `value_head` is None when the
    value function is a separate critic or the estimator needs none.
    """

    def __init__(self, lm: nn.Module, with_value_head: bool):
        super().__init__()
        self.lm = lm
        self.value_head = zero_value_head(_hidden_size(lm.config)) if with_value_head else None

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, n_response: int) -> ForwardOut:
        """ids, mask (B, P + R) → logits (B, R, V) and values (B, R) for the last R columns."""
        out = self.lm(input_ids=ids, attention_mask=mask.long(), position_ids=position_ids_from_mask(mask),
                      logits_to_keep=response_positions(ids, n_response), use_cache=False,
                      output_hidden_states=self.value_head is not None)
        values = None
        if self.value_head is not None:
            hidden = out.hidden_states[-1][:, -(n_response + 1):-1]
            values = self.value_head(hidden).squeeze(-1).float()
        return ForwardOut(out.logits, values)


class Critic(nn.Module):
    """A separate value network: a transformer trunk (no LM head) and a scalar head read at every
    position (Stiennon et al. 2020; InstructGPT initialise it from the reward model)."""

    def __init__(self, trunk: nn.Module, head: nn.Linear):
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, n_response: int) -> torch.Tensor:
        """ids, mask (B, P + R) → values (B, R): V of the prefix before each response token."""
        hidden = self.trunk(input_ids=ids, attention_mask=mask.long(), position_ids=position_ids_from_mask(mask),
                            use_cache=False).last_hidden_state
        return self.head(hidden[:, -(n_response + 1):-1]).squeeze(-1).float()


def critic_from_pretrained(path: str) -> Critic:
    """A critic whose trunk is the model at `path` (a causal LM's body; its LM head is dropped)
    and whose head starts at zero."""
    from transformers import AutoModel

    from rlhfkit.models.loading import resolve_model_path

    trunk = AutoModel.from_pretrained(resolve_model_path(path), dtype=torch.float32)  # see load_causal_lm
    return Critic(trunk, zero_value_head(_hidden_size(trunk.config)))


def critic_from_reward_model(reward_model, policy_tokenizer) -> Critic:
    """A critic that copies a reward model's trunk and its first score head (InstructGPT, N+):
    at the start V(prefix) is the RM's raw score of the prefix. The critic reads the policy's
    tokens and a value may not see later tokens, so the RM must share the policy's vocabulary and
    have a causal trunk (not an encoder such as MiniLM); otherwise this raises."""
    from rlhfkit.models.reward import is_causal_trunk

    if reward_model.tokenizer.get_vocab() != policy_tokenizer.get_vocab():
        raise ValueError("value.init=rm: the reward model's tokenizer is not the policy's, and the critic reads the "
                         "policy's token ids; use value.init=policy")
    if not is_causal_trunk(reward_model.backbone):
        raise ValueError("value.init=rm: the reward model's trunk is not causal (its state at a token depends on "
                         "later tokens, so a value would see the rest of the response); use value.init=policy")
    trunk = copy.deepcopy(reward_model.backbone)
    source = reward_model.head
    head = nn.Linear(source.in_features, 1, bias=source.bias is not None)
    with torch.no_grad():
        head.weight.copy_(source.weight[:1])
        if source.bias is not None:
            head.bias.copy_(source.bias[:1])
    return Critic(trunk, head)


def freeze(model: nn.Module) -> nn.Module:
    """`model` itself, in eval mode with gradients off: the reference policy."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


class Reference:
    """The reference policy π_ref: a frozen model (a copy of the starting policy, or one loaded from
    its own directory), or — with LoRA and no model of its own — the policy's base weights with the
    adapters switched off (no second copy in memory)."""

    def __init__(self, policy: PolicyWithValueHead, model: nn.Module | None):
        self._policy = policy if model is None else None
        self.model = None if model is None else freeze(model)

    @contextmanager
    def _lm(self, policy: PolicyWithValueHead | None):
        if self.model is not None:
            yield self.model
            return
        lm = (policy or self._policy).lm
        with lm.disable_adapter():
            yield lm

    @torch.no_grad()
    def logits(self, ids: torch.Tensor, mask: torch.Tensor, n_response: int,
               policy: PolicyWithValueHead | None = None) -> torch.Tensor:
        """Reference logits (B, R, V) for the response columns (see `PolicyWithValueHead.forward`);
        `policy` is the (possibly wrapped-then-unwrapped) policy when adapters are used."""
        with self._lm(policy) as lm:
            out = lm(input_ids=ids, attention_mask=mask.long(), position_ids=position_ids_from_mask(mask),
                     logits_to_keep=response_positions(ids, n_response), use_cache=False)
        return out.logits

    def refresh(self, policy: PolicyWithValueHead) -> None:
        """Make the current policy the new reference (periodic refresh; not with adapters)."""
        if self.model is None:
            raise ValueError("the reference cannot be refreshed when it is the LoRA base model")
        self.model.load_state_dict(policy.lm.state_dict())

    def state_dict(self) -> dict:
        return {} if self.model is None else self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.model is not None and state:
            self.model.load_state_dict(state)
