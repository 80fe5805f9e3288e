"""Light checkpoints (launch.save_light): weights alone in every checkpoint, in their training
dtype; the whole state a resume needs in the latest step checkpoint only; nothing torn."""

from __future__ import annotations

import os

import pytest
import torch
from fakefabric import FakeFabric, litgpt_save

from mixer_litgpt import checkpoints as ckpts
from mixer_litgpt import launch


def _state(model, optimizer, step: int) -> dict:
    return {"model": model, "optimizer": optimizer, "train_dataloader": {"iteration": step * 4}, "iter_num": step * 4,
            "step_count": step}


def _trained(dtype=torch.float32):
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 8).to(dtype)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(2, 8, dtype=dtype)).sum().backward()
    optimizer.step()
    return model, optimizer


def _save(run, model, optimizer, step: int, name: str | None = None, last_step: int | None = 3, save=litgpt_save):
    folder = run / "out" / (name or f"step-{step:08d}")
    launch.save_light(FakeFabric(), _state(model, optimizer, step), None, folder, save, resume=True,
                      last_step=last_step)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_only_the_latest_step_keeps_the_resume_state_and_final_links_the_last_step(tmp_path, dtype):
    model, optimizer = _trained(dtype)
    for step in (1, 2, 3):
        _save(tmp_path, model, optimizer, step)
        if step == 1:
            assert ckpts.resume_point(tmp_path) == tmp_path / "out" / "step-00000001" / "resume.pth"
    _save(tmp_path, model, optimizer, 3, name="final")
    out = tmp_path / "out"
    # step 2's resume state replaced step 1's; the last step writes none (the run ends right after)
    assert sorted(p.parent.name for p in out.glob("*/resume.pth")) == ["step-00000002"]
    assert ckpts.resume_point(tmp_path) == out / "step-00000002" / "resume.pth"
    resume = torch.load(out / "step-00000002" / "resume.pth", weights_only=True)
    assert set(resume) == {"model", "optimizer", "train_dataloader", "iter_num", "step_count"}
    for name in ("step-00000001", "step-00000002", "step-00000003", "final"):
        weights = torch.load(out / name / "lit_model.pth", weights_only=True)
        assert set(weights) == {"model", "iter_num", "step_count", "mixer"}  # no optimizer state
        assert {t.dtype for t in weights["model"].values()} == {dtype}  # the dtype it trained in
        assert (out / name / "model_config.yaml").is_file()
    assert os.path.samefile(out / "final" / "lit_model.pth", out / "step-00000003" / "lit_model.pth")
    assert not list(out.glob("*/.*partial"))
    assert ckpts.step_of(out / "final") == 3
    full = (out / "step-00000002" / "resume.pth").stat().st_size
    light = (out / "step-00000002" / "lit_model.pth").stat().st_size
    assert light < full  # AdamW keeps two tensors per weight
    assert ckpts.drop_resume_states(tmp_path) == [out / "step-00000002" / "resume.pth"]
    assert ckpts.resume_point(tmp_path) is None  # a finished run: nothing to resume from


def test_a_final_after_an_unsaved_last_step_is_written_not_linked(tmp_path):
    model, optimizer = _trained()
    _save(tmp_path, model, optimizer, 2, last_step=3)
    _save(tmp_path, model, optimizer, 3, name="final", last_step=3)
    out = tmp_path / "out"
    assert (out / "final" / "lit_model.pth").stat().st_nlink == 1
    assert torch.load(out / "final" / "lit_model.pth", weights_only=True)["step_count"] == 3


def test_a_save_killed_midway_leaves_no_torn_file_and_the_previous_resume_state(tmp_path):
    model, optimizer = _trained()
    _save(tmp_path, model, optimizer, 1)

    def dies(fabric, state, tokenizer_dir, checkpoint_file):
        checkpoint_file.parent.mkdir(parents=True, exist_ok=True)
        checkpoint_file.write_bytes(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # the process is gone here

    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, model, optimizer, 2, save=dies)
    out = tmp_path / "out"
    assert not (out / "step-00000002" / "lit_model.pth").exists()
    assert ckpts.resume_point(tmp_path) == out / "step-00000001" / "resume.pth"
    assert ckpts.drop_resume_states(tmp_path)  # the torn temporary goes with the resume states
    assert not list(out.glob("*/.*partial"))


def test_runs_of_an_older_mixer_resume_from_their_whole_state_files(tmp_path):
    model, optimizer = _trained()
    for step in (1, 2):
        folder = tmp_path / "out" / f"step-{step:08d}"
        litgpt_save(FakeFabric(), _state(model, optimizer, step), None, folder / "lit_model.pth")
    assert ckpts.resume_point(tmp_path) == tmp_path / "out" / "step-00000002" / "lit_model.pth"
    _save(tmp_path, model, optimizer, 3, last_step=10)  # resumed by this mixer: light from now on
    assert ckpts.resume_point(tmp_path) == tmp_path / "out" / "step-00000003" / "resume.pth"
    weights_only = tmp_path / "w"
    _save(weights_only, model, optimizer, 3, last_step=3)
    assert ckpts.resume_point(weights_only) is None


def _install(monkeypatch, tmp_path, seconds: str, hooks: dict | None = None, resumed_at: int = 0):
    from litgpt import pretrain

    for name in ("validate", "save_checkpoint", "get_lr", "fit"):
        monkeypatch.setattr(pretrain, name, getattr(pretrain, name))  # restored after the test
    monkeypatch.setattr(pretrain, "save_checkpoint", litgpt_save)
    monkeypatch.setenv("MIXER_RESUME_SECONDS", seconds)
    launch.install(hooks or {}, tmp_path / "early_stopping.jsonl", resumed_at=resumed_at)
    return pretrain


@pytest.mark.parametrize("seconds, kept", [("0", ["step-00000003"]), ("3600", [])])
def test_resume_states_are_written_at_most_every_so_many_seconds(monkeypatch, tmp_path, seconds, kept):
    """A short run (a finetune of a minute) pays for no resume state by default; MIXER_RESUME_SECONDS=0
    writes one at every step checkpoint (the latest kept)."""
    pretrain = _install(monkeypatch, tmp_path, seconds)
    model, optimizer = _trained()
    for step in (1, 2, 3):
        pretrain.save_checkpoint(FakeFabric(), _state(model, optimizer, step), None,
                                 tmp_path / "out" / f"step-{step:08d}" / "lit_model.pth")
    assert sorted(p.parent.name for p in (tmp_path / "out").glob("*/resume.pth")) == kept
    assert len(list((tmp_path / "out").glob("*/lit_model.pth"))) == 3


def test_a_resume_from_an_earlier_checkpoint_drops_the_later_judgements(monkeypatch, tmp_path):
    """Steps after the resume point train again: their early-stopping judgements are made again."""
    import json

    log = tmp_path / "early_stopping.jsonl"
    rows = [{"checkpoint": f"step-{s:08d}", "val_loss": v, "best_loss": b, "without_improvement": w}
            for s, v, b, w in ((2, 3.0, 3.0, 0), (4, 2.5, 2.5, 0), (6, 2.6, 2.5, 1), (8, 2.7, 2.5, 2))]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "config.yaml").write_text(f"resume: {tmp_path}/out/step-00000004/resume.pth\n")
    assert launch.resume_step(tmp_path / "config.yaml") == 4
    stop = launch.EarlyStopping(2, 0.0, log, resumed_at=4)
    assert (stop.best, stop.bad) == (2.5, 0)
    assert stop.judge(2.4) is False
    stop.record(FakeFabric(), "step-00000006", 2.4)
    assert [json.loads(x)["checkpoint"] for x in log.read_text().splitlines()] == [
        "step-00000002", "step-00000004", "step-00000006"]
    assert launch.EarlyStopping(2, 0.0, log, resumed_at=0).bad == 0  # a fresh start: nothing counts
    (tmp_path / "config.yaml").write_text("resume: false\n")
    assert launch.resume_step(tmp_path / "config.yaml") == 0
