"""WorldDreamerPipeline on a tiny untrained pipeline: every task's shapes, exact preservation of known tokens,
rollouts, guidance batching, seeds, save/load round trips and load errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from wd_stpt import STPT
from wd_stpt import get_config as stpt_config

from wd_cli import devices
from wd_cli.devices import BF16_CPU_MIN_SPEEDUP, cpu_bf16_speedup, resolve_device, resolve_dtype
from wd_cli.pipeline import Generation, PipelineDefaults, WorldDreamerPipeline
from wd_cli.text_encoders import T5TextEncoder
from wd_cli.windowing import SPAN_WINDOWS, window_starts

RNG = np.random.default_rng(0)
VIDEO = RNG.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
IMAGE = RNG.integers(0, 256, (48, 40, 3), dtype=np.uint8)  # not the model's size: resized and centre-cropped
ACTIONS = np.stack([np.linspace(-0.1, 0.1, 6), np.full(6, 5.0)], axis=1).astype(np.float32)

TASKS = {
    "text_to_video": lambda pipe, **o: pipe.text_to_video("a red circle moves up", **o),
    "image_to_video": lambda pipe, **o: pipe.image_to_video(IMAGE, "a red circle", **o),
    "action_to_video": lambda pipe, **o: pipe.action_to_video(IMAGE, ACTIONS, **o),
    "inpaint": lambda pipe, **o: pipe.inpaint(VIDEO, box=(0, 0, 16, 16), prompt="a blue square", **o),
    "stylize": lambda pipe, **o: pipe.stylize(VIDEO, "green", mask_ratio=0.25, **o),
    "interpolate": lambda pipe, **o: pipe.interpolate(VIDEO[:3], every=3, **o),
    "outpaint": lambda pipe, **o: pipe.outpaint(VIDEO[:, :, 8:24], **o),
    "text_and_actions": lambda pipe, **o: pipe.text_to_video("the car turns left", ACTIONS, **o),
}
FRAMES = {"text_to_video": 4, "image_to_video": 4, "action_to_video": 6, "inpaint": 5, "stylize": 5,
          "interpolate": 7, "outpaint": 5, "text_and_actions": 6}


@pytest.mark.parametrize("task", TASKS)
def test_every_task_returns_frames_tokens_and_known(tiny_pipeline: WorldDreamerPipeline, task: str) -> None:
    result = TASKS[task](tiny_pipeline, seed=1)
    assert isinstance(result, Generation)
    frames = FRAMES[task]
    assert result.frames.shape == (frames, 32, 32, 3) and result.frames.dtype == np.uint8
    assert result.tokens.shape == (frames, 4, 4) and result.tokens.dtype == np.int64
    assert result.known.shape == (frames, 4, 4) and result.known.dtype == bool
    assert 0 <= result.tokens.min() and result.tokens.max() < tiny_pipeline.mask_id
    assert np.array_equal(result.frames, tiny_pipeline.decode(torch.from_numpy(result.tokens)))


def test_image_to_video_keeps_the_given_frames_exactly(tiny_pipeline: WorldDreamerPipeline) -> None:
    given = RNG.integers(0, 256, (3, 48, 40, 3), dtype=np.uint8)
    result = tiny_pipeline.image_to_video(given, "a red circle", num_frames=7, seed=0)  # rolled out past 4
    assert result.tokens.shape == (7, 4, 4)
    assert np.array_equal(result.tokens[:3], tiny_pipeline.encode(given).numpy())
    assert result.known[:3].all() and not result.known[3:].any()


def test_inpaint_keeps_every_token_outside_the_region(tiny_pipeline: WorldDreamerPipeline) -> None:
    source = tiny_pipeline.encode(VIDEO).numpy()
    boxed = tiny_pipeline.inpaint(VIDEO, box=(0, 0, 16, 16), seed=0)
    expected_unknown = np.zeros((5, 4, 4), dtype=bool)
    expected_unknown[:, :2, :2] = True  # a 16x16 pixel box is 2x2 tokens at factor 8
    assert np.array_equal(~boxed.known, expected_unknown)
    assert np.array_equal(boxed.tokens[boxed.known], source[boxed.known])
    # A per-frame pixel mask: one pixel regenerates its whole 8x8 token cell, frame 0 changes nothing.
    mask = np.zeros((5, 32, 32), dtype=bool)
    mask[1:, 9, 30] = True
    masked = tiny_pipeline.inpaint(VIDEO, mask=mask, seed=0)
    assert (~masked.known).sum() == 4 and (~masked.known[1:, 1, 3]).all()
    assert np.array_equal(masked.tokens[masked.known], source[masked.known])
    assert np.array_equal(masked.tokens[0], source[0])


def test_stylize_redraws_the_ratio_and_keeps_the_rest(tiny_pipeline: WorldDreamerPipeline) -> None:
    source = tiny_pipeline.encode(VIDEO).numpy()
    result = tiny_pipeline.stylize(VIDEO, "green", mask_ratio=0.25, seed=2)
    assert (~result.known).sum() == round(0.25 * source.size)
    assert np.array_equal(result.tokens[result.known], source[result.known])


def test_interpolation_keeps_the_keyframes_exactly(tiny_pipeline: WorldDreamerPipeline) -> None:
    keyframes = VIDEO[:3]
    result = tiny_pipeline.interpolate(keyframes, every=3, seed=0)  # 7 frames: windows of 4 end on keyframes
    assert np.array_equal(result.tokens[::3], tiny_pipeline.encode(keyframes).numpy())
    assert result.known[::3].all() and not result.known[1::3].any() and not result.known[2::3].any()


def test_outpainting_keeps_the_inside_and_widens_a_narrow_video(tiny_pipeline: WorldDreamerPipeline) -> None:
    bordered = tiny_pipeline.outpaint(VIDEO, border=(8, 0, 8, 16), seed=0)  # rows 1..2, columns 0..1 kept
    expected = np.zeros((5, 4, 4), dtype=bool)
    expected[:, 1:3, :2] = True
    assert np.array_equal(bordered.known, expected)
    assert np.array_equal(bordered.tokens[expected], tiny_pipeline.encode(VIDEO).numpy()[expected])
    # A 32 x 16 video fits inside the 32 x 32 frame at columns 8..23: token columns 1..2 are given.
    narrow = VIDEO[:, :, 8:24]
    widened = tiny_pipeline.outpaint(narrow, seed=0)
    assert widened.known[:, :, 1:3].all() and not widened.known[:, :, [0, 3]].any()
    canvas = np.concatenate([np.repeat(narrow[:, :, :1], 8, axis=2), narrow, np.repeat(narrow[:, :, -1:], 8, axis=2)],
                            axis=2)  # edge replication, the outpainting baseline
    assert np.array_equal(widened.tokens[widened.known], tiny_pipeline.encode(canvas).numpy()[widened.known])


def test_text_and_actions_reach_the_network_together(
    tiny_pipeline: WorldDreamerPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    conditions = []
    original = tiny_pipeline._model_fn
    monkeypatch.setattr(tiny_pipeline, "_model_fn", lambda tokens, cond: conditions.append(cond) or
                        original(tokens, cond))
    result = tiny_pipeline.text_to_video("the car turns left", ACTIONS, guidance_scale=2.0, seed=0)
    assert result.tokens.shape == (6, 4, 4) and not result.known.any()
    for cond in conditions:  # every step: the prompt's tokens and this window's actions, guided in one batch
        assert cond.text_mask[0].any() and cond.actions.shape == (2, 4, 2)
        assert cond.drop_prompt.tolist() == [False, True]
    first_window_actions = conditions[0].actions[0, :, 0].cpu().numpy()
    assert np.allclose(first_window_actions, ACTIONS[:4, 0])


def test_same_seed_same_video_other_seed_other_video(tiny_pipeline: WorldDreamerPipeline) -> None:
    first = tiny_pipeline.text_to_video("a red circle", seed=5).tokens
    assert np.array_equal(first, tiny_pipeline.text_to_video("a red circle", seed=5).tokens)
    assert not np.array_equal(first, tiny_pipeline.text_to_video("a red circle", seed=6).tokens)


def test_rollout_continues_from_context_frames_with_aligned_actions(
    tiny_pipeline: WorldDreamerPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    windows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    original = tiny_pipeline._sample

    def recording(tokens, known, prompt, actions, config, generator, callback):
        out = original(tokens, known, prompt, actions, config, generator, callback)
        windows.append((tokens, known, actions, out))
        return out

    monkeypatch.setattr(tiny_pipeline, "_sample", recording)
    actions = np.stack([np.arange(7), np.zeros(7)], axis=1).astype(np.float32)  # row i holds i
    steps: list[int] = []
    result = tiny_pipeline.action_to_video(IMAGE, actions, seed=0, callback=lambda step, tokens: steps.append(step))
    # Window 4, context 2: frames [0, 4), then [2, 6); the last reaches back to stay 4 frames long: [3, 7).
    assert result.tokens.shape == (7, 4, 4)
    assert [w[2][:, 0].tolist() for w in windows] == [[0, 1, 2, 3], [2, 3, 4, 5], [3, 4, 5, 6]]
    assert steps == [0, 1, 2] * 3  # the callback sees every step of every window
    for (_, _, _, previous), (tokens, known, _, _), context in zip(windows, windows[1:], (2, 3), strict=False):
        assert known[0, :context].all() and not known[0, context:].any()
        # The frames generated last lead the next window, exactly as they were generated.
        assert torch.equal(tokens[0, :context], previous[0, -context:])
    stitched = torch.cat([windows[0][3][0], windows[1][3][0, 2:], windows[2][3][0, 3:]])
    assert np.array_equal(result.tokens, stitched.numpy())
    assert result.known[0].all() and not result.known[1:].any()
    assert tiny_pipeline.text_to_video("a red circle", num_frames=9).frames.shape == (9, 32, 32, 3)


def test_long_edits_decode_spans_of_overlapping_windows_together(
    tiny_pipeline: WorldDreamerPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    spans: list[tuple[torch.Tensor, torch.Tensor]] = []
    network: list[torch.Tensor] = []  # the tokens of every network call
    original_sample, original_model = tiny_pipeline._sample, tiny_pipeline._model_fn

    def recording(tokens, known, prompt, actions, config, generator, callback):
        out = original_sample(tokens, known, prompt, actions, config, generator, callback)
        spans.append((known, out))
        return out

    monkeypatch.setattr(tiny_pipeline, "_sample", recording)
    monkeypatch.setattr(tiny_pipeline, "_model_fn", lambda tokens, cond: network.append(tokens) or
                        original_model(tokens, cond))
    frames = SPAN_WINDOWS * 4 + 4
    video = np.repeat(VIDEO[:1], frames, axis=0)
    result = tiny_pipeline.inpaint(video, box=(8, 8, 24, 24), seed=0)
    # Window 4, context 2: frames [0, 16) decoded together, then [14, 20) from 2 context frames.
    assert [tuple(known.shape[1:2]) for known, _ in spans] == [(16,), (6,)]
    assert spans[1][0][0, :2].all() and torch.equal(spans[1][1][0, :2], spans[0][1][0, -2:])
    assert {tokens.shape[1] for tokens in network} == {4}  # the network only ever reads windows of 4 frames
    # Each step of the first span runs the network once per window: frames 0, 2, ..., 12, guided in one batch.
    assert len(network) == tiny_pipeline.defaults.steps * (len(window_starts(16, 4)) + len(window_starts(6, 4)))
    assert np.array_equal(result.tokens[result.known], tiny_pipeline.encode(video).numpy()[result.known])
    assert np.array_equal(result.tokens[:16], spans[0][1][0].numpy())


def test_guided_branches_share_one_forward_per_step(tiny_pipeline: WorldDreamerPipeline) -> None:
    batches: list[int] = []
    hook = tiny_pipeline.stpt.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        tiny_pipeline.text_to_video("a red circle", guidance_scale=2.0, steps=3)
        guided = list(batches)
        batches.clear()
        tiny_pipeline.text_to_video("", guidance_scale=2.0, steps=3)  # no prompt: nothing to guide
    finally:
        hook.remove()
    assert guided == [2, 2, 2] and batches == [1, 1, 1]


def test_bad_task_inputs_raise_one_line_errors(tiny_pipeline: WorldDreamerPipeline) -> None:
    with pytest.raises(ValueError, match="exactly one of mask or box"):
        tiny_pipeline.inpaint(VIDEO, mask=np.ones((32, 32), dtype=bool), box=(0, 0, 8, 8))
    with pytest.raises(ValueError, match="box"):
        tiny_pipeline.inpaint(VIDEO, box=(0, 0, 40, 8))
    with pytest.raises(ValueError, match=r"actions must be float \(frames, 2\)"):
        tiny_pipeline.action_to_video(IMAGE, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="one per frame"):
        tiny_pipeline.action_to_video(IMAGE, ACTIONS, num_frames=3)
    with pytest.raises(ValueError, match="5 given frames are more than the num_frames=4"):
        tiny_pipeline.image_to_video(VIDEO, num_frames=4)
    with pytest.raises(TypeError, match="unknown options"):
        tiny_pipeline.text_to_video("x", guidance=1.0)
    with pytest.raises(TypeError, match="num_frames does not apply"):
        tiny_pipeline.stylize(VIDEO, "x", num_frames=3)
    with pytest.raises(ValueError, match="frames must be uint8"):
        tiny_pipeline.image_to_video(IMAGE.astype(np.float32))


def test_save_load_round_trip_gives_the_same_videos(
    tiny_pipeline: WorldDreamerPipeline, tiny_pipeline_dir: Path
) -> None:
    assert sorted(p.name for p in tiny_pipeline_dir.iterdir()) == ["pipeline.json", "stpt", "text_encoder", "tokenizer"]
    config = json.loads((tiny_pipeline_dir / "pipeline.json").read_text())
    assert config["classes"] == {"tokenizer": "VQGAN", "stpt": "STPT", "text_encoder": "HashTextEncoder"}
    assert set(config["versions"]) >= {"torch", "wd-stpt", "wd-cli"}
    # fp32 like the pipeline it was saved from (auto would pick bf16 on a CPU with bf16 units).
    loaded = WorldDreamerPipeline.from_pretrained(tiny_pipeline_dir, device="cpu", dtype="fp32")
    assert loaded.defaults == tiny_pipeline.defaults
    # Unset optional fields are left out, so a wd-cli from before a field was added still reads the file.
    assert tiny_pipeline.defaults.plausibility is None and "plausibility" not in config["defaults"]
    for task in ("text_to_video", "action_to_video", "inpaint"):
        assert np.array_equal(TASKS[task](loaded, seed=3).frames, TASKS[task](tiny_pipeline, seed=3).frames)


def test_save_replaces_a_directory_in_one_swap(tiny_pipeline: WorldDreamerPipeline, tmp_path: Path) -> None:
    target = tmp_path / "pipe"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    tiny_pipeline.save_pretrained(target)
    assert not (target / "stale.txt").exists() and (target / "pipeline.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]  # no staging or old copy left behind


def test_a_crash_while_saving_leaves_the_old_directory(
    tiny_pipeline: WorldDreamerPipeline, tiny_pipeline_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "pipe"
    shutil.copytree(tiny_pipeline_dir, target)
    before = sorted(str(p.relative_to(target)) for p in target.rglob("*"))

    def crash(directory) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(tiny_pipeline.stpt, "save_pretrained", crash)
    with pytest.raises(OSError, match="disk full"):
        tiny_pipeline.save_pretrained(target)
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]
    with pytest.raises(OSError, match="disk full"):
        tiny_pipeline.save_pretrained(tmp_path / "new")
    assert not (tmp_path / "new").exists()


def _broken_copy(source: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "broken"
    shutil.copytree(source, copy)
    return copy


def test_load_errors_name_the_problem(tiny_pipeline_dir: Path, tmp_path: Path, without_checksums) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        WorldDreamerPipeline.from_pretrained(tmp_path / "nowhere")
    broken = _broken_copy(tiny_pipeline_dir, tmp_path)
    (broken / "pipeline.json").write_text("{oops")
    with pytest.raises(ValueError, match="pipeline.json is not valid JSON"):
        WorldDreamerPipeline.from_pretrained(broken)
    shutil.copy(tiny_pipeline_dir / "pipeline.json", broken / "pipeline.json")
    shutil.rmtree(broken / "stpt")
    with pytest.raises(FileNotFoundError, match="stpt is missing"):
        WorldDreamerPipeline.from_pretrained(broken)
    # An STPT for another codebook (and another text width) does not fit this tokenizer / text encoder: the files'
    # checksums say so first, and without them (a pipeline saved before they existed) the parts' checks do.
    STPT(stpt_config("tiny", codebook_size=64, text_dim=16, width=32, num_heads=4)).save_pretrained(broken / "stpt")
    with pytest.raises(ValueError, match=r"stpt/config\.json is damaged or was changed: its SHA-256 differs"):
        WorldDreamerPipeline.from_pretrained(broken)
    without_checksums(broken)
    with pytest.raises(ValueError, match="codebook_size 64 != tokenizer codebook_size 1000"):
        WorldDreamerPipeline.from_pretrained(broken)
    STPT(stpt_config("tiny", codebook_size=1000, text_dim=8, width=32, num_heads=4)).save_pretrained(broken / "stpt")
    with pytest.raises(ValueError, match="text_dim 8 != text encoder dim 16"):
        WorldDreamerPipeline.from_pretrained(broken)
    config = json.loads((tiny_pipeline_dir / "pipeline.json").read_text())
    config["defaults"]["windows"] = 3
    (broken / "pipeline.json").write_text(json.dumps(config))
    without_checksums(broken)
    with pytest.raises(ValueError, match=r"pipeline.json: bad defaults: unknown defaults \['windows'\]"):
        WorldDreamerPipeline.from_pretrained(broken)


def test_defaults_are_validated() -> None:
    with pytest.raises(ValueError, match="context_frames"):
        PipelineDefaults(num_frames=4, context_frames=4)
    with pytest.raises(ValueError, match="steps"):
        PipelineDefaults(steps=0)
    assert PipelineDefaults().sampler_config(steps=4, top_k=None).steps == 4


def test_device_and_dtype_names() -> None:
    cpu = torch.device("cpu")
    assert resolve_device("cpu") == cpu and resolve_device("auto").type in {"cpu", "cuda"}
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype("fp16", cpu) == torch.float32  # no fp16 autocast on the CPU
    # auto: bf16 exactly where the CPU's bf16 matmul was measured clearly faster.
    expected = torch.bfloat16 if cpu_bf16_speedup() >= BF16_CPU_MIN_SPEEDUP else torch.float32
    assert resolve_dtype(None, cpu) == resolve_dtype("auto", cpu) == expected
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int8", cpu)
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu0")


def test_bf16_probe_tells_emulated_from_native_bf16(monkeypatch) -> None:
    cpu = torch.device("cpu")
    assert cpu_bf16_speedup() > 0 and cpu_bf16_speedup() is cpu_bf16_speedup()  # measured once per process
    monkeypatch.setattr(devices, "cpu_bf16_speedup", lambda: 0.3)  # emulated bf16: slower than fp32
    assert not devices.prefers_bf16(cpu) and resolve_dtype("auto", cpu) == torch.float32
    monkeypatch.setattr(devices, "cpu_bf16_speedup", lambda: 3.4)  # AMX
    assert devices.prefers_bf16(cpu) and resolve_dtype("auto", cpu) == torch.bfloat16


def test_t5_pipeline_round_trip(make_tiny_pipeline, tiny_t5_dir: Path, tmp_path: Path) -> None:
    pipeline = make_tiny_pipeline(T5TextEncoder.from_pretrained(tiny_t5_dir, max_length=6))
    pipeline.save_pretrained(tmp_path / "pipe")
    assert json.loads((tmp_path / "pipe" / "pipeline.json").read_text())["classes"]["text_encoder"] == "T5TextEncoder"
    loaded = WorldDreamerPipeline.from_pretrained(tmp_path / "pipe", device="cpu", dtype="fp32")
    assert isinstance(loaded.text_encoder.encoder, T5TextEncoder) and loaded.text_encoder.encoder.max_length == 6
    for pipe in (pipeline, loaded):
        pipe.text_encoder.cache.clear()
    assert np.array_equal(loaded.text_to_video("a red circle", seed=0).tokens,
                          pipeline.text_to_video("a red circle", seed=0).tokens)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_keeps_known_tokens(tiny_pipeline_dir: Path) -> None:
    pipeline = WorldDreamerPipeline.from_pretrained(tiny_pipeline_dir, device="cuda", dtype="bf16")
    assert pipeline.dtype == torch.bfloat16
    result = pipeline.image_to_video(IMAGE, "a red circle", num_frames=6, seed=0)
    assert result.frames.shape == (6, 32, 32, 3)
    assert np.array_equal(result.tokens[:1], pipeline.encode(IMAGE).numpy())
