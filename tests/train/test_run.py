"""The run-directory contract: metrics rows, summary, atomic writes, resume truncation."""

import json

from rlhfkit.rundir import Progress, RunDir, read_metrics
from rlhfkit.train.run import checkpoint_to_resume, latest_checkpoint


def test_metrics_summary_and_tensorboard(tmp_path):
    run = RunDir(tmp_path / "r")
    run.save_config({"a": 1}, {"steps": 3})
    run.log(1, {"train/loss": 2.0})
    run.log(2, {"train/loss": 1.5, "eval/loss": float("nan")})
    run.write_summary({"eval_loss": 1.5})
    run.close()
    rows = read_metrics(tmp_path / "r")
    assert [r["step"] for r in rows] == [1, 2] and rows[1]["train/loss"] == 1.5 and rows[1]["eval/loss"] == "nan"
    assert json.loads((tmp_path / "r" / "summary.json").read_text()) == {"eval_loss": 1.5}
    assert "derived" in (tmp_path / "r" / "config.yaml").read_text()
    assert any((tmp_path / "r" / "tb").iterdir())


def test_truncate_on_resume_and_incomplete_checkpoints_ignored(tmp_path):
    run = RunDir(tmp_path, tensorboard=False)
    for step in range(1, 6):
        run.log(step, {"x": step})
    run.truncate_metrics(3)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    (tmp_path / "checkpoints" / "step-00000002").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-00000002" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoints" / ".tmp-step-00000004").mkdir()  # a save killed half-way
    (tmp_path / "checkpoints" / "step-00000003").mkdir()  # no trainer state: incomplete
    assert latest_checkpoint(tmp_path).name == "step-00000002"


def test_a_fresh_start_clears_old_logs_and_refuses_old_checkpoints(tmp_path):
    import pytest

    run = RunDir(tmp_path, tensorboard=False)
    run.log(1, {"x": 1})  # an earlier start that died before its first checkpoint
    assert checkpoint_to_resume(run, resume=True) is None and read_metrics(tmp_path) == []
    done = tmp_path / "checkpoints" / "step-00000004"
    done.mkdir(parents=True)
    (done / "trainer_state.json").write_text("{}")
    run.log(4, {"x": 4})
    assert checkpoint_to_resume(run, resume=True) == done and len(read_metrics(tmp_path)) == 1
    with pytest.raises(ValueError, match="step-00000004.*run.resume=false"):
        checkpoint_to_resume(run, resume=False)


def test_progress_bar_writes_to_stderr_not_stdout(capsys):
    """stdout carries results (`rlhfkit eval cfg > summary.json`); the bar must not mix into it."""
    with Progress(3, "work", enabled=True) as bar:
        for _ in range(3):
            bar.update(loss=0.5)
    out, err = capsys.readouterr()
    assert out == "" and "work" in err and "3/3" in err


def test_resume_keeps_this_runs_optimizer_kernel(tmp_path):
    """A checkpoint whose optimiser groups say `fused: None` (written before AdamW was fused)
    restores the moments and step but keeps the fused kernel this run built."""
    import torch
    from accelerate import Accelerator

    from rlhfkit.config.common import OptimConfig
    from rlhfkit.train.common import build_optimizer
    from rlhfkit.train.run import load_checkpoint, save_checkpoint

    def prepared():
        accelerator = Accelerator(cpu=True)
        model = torch.nn.Linear(4, 2)
        return accelerator, *accelerator.prepare(model, build_optimizer(model.named_parameters(), OptimConfig()))

    accelerator, model, opt = prepared()
    model(torch.ones(3, 4)).sum().backward()
    opt.step()
    path = save_checkpoint(accelerator, RunDir(tmp_path, tensorboard=False), 1, {"step": 1}, keep=1)
    saved = torch.load(path / "optimizer.bin", weights_only=True)
    for group in saved["param_groups"]:
        group.update(fused=None, foreach=None)  # how the older, unfused runs saved them
    torch.save(saved, path / "optimizer.bin")

    accelerator, model, opt = prepared()
    assert load_checkpoint(accelerator, path) == {"step": 1}
    assert all(group["fused"] is True and group["foreach"] is None for group in opt.param_groups)
    moments = [opt.state[p]["exp_avg"] for p in model.parameters()]
    torch.testing.assert_close(moments, [saved["state"][i]["exp_avg"] for i in range(len(moments))])
    # Each step counter where the fused kernel keeps it (a float32 tensor beside the parameter).
    assert all(opt.state[p]["step"].dtype == torch.float32 and opt.state[p]["step"].device == p.device
               for p in model.parameters())
