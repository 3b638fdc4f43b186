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
