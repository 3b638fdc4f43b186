"""The HTML report: parses, every embedded image decodes, text from runs is escaped, and missing or
malformed inputs become notes instead of errors."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser

import pytest

from rlhfkit.eval.overopt import OverOptPoint, overoptimisation_study
from rlhfkit.eval.report import write_report

EVIL = "<script>alert('x')</script> & <b>bold</b>"


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.images: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def _parse(path) -> _Collector:
    parser = _Collector()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _decode_images(sources: list[str]) -> list[tuple[int, int]]:
    from PIL import Image

    sizes = []
    for src in sources:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        image = Image.open(io.BytesIO(base64.b64decode(src[len(prefix):], validate=True)))
        image.verify()
        sizes.append(image.size)
    return sizes


@pytest.fixture
def runs(tmp_path):
    ppo_keys = ["reward/rm", "reward/gold", "kl/ref", "kl/coef", "policy/entropy", "response/length", "ppo/clipfrac"]
    _write_jsonl(tmp_path / "ppo/metrics.jsonl",
                 [{"step": s, **{k: 0.1 * s + i for i, k in enumerate(ppo_keys)}} for s in range(1, 6)])
    _write_jsonl(tmp_path / "ppo/samples.jsonl", [{"step": 5, "prompt": "p1", "response": "ppo says " + EVIL}])
    (tmp_path / "ppo/summary.json").write_text(json.dumps({"steps": 5, "gold_reward_final": 0.4}))
    _write_jsonl(tmp_path / "sft/metrics.jsonl",
                 [{"step": s, "train/loss": 3.0 / s} for s in range(1, 9)] + [{"step": 8, "eval/loss": 0.9}])
    _write_jsonl(tmp_path / "sft/samples.jsonl", [{"step": 8, "prompt": "p1", "response": "sft says"}])
    (tmp_path / "rm").mkdir()
    (tmp_path / "rm/summary.json").write_text(json.dumps({
        "eval_accuracy": 0.7, "bayes_ceiling": 0.75, "ece": 0.03,
        "reliability_table": [{"bin": [0.0, 0.5], "confidence": 0.3, "accuracy": 0.32, "count": 40},
                              {"bin": [0.5, 1.0], "confidence": 0.7, "accuracy": 0.68, "count": 40}],
        "accuracy_by_bucket": {"small gap": {"accuracy": 0.55, "pairs": 10}}}))
    win = {"win_rate": 0.7, "low": 0.6, "high": 0.8, "n": 50, "wins": 33, "ties": 4, "losses": 13, "confidence": 0.95,
           "length_matched": {"win_rate": 0.65, "low": 0.5, "high": 0.78, "slope": 0.1, "n": 50, "confidence": 0.95},
           "mean_length_diff_words": 2.0}
    metrics = {"gold": 0.1, "rm": [0.2], "length_tokens": 10.0, "eos_fraction": 1.0, "distinct_1": 0.5}
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval/summary.json").write_text(json.dumps({
        "baseline": "sft", "judge": "gold:reviews", "n_prompts": 50, "confidence": 0.95, "reference": "runs/sft",
        "models": {"sft": {"perplexity": {"loss": 1.0, "perplexity": 2.718}}, EVIL: {}},
        "decodings": {"greedy": {"greedy": True, "temperature": 0.0, "models": {"sft": metrics, EVIL: metrics},
                                 "win_rate": {EVIL: win}, "bradley_terry": None}}}))
    _write_jsonl(tmp_path / "eval/samples.jsonl", [
        {"decoding": "greedy", "prompt": "prompt " + EVIL,
         "responses": {"sft": {"text": "fine", "finished": True, "gold": 0.2},
                       "ppo": {"text": EVIL, "finished": False, "gold": -1.0}}}])
    return {name: tmp_path / name for name in ("sft", "rm", "ppo", "eval")}


def _study():
    rl = [OverOptPoint(d * d, 0.5 * d, d * (1.0 - 0.5 * __import__("math").log(d)) if d else 0.0)
          for d in [0.0, 0.5, 1.0, 1.5, 2.0, 3.0]]
    bon = [(0.0, 0.0, 0.0), (0.64, 0.4, 0.3), (1.83, 0.9, 0.5), (3.17, 1.3, 0.4)]
    return overoptimisation_study(rl=rl, bon=bon)


def test_full_report_parses_and_every_image_decodes(runs, tmp_path):
    out = write_report(tmp_path / "out/report.html", runs, {"overoptimisation": _study(), "title": "Demo <1>"})
    parsed = _parse(out)
    # PPO curves, SFT curve, reliability diagram, win-rate plot, proxy-vs-gold plot.
    assert len(parsed.images) == 5
    assert all(w > 100 and h > 100 for w, h in _decode_images(parsed.images))
    assert "script" not in parsed.tags
    text = "".join(parsed.text)
    assert EVIL in text  # shown literally, as text
    assert "Demo <1>" in text
    assert "Not logged in this run: value/explained_variance." in text
    # The only note is the unlogged PPO metric.
    assert out.read_text(encoding="utf-8").count('class="missing"') == 1
    assert "0.700 [0.600, 0.800]" in text and "33 / 4 / 13" in text


def test_training_samples_are_used_without_an_eval_run(runs, tmp_path):
    out = write_report(tmp_path / "r.html", {k: v for k, v in runs.items() if k != "eval"})
    text = "".join(_parse(out).text)
    assert "sft says" in text and "ppo says " + EVIL in text
    assert "No evaluation run summary" in text


def test_missing_inputs_become_notes(tmp_path):
    out = write_report(tmp_path / "empty.html", {"ppo": tmp_path / "nowhere", "rm": None})
    parsed = _parse(out)
    text = "".join(parsed.text)
    assert parsed.images == []
    for note in ("No PPO run metrics", "No SFT run metrics", "No reward-model run summary",
                 "No evaluation run summary", "No over-optimisation study", "No side-by-side samples"):
        assert note in text


def test_malformed_input_spoils_only_its_section(runs, tmp_path):
    (runs["rm"] / "summary.json").write_text(json.dumps({"eval_accuracy": 0.7, "reliability_table": [{"oops": 1}]}))
    out = write_report(tmp_path / "r.html", runs)
    parsed = _parse(out)
    text = "".join(parsed.text)
    assert "This section could not be rendered: KeyError" in text
    assert len(parsed.images) == 3  # PPO, SFT, win rates still drawn


def test_report_command_writes_the_same_report(runs, tmp_path):
    from typer.testing import CliRunner

    from rlhfkit.cli import app

    result = CliRunner().invoke(app, ["report", "--out", str(tmp_path / "cli.html"), "--sft", str(runs["sft"]),
                                      "--ppo", str(runs["ppo"]), "--title", "HH run"])
    assert result.exit_code == 0, result.output
    text = "".join(_parse(tmp_path / "cli.html").text)
    assert "HH run" in text and "sft says" in text and "No reward-model run summary" in text
    assert CliRunner().invoke(app, ["report", "--out", str(tmp_path / "none.html")]).exit_code == 2
