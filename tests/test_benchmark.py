"""The benchmark's building blocks (timing, memory, FLOP counting, peak table, steps) and a smoke run."""
from __future__ import annotations

import json
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ldm.benchmark import timing
from ldm.benchmark.flops import activation_checkpointing_disabled, count_flops, forward_flops
from ldm.benchmark.hardware import lookup_peak_tflops
from ldm.benchmark.models import build_ldm, build_vqgan, latent_size, load_benchmark_config
from ldm.benchmark.report import format_report
from ldm.benchmark.runner import BenchmarkRun, Settings, check_targets
from ldm.benchmark.steps import diffusion_training_step, model_optimizers, synthetic_batch, vqgan_training_step
from ldm.util import ConfigError

SMALL = "configs/benchmark/small.yaml"
TINY = ["benchmark.image_size=[32,32]", "benchmark.batch_size=2"]


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture
def tiny_config(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    return load_benchmark_config(SMALL, TINY)


# ---------------------------------------------------------------------------------------- timing
def test_measure_reports_the_median_of_the_timed_repeats_after_warmup():
    durations = iter([0.2, 0.2, 0.03, 0.01, 0.05])  # two warm-up calls, then three timed ones
    calls = []

    def fn():
        calls.append(1)
        time.sleep(next(durations))

    result = timing.measure(fn, "cpu", repeats=3, warmup=2)
    assert len(calls) == 5 and len(result.times_s) == 3
    assert result.median_s == sorted(result.times_s)[1]
    assert 0.025 <= result.median_s < 0.2  # the 0.03 s call, not a warm-up one
    assert result.min_s < result.median_s < result.max_s
    with pytest.raises(ValueError, match="repeats"):
        timing.measure(fn, "cpu", repeats=0)


def test_cpu_peak_memory_is_per_window():
    def allocate():
        x = torch.ones(40_000_000)  # 160 MB, touched
        return float(x[-1])

    with timing.PeakMemory("cpu") as big:
        allocate()
    with timing.PeakMemory("cpu") as small:
        pass
    assert big.peak_bytes is not None and big.peak_bytes > 150e6
    if big.kind != timing.RSS_WINDOW:
        pytest.skip("the RSS high-water mark cannot be reset here (no /proc/self/clear_refs)")
    assert small.peak_bytes < big.peak_bytes - 100e6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_memory_counts_an_allocation_in_the_window():
    with timing.PeakMemory("cuda") as memory:
        x = torch.empty(64 * 2 ** 20, dtype=torch.uint8, device="cuda")
        del x
    assert memory.kind == timing.CUDA_MEMORY and memory.peak_bytes >= 64 * 2 ** 20


# ---------------------------------------------------------------------------------------- FLOPs
def test_convolution_and_linear_flops_by_hand():
    conv, lin = nn.Conv2d(4, 8, 3, padding=1), nn.Linear(16, 5)
    assert forward_flops(conv, torch.randn(2, 4, 10, 12)).total == 2 * (2 * 10 * 12) * 8 * (4 * 9)
    x = torch.randn(7, 16, requires_grad=True)
    # forward x W^T, backward dX = dY W and dW = dY^T X: three matmuls of the same size
    assert count_flops(lambda: lin(x).sum().backward()).total == 3 * 2 * 7 * 16 * 5


def test_cpu_sdpa_is_counted_like_explicit_attention():
    q, k, v = (torch.randn(2, 3, 20, 8, requires_grad=True) for _ in range(3))

    def fused():
        F.scaled_dot_product_attention(q, k, v).sum().backward()

    def explicit():
        (torch.softmax(q @ k.transpose(-1, -2) * 8 ** -0.5, -1) @ v).sum().backward()

    counted = count_flops(fused).total
    assert counted == count_flops(explicit).total == 3 * (2 * 2 * 3 * 20 * 20 * 8 * 2)


def test_checkpointing_switches_are_turned_off_and_restored():
    class Objective:
        decoder_checkpointing = True

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(2, 2)
            self.inner.use_checkpoint = True
            self.objective = Objective()
            self.objective.decoder_checkpointing = True

    holder = Holder()
    with activation_checkpointing_disabled(holder):
        assert holder.inner.use_checkpoint is False and holder.objective.decoder_checkpointing is False
    assert holder.inner.use_checkpoint is True and holder.objective.decoder_checkpointing is True


# ---------------------------------------------------------------------------------------- peak table
@pytest.mark.parametrize("name, precision, peak", [
    ("NVIDIA H100 80GB HBM3", "bf16-mixed", 989.4), ("NVIDIA H100 PCIe", "bf16-mixed", 756.0),
    ("NVIDIA H200", "bf16-mixed", 989.4), ("NVIDIA A100-SXM4-80GB", "bf16-mixed", 312.0),
    ("NVIDIA RTX A6000", "bf16-mixed", 154.8), ("NVIDIA RTX A6000", "32", 77.4),
    ("NVIDIA GeForce GTX 1080", "bf16-mixed", None)])
def test_peak_table_matches_gpu_names(name, precision, peak):
    assert lookup_peak_tflops(name, precision) == peak


# ---------------------------------------------------------------------------------------- batch and steps
def test_synthetic_batch_follows_the_data_conventions():
    b = synthetic_batch(4, (32, 40), lesion_fraction=0.5)
    assert b["ctp"].shape == (4, 15, 32, 40) and b["mri"].shape == (4, 2, 32, 40)
    assert b["mask"].shape == b["lesion"].shape == (4, 1, 32, 40)
    outside = b["mask"].expand_as(b["mri"]) == 0
    assert torch.all(b["mri"][outside] == -1) and b["mri"].min() >= -1 and b["mri"].max() <= 1
    assert set(b["lesion"].unique().tolist()) <= {0.0, 1.0} and torch.all(b["lesion"] <= b["mask"])
    assert [bool(b["lesion"][i].any()) for i in range(4)] == [True, True, False, False]


def test_diffusion_step_trains_the_unet_updates_the_ema_and_keeps_the_first_stage(tiny_config):
    model = build_ldm(tiny_config)
    (opt,) = model_optimizers(model, 1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = diffusion_training_step(model, opt, synthetic_batch(2, (32, 32)))()
    after = model.state_dict()
    assert torch.isfinite(loss)
    assert not torch.equal(before["model.diffusion_model.input_blocks.0.0.weight"],
                           after["model.diffusion_model.input_blocks.0.0.weight"])
    assert not torch.equal(before["cond_stage_model.channel_mapper.weight"], after["cond_stage_model.channel_mapper.weight"])
    assert int(after["model_ema.num_updates"]) == 1
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("first_stage_model."))


def test_vqgan_step_uses_both_optimisers_and_keeps_the_discriminator_out_of_the_autoencoder_loss(tiny_config):
    model = build_vqgan(tiny_config)
    opt_ae, opt_disc = model_optimizers(model, 1e-3)
    disc = model.loss.discriminator
    seen = []  # gradients the discriminator's first conv receives, per backward pass
    disc.main[0].weight.register_hook(lambda g: seen.append(g))
    step = vqgan_training_step(model, (opt_ae, opt_disc), synthetic_batch(2, (32, 32)))
    d_before, e_before = disc.main[0].weight.clone(), model.encoder.conv_in.weight.clone()
    step()
    assert len(seen) == 1  # only the discriminator loss reaches it, not the generator loss
    assert not torch.equal(disc.main[0].weight, d_before) and not torch.equal(model.encoder.conv_in.weight, e_before)
    assert all(p.requires_grad for p in disc.parameters()) and all(p.grad is None for p in model.parameters())
    assert len(opt_ae.state) > 0 and len(opt_disc.state) > 0


# ---------------------------------------------------------------------------------------- runs
def test_small_benchmark_runs_end_to_end_and_its_figures_fit_together(tiny_config):
    settings = Settings(device=torch.device("cpu"), precision="32", repeats=1, warmup=0, sample_steps=2)
    report = BenchmarkRun(tiny_config, settings, log=lambda msg: None).run()
    r = report["results"]
    assert set(r) >= {"flops", "ldm", "lapt", "sample", "vqgan", "lapt_over_ldm"}
    assert r["lapt_over_ldm"] == pytest.approx(r["lapt"]["median_s"] / r["ldm"]["median_s"])
    f = r["flops"]
    # post-training adds one decoder forward and its input-gradient pass (attention's backward is
    # two forwards' worth, the codebook search has none): about two decoder forwards
    extra = (r["lapt"]["model_flop_per_step"] - r["ldm"]["model_flop_per_step"]) / 2
    assert 1.9 < extra / (f["decoder_forward_gflop_per_slice"] * 1e9) < 2.1
    s = r["sample"]
    assert s["slices_per_s"] == pytest.approx(2 / s["median_s"])
    assert s["model_flop_per_batch"] >= 2 * 2 * f["unet_forward_gflop_per_slice"] * 1e9
    assert r["vqgan"]["peak_memory_bytes"] > 0 and r["ldm"]["achieved_tflops"] > 0
    assert report["latent_size"] == [8, 8] and report["machine"]["device"] == "cpu"
    assert report["targets"]["lapt_over_ldm"]["verdict"] in ("pass", "FAIL")
    table = format_report(report)
    assert "post-training step" in table and "slices/s" in table
    json.dumps(report)


def test_bf16_on_a_cpu_without_native_bf16_is_flagged(tiny_config, monkeypatch):
    import ldm.benchmark.hardware as hardware

    logged = []
    for native in (True, False):
        monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: native)
        for precision in ("32", "bf16-mixed"):
            run = BenchmarkRun(tiny_config, Settings(device=torch.device("cpu"), precision=precision),
                               log=logged.append)
            assert run.machine["cpu_bf16"] is native
    assert len(logged) == 1 and "no native bf16" in logged[0]  # bf16-mixed on the emulating CPU only


def test_command_line_writes_json_and_rejects_bad_input(repo_root, monkeypatch, tmp_path, capsys):
    import importlib.util

    monkeypatch.chdir(repo_root)
    spec = importlib.util.spec_from_file_location("benchmark_script", repo_root / "scripts" / "benchmark.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "flops.json"
    assert script.main(["--config", SMALL, "--only", "flops", "--device", "cpu", "--json", str(out),
                        "benchmark.image_size=[32,32]"]) == 0
    saved = json.loads(out.read_text())
    assert saved["results"]["flops"]["unet_params"] > 0 and saved["overrides"] == ["benchmark.image_size=[32,32]"]
    assert "UNet" in capsys.readouterr().out
    assert script.main(["--config", SMALL, "--only", "ldm,sampling"]) == 2
    assert script.main(["--config", SMALL, "ldm.params.unet_config.params.no_such_switch=1"]) == 2
    assert script.main(["--config", SMALL, "--batch", "0"]) == 2
    assert "--batch must be at least 1" in capsys.readouterr().err


def test_targets_pass_fail_and_not_applicable(tiny_config):
    tiny_config.benchmark.targets = {"max_lapt_over_ldm": 2.5, "max_lapt_memory_gb": 48, "min_utilisation": 0.45}
    report = {"machine": {"device": "cpu"}, "results": {"lapt_over_ldm": 3.0, "lapt": {"peak_memory_bytes": 1e9}}}
    verdicts = check_targets(tiny_config, report)
    assert verdicts["lapt_over_ldm"]["verdict"] == "FAIL"
    assert verdicts["lapt_peak_memory_gb"]["verdict"].startswith("n/a (needs a GPU")
    report = {"machine": {"device": "cuda"}, "results": {"lapt_over_ldm": 1.4, "lapt": {"peak_memory_bytes": 40e9},
                                                        "ldm": {"utilisation": 0.5}}}
    verdicts = check_targets(tiny_config, report)
    assert [v["verdict"] for v in verdicts.values()] == ["pass", "pass", "pass"]


def test_config_errors_are_named(repo_root, monkeypatch, tmp_path):
    monkeypatch.chdir(repo_root)
    with pytest.raises(ConfigError, match="image_size"):
        load_benchmark_config(SMALL, ["benchmark.image_size=[32]"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("benchmark: {}\nvqgan: {}\nldm: {}\n")
    with pytest.raises(ConfigError, match="'lapt'"):
        load_benchmark_config(bad)
    with pytest.raises(ConfigError, match="divisible"):
        latent_size(load_benchmark_config(SMALL, ["benchmark.image_size=[30,32]"]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_benchmark_runs_on_cuda_in_bf16(tiny_config):
    settings = Settings(device=torch.device("cuda"), precision="bf16-mixed", repeats=1, warmup=1, sample_steps=2,
                        peak_tflops=100.0)
    report = BenchmarkRun(tiny_config, settings, log=lambda msg: None).run()
    r = report["results"]
    assert r["ldm"]["memory_kind"] == timing.CUDA_MEMORY and r["lapt"]["peak_memory_bytes"] > 0
    assert r["ldm"]["utilisation"] == pytest.approx(r["ldm"]["achieved_tflops"] / 100.0)
    assert report["machine"]["device_name"] == torch.cuda.get_device_name()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_checks_script_refuses_without_cuda(repo_root, tmp_path):
    import subprocess
    import sys

    result = subprocess.run(["bash", str(repo_root / "scripts" / "gpu_checks.sh"), str(tmp_path / "out")],
                            env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert "no CUDA device" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()  # nothing run, nothing written


def test_operator_shares_find_the_dominant_operator_and_sum_to_one():
    """A step that is almost all one matrix product: the profile must say so, with its call count."""
    from ldm.benchmark.profile import format_shares, operator_shares

    a, b, v = torch.randn(384, 384), torch.randn(384, 384), torch.randn(8)

    def step() -> None:
        for _ in range(3):
            a @ b
        v + 1

    rows = operator_shares(step, repeats=2, device=torch.device("cpu"), top=3)
    assert rows[0]["op"] in ("aten::mm", "aten::matmul") and rows[0]["share"] > 0.5
    assert rows[0]["calls_per_step"] == 3
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    assert len(rows) <= 4 and all(0 <= r["share"] <= 1 for r in rows)
    assert format_shares("x", rows)[1].split()[0] == rows[0]["op"]
    with pytest.raises(ValueError, match="repeats"):
        operator_shares(step, repeats=0, device=torch.device("cpu"))


def test_profile_of_the_benchmark_parts_is_reported(tiny_config):
    settings = Settings(device=torch.device("cpu"), precision="32", parts=["ldm", "sample"], repeats=1, warmup=0,
                        sample_steps=2, count_flops=False, profile=True)
    report = BenchmarkRun(tiny_config, settings, log=lambda msg: None).run()
    for part in ("ldm", "sample"):
        rows = report["results"][part]["profile"]
        assert sum(r["share"] for r in rows) == pytest.approx(1.0)
        assert any("conv" in r["op"] for r in rows)  # a UNet's time is in its convolutions
    assert "profile of stage-2 training step" in format_report(report)
