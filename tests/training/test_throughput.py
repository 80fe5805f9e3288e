"""Where a run's time went and its MFU: the peak table, the launcher's clock, run.json's blocks."""

from __future__ import annotations

import pytest

from mixer.training.throughput import breakdown, peak_flops, throughput
from mixer_litgpt import launch


@pytest.mark.parametrize("name, entry, flops", [
    ("NVIDIA H200", "H200", 989.5e12),  # what torch reports on the H200 SXM Lightning could not place
    ("NVIDIA H200 NVL", "H200 NVL", 835.5e12),
    ("NVIDIA H100 80GB HBM3", "H100", 989.5e12),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756e12),
    ("NVIDIA H100 NVL", "H100 NVL", 835.5e12),
    ("NVIDIA A100-SXM4-80GB", "A100", 312e12),
    ("NVIDIA A100 80GB PCIe", "A100", 312e12),
    ("NVIDIA B200", "B200", 2.25e15),
])
def test_peak_table_names_the_common_accelerators(name, entry, flops):
    got = peak_flops(name)
    assert got[:2] == (entry, flops) and "datasheet" in got[2]


def test_mfu_only_where_the_peak_and_precision_are_known():
    # the olmo-1b figures: 71k tokens/s at ~7.86 GFLOP per token is ~56% of an H200
    got = throughput(71_000 * 64, 64.0, 7.86e9, "NVIDIA H200", 1, "bf16-mixed")
    assert got["tokens_per_second"] == 71_000 and got["mfu"] == pytest.approx(0.564, abs=1e-3)
    assert got["peak"]["device"] == "H200" and got["model_flops_per_second"] == pytest.approx(5.58e14, rel=1e-3)
    assert throughput(1000, 1.0, 1e9, "NVIDIA H200", 8, "bf16-true")["mfu"] == pytest.approx(1e12 / 8 / 989.5e12)
    cpu = throughput(1000, 2.0, 1e6, "cpu", 1, "32-true")
    assert cpu["mfu"] is None and "no peak-FLOPs entry for 'cpu'" in cpu["mfu_note"]
    fp32 = throughput(1000, 2.0, 1e6, "NVIDIA H100 80GB HBM3", 1, "32-true")
    assert fp32["mfu"] is None and "precision 32-true" in fp32["mfu_note"]


def test_the_clock_splits_the_launch_into_its_parts():
    clock = launch.Clock()
    t0 = clock.t0
    clock.info.update(accumulation=1, tokens_per_iteration=100)
    clock.spans = [("sanity_check", t0 + 1.0, t0 + 1.5),  # before training: startup
                   ("validation", t0 + 9.0, t0 + 10.0),  # during step 4
                   ("checkpoints", t0 + 10.0, t0 + 12.0)]
    # 6 iterations: the first two slow (compiling), then 1 s each; one holds a validation and a save
    clock.marks = [t0 + 2.0, t0 + 6.0, t0 + 8.0, t0 + 9.0, t0 + 13.0, t0 + 14.0]
    clock.fit_end = t0 + 15.0
    got = clock.summary()
    assert got["startup"] == pytest.approx(2.0)
    assert got["compile"] == pytest.approx(3.0 + 1.0)  # iterations of 4 s and 2 s against a median of 1 s
    assert got["train_steps"] == pytest.approx(6 * 1.0)
    assert got["validation"] == pytest.approx(1.0) and got["checkpoints"] == pytest.approx(2.0)
    assert got["tokens"] == 600 and got["tokens_per_second"] == pytest.approx(100.0)
    parts = sum(got[k] for k in ("startup", "compile", "train_steps", "validation", "checkpoints", "other"))
    assert parts == pytest.approx(got["seconds"], abs=1e-3)


def test_breakdown_accounts_for_the_whole_command():
    trainer = {"startup": 30.0, "compile": 20.0, "train_steps": 17.0, "validation": 1.0, "checkpoints": 9.0}
    got = breakdown(trainer, training=80.0, evaluation=25.0, total=107.0)
    assert got["other"] == pytest.approx(107 - 77 - 25) and got["train_steps_share"] == pytest.approx(17 / 107, 1e-3)
    plain = breakdown(None, training=10.0, evaluation=None, total=11.0)  # a trainer that gives no account
    assert plain == {"seconds": 11.0, "training": 10.0, "evaluation": None, "other": 1.0}
