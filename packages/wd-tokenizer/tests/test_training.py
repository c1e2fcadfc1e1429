import dataclasses
import json
import math
import shutil

import pytest
import torch
from safetensors.torch import save_file

from wd_tokenizer import VQGAN, LossConfig, TrainConfig, evaluate, frame_batches, train_vqgan
from wd_tokenizer.losses import PatchDiscriminator, adaptive_weight
from wd_tokenizer.metrics import code_histogram, codebook_perplexity, codebook_usage, psnr
from wd_tokenizer.perceptual import LPIPS, LPIPS_WIDTHS, vgg16_features
from wd_tokenizer.checkpoints import checkpoint_dirs
from wd_tokenizer.training import Trainer

PSNR_THRESHOLD = 20.0  # dB on the synthetic clip; untrained ~9 dB, the clip's mean colour ~14 dB


def as_pixels(frames: torch.Tensor) -> torch.Tensor:
    return frames.permute(0, 3, 1, 2).float() / 255.0


def test_a_few_hundred_steps_reach_a_psnr_no_broken_model_reaches(tiny_config, synthetic_clip, tmp_path):
    torch.manual_seed(0)
    model = VQGAN(dataclasses.replace(tiny_config, quantizer="fsq", fsq_levels=[8, 5, 5, 5]))
    pixels = as_pixels(synthetic_clip)
    mean_colour = pixels.mean(dim=(0, 2, 3), keepdim=True).expand_as(pixels)
    assert psnr(mean_colour, pixels) < PSNR_THRESHOLD - 4
    assert evaluate(model, [pixels]).psnr < PSNR_THRESHOLD - 8

    config = TrainConfig(steps=200, lr=2e-3, log_every=50, checkpoint_every=1000,
                         loss=LossConfig(perceptual_weight=0.0, disc_start=10**9))
    model = train_vqgan(model, frame_batches(synthetic_clip, batch_size=8), config, tmp_path, progress=False)
    report = evaluate(model, [pixels])
    assert report.psnr > PSNR_THRESHOLD, report
    assert report.ssim > 0.7
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [50, 100, 150, 200]
    assert records[-1]["l1"] < records[0]["l1"] and 0 < records[-1]["codebook_usage"] <= 1


def train_config(steps: int) -> TrainConfig:
    # The GAN is on from step 1 and two micro-batches make each step, so resume covers every piece of state.
    return TrainConfig(steps=steps, lr=1e-3, grad_accumulation=2, checkpoint_every=2, keep_checkpoints=2,
                       log_every=1, loss=LossConfig(disc_start=1, disc_channels=8, disc_layers=2))


def test_resumed_training_equals_an_uninterrupted_run(tiny_config, synthetic_clip, tmp_path):
    batches = frame_batches(synthetic_clip, batch_size=4, seed=3)

    def fresh_model() -> VQGAN:
        torch.manual_seed(0)
        return VQGAN(tiny_config)

    straight = train_vqgan(fresh_model(), batches, train_config(6), tmp_path / "straight", progress=False)
    train_vqgan(fresh_model(), batches, train_config(4), tmp_path / "resumed", progress=False)
    torch.manual_seed(123)  # a different process state before resuming must not matter
    resumed = train_vqgan(VQGAN(tiny_config), batches, train_config(6), tmp_path / "resumed", progress=False)

    for key, tensor in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], tensor), key
    names = [p.name for p in checkpoint_dirs(tmp_path / "resumed")]
    assert names == ["step_0000004", "step_0000006"]
    discs = [torch.load(tmp_path / run / "checkpoints/step_0000006/trainer_state.pt", weights_only=True)
             for run in ("straight", "resumed")]
    assert discs[0]["step"] == discs[1]["step"] == 6
    records = [json.loads(line) for line in (tmp_path / "resumed/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6] and "gan_weight" in records[-1]


def test_incomplete_checkpoints_are_ignored(tmp_path):
    (tmp_path / "checkpoints/step_0000002").mkdir(parents=True)
    (tmp_path / "checkpoints/.step_0000004.tmp-99").mkdir()
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_0000002"]
    (tmp_path / "checkpoints/step_10000000").mkdir()
    (tmp_path / "checkpoints/step_9999999").mkdir()
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_0000002", "step_9999999", "step_10000000"]


def test_frame_batches_depend_only_on_the_index(synthetic_clip):
    batches = frame_batches(synthetic_clip, batch_size=3, seed=1)
    first = batches(7)
    assert first.shape == (3, 3, 32, 32) and 0.0 <= first.min() and first.max() <= 1.0
    assert torch.equal(batches(7), first) and not torch.equal(batches(8), first)
    with pytest.raises(ValueError, match="uint8 frames"):
        frame_batches(synthetic_clip.float(), batch_size=2)


def test_codebook_metrics():
    counts = code_histogram(torch.tensor([[0, 0, 1, 3]]), codebook_size=4)
    assert counts.tolist() == [2, 1, 0, 1]
    assert codebook_usage(counts) == 0.75
    expected = math.exp(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    assert codebook_perplexity(counts) == pytest.approx(expected)
    assert codebook_perplexity(torch.tensor([5, 5, 5, 5])) == pytest.approx(4.0)


def test_adaptive_weight_balances_gradient_norms():
    layer = torch.nn.Parameter(torch.ones(3))
    weight = adaptive_weight((layer * 2.0).sum(), (layer * 0.5).sum(), layer)
    assert weight.item() == pytest.approx(2.0 / (0.5 + 1e-4 / math.sqrt(3)), rel=1e-3)


def test_patch_discriminator_outputs_patch_logits():
    logits = PatchDiscriminator(channels=8, layers=3)(torch.rand(2, 3, 64, 64))
    assert logits.shape == (2, 1, 6, 6)


def test_lpips_loads_user_weights_and_measures_distance(tmp_path):
    torch.manual_seed(0)
    vgg = {f"features.{k}": v for k, v in vgg16_features().state_dict().items()}
    vgg["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision files carry the classifier too; it is ignored
    save_file(vgg, tmp_path / "vgg16.safetensors")
    lins = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(LPIPS_WIDTHS)}
    torch.save(lins, tmp_path / "vgg.pth")
    lpips = LPIPS.from_files(tmp_path / "vgg16.safetensors", tmp_path / "vgg.pth")
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    assert torch.equal(lpips(x, x), torch.zeros(2))
    assert (lpips(x, y) > 0).all()
    torch.save({"lin0.model.1.weight": lins["lin0.model.1.weight"]}, tmp_path / "partial.pth")
    with pytest.raises(KeyError, match="lins.1.weight"):
        LPIPS.from_files(tmp_path / "vgg16.safetensors", tmp_path / "partial.pth")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_and_video_api_on_cuda(tiny_config, synthetic_clip, tmp_path):
    torch.manual_seed(0)
    model = VQGAN(tiny_config).cuda()
    config = TrainConfig(steps=3, log_every=1, loss=LossConfig(disc_start=1, disc_channels=8, disc_layers=2))
    trainer = Trainer(model, config, tmp_path)
    assert trainer.bf16 == torch.cuda.is_bf16_supported()
    model = trainer.fit(frame_batches(synthetic_clip, batch_size=4), progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(math.isfinite(r["l1"]) and math.isfinite(r["gan"]) for r in records[1:])
    ids = model.encode_video(synthetic_clip, chunk_size=3)
    assert ids.device.type == "cpu" and ids.shape == (8, 8, 8)
    assert model.decode_video(ids).shape == synthetic_clip.shape
    reloaded = VQGAN.from_pretrained(checkpoint_dirs(tmp_path)[-1] / "model", device="cuda")
    assert torch.equal(reloaded.encode_video(synthetic_clip), ids)


def test_resume_after_a_crash_keeps_one_metrics_line_per_step(tiny_config, synthetic_clip, tmp_path):
    config = TrainConfig(steps=4, lr=1e-3, checkpoint_every=2, keep_checkpoints=5, log_every=1,
                         loss=LossConfig(perceptual_weight=0.0, disc_start=10**9, disc_channels=8, disc_layers=2))
    batches = frame_batches(synthetic_clip, batch_size=2)
    torch.manual_seed(0)
    train_vqgan(VQGAN(tiny_config), batches, config, tmp_path, progress=False)
    # A crash after logging steps 3 and 4 but before checkpoint 4 was complete, mid-way through a line.
    shutil.rmtree(tmp_path / "checkpoints/step_0000004")
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "l1"')
    train_vqgan(VQGAN(tiny_config), batches, dataclasses.replace(config, steps=5), tmp_path, progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]


def test_a_spent_time_budget_stops_training_with_a_checkpoint_and_holds_across_resumes(tiny_config, synthetic_clip,
                                                                                        tmp_path):
    config = TrainConfig(steps=1000, checkpoint_every=1000, time_budget_minutes=1e-6,
                         loss=LossConfig(perceptual_weight=0.0, disc_start=10**9))
    batches = frame_batches(synthetic_clip, batch_size=2)
    train_vqgan(VQGAN(tiny_config), batches, config, tmp_path, progress=False)
    assert [path.name for path in checkpoint_dirs(tmp_path)] == ["step_0000001"]  # stopped after its first step
    state = torch.load(tmp_path / "checkpoints/step_0000001/trainer_state.pt", weights_only=True)
    assert state["trained_seconds"] > 6e-5
    train_vqgan(VQGAN(tiny_config), batches, config, tmp_path, progress=False)  # the budget is the run's, not the call's
    assert [path.name for path in checkpoint_dirs(tmp_path)] == ["step_0000001"]


def test_bad_training_settings_are_refused(tiny_model):
    with pytest.raises(ValueError, match="'grad_accumulation': 0"):
        TrainConfig(grad_accumulation=0)
    with pytest.raises(ValueError, match="'steps': -1"):
        TrainConfig(steps=-1)
    with pytest.raises(ValueError, match="mixed_precision"):
        TrainConfig(mixed_precision="fp16")
    with pytest.raises(ValueError, match="time_budget_minutes"):
        TrainConfig(time_budget_minutes=float("inf"))
    with pytest.raises(ValueError, match="at least one batch"):
        evaluate(tiny_model, [])
