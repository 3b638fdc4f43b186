"""Small records of every kind, chosen to stress the writers: chat and text prompts in one file,
provenance with extra keys, meta dicts with differing keys, non-ASCII text, unset optionals."""

from __future__ import annotations

import pytest

from rlhfkit.data.schemas import (
    Candidate,
    CandidateSet,
    Message,
    PreferencePair,
    PromptRecord,
    Provenance,
    Ranking,
    Rating,
    SFTExample,
)

CHAT = [Message(role="system", content="Be brief."), Message(role="user", content="Name a colour.")]


def _samples() -> dict[str, list]:
    prov_a = Provenance(model="sft", checkpoint="step-10", temperature=0.7, seed=3, sampler="hf")
    prov_b = Provenance(model="base", top_k=0)
    return {
        "prompt": [PromptRecord(prompt="Write a haiku.", id="p1", meta={"task": "poem", "n": 2}),
                   PromptRecord(prompt=CHAT, id="p2")],
        "sft": [SFTExample(prompt="2+2?", response="4", id="s1"),
                SFTExample(prompt=CHAT, response="Blue — café ☕", meta={"source": "hand"})],
        "candidates": [CandidateSet(prompt_id="p1", prompt="Write a haiku.",
                                    candidates=[Candidate(text="Old pond", provenance=prov_a),
                                                Candidate(text="Frog jumps", finished=False, provenance=prov_b)],
                                    meta={"k": 2}),
                       CandidateSet(prompt_id="p2", prompt=CHAT, candidates=[Candidate(text="Red")])],
        "pair": [PreferencePair(prompt="Say hi.", chosen="Hi!", rejected="Go away.", margin=1.5, strength=2,
                                annotator="a1", prompt_id="p3", chosen_provenance=prov_a,
                                meta={"shown_order": ["rejected", "chosen"]}),
                 PreferencePair(prompt=CHAT, chosen="Green", rejected="Loud", tie=True)],
        "ranking": [Ranking(prompt="Rank these.", responses=["a", "b", "c"], ranks=[2, 1, 2], annotator="a2",
                            prompt_id="p4", provenance=[prov_a, prov_b, Provenance()]),
                    Ranking(prompt=CHAT, responses=["x", "y"], ranks=[1, 2], meta={"batch": 7})],
        "rating": [Rating(prompt="Rate me.", response="ok", rating=4, annotator="a3", prompt_id="p5",
                          provenance=prov_b),
                   Rating(prompt=CHAT, response="Teal", rating=1)],
    }


@pytest.fixture
def samples() -> dict[str, list]:
    """kind → two records of that kind."""
    return _samples()
