"""Paper scale on one GPU: generation latency, training throughput and MFU, tokenizer speed, as markdown tables.

Run by benchmarks/gpu_check.sh, which also runs the CUDA-only tests and writes the report:
    python3 benchmarks/bench_gpu.py --budget 360          # on the GPU machine
    python benchmarks/bench_gpu.py --dry-run              # tiny sizes on the CPU: checks that every row runs
Rows run in order of importance; one that would start past the time budget is listed as not run, and one that
fails (out of memory, a backend that does not load) is listed with its error, so the report always comes out.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from bench_stpt import table
from bench_tokenizer import speed
from bench_train import GIB, bf16_matmul_flops, measure_step, synchronize, token_cache, trainer
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.attention import SDPBackend, sdpa_kernel
from wd_masking import SamplerConfig, sample, text_to_video
from wd_stpt import STPT, GraphedForward, STPTCondition, STPTConfig, get_config
from wd_stpt.attention import xformers_usable
from wd_tokenizer import VQGAN
from wd_tokenizer import get_config as get_tokenizer_config

from wd_cli.pipeline import PipelineDefaults, WorldDreamerPipeline
from wd_cli.text_encoders import HashTextEncoder
from wd_cli.train import ParallelSection
from wd_cli.train.parallel import DTYPES

# Dense bf16 tensor-core peaks (datasheets: 1,979 TFLOP/s with sparsity for both SXM parts); see cost_model.py.
BF16_PEAK = {"H100": 989e12, "H200": 989e12}
CUDNN_FIRST = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
               SDPBackend.MATH]


@dataclass(frozen=True)
class Sizes:
    """Everything a run is measured at."""

    stpt: STPTConfig  # codebook_size is taken from the tokenizer
    tokenizer: str
    video: tuple[int, int, int]  # generated tokens: frames, height, width
    text_tokens: int
    steps: int
    guidance: float
    train_preset: str
    train_shape: tuple[int, int, int]  # tokens per training sample
    train_batch: int
    tokenizer_frames: int  # frames per encode/decode call
    tokenizer_sizes: tuple[tuple[int, int], ...]  # pixels
    repeats: int
    compile_backend: str


PAPER = Sizes(get_config("paper-1b"), "open-muse-f16-8192", (24, 12, 20), 77, 10, 3.0, "paper-1b", (16, 16, 16), 8, 16,
              ((256, 256), (192, 320)), 3, "inductor")
# Dynamo with its "eager" backend in the dry run: the same tracing, none of inductor's minutes of C++ compiles on a
# CPU (tests/test_compiled_sampling.py checks inductor's results).
DRY_RUN = Sizes(get_config("tiny", width=32, depth=2, num_heads=2, text_dim=16), "f8-small", (3, 4, 4), 5, 2, 3.0,
                "tiny", (2, 4, 4), 2, 2, ((32, 32), (32, 48)), 1, "eager")


class Budget:
    """Seconds left for the rows; a row that needs more than is left is reported as not run."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def allows(self, seconds: float) -> bool:
        return time.monotonic() + seconds <= self.deadline


def attempt(budget: Budget, needs: float, names: tuple, measure: Callable[[], tuple], width: int) -> tuple:
    """`names` (the row's first columns) + measure(), or + why it did not run: the time budget (when less than
    `needs` seconds are left), or its error in one line (the traceback goes to stderr)."""
    if not budget.allows(needs):
        return names + ("not run: time budget",) + ("",) * (width - len(names) - 1)
    try:
        return names + measure()
    except Exception as error:  # noqa: BLE001 - any failure becomes a line of the report, the other rows still run
        traceback.print_exc()
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return names + (f"error: {type(error).__name__}: {message}"[:160],) + ("",) * (width - len(names) - 1)
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def bf16(device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16)


# -- generation -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationVariant:
    attention: str  # STPTConfig.attention_backend
    cudnn_first: bool  # SDPA's cuDNN kernel tried before flash and memory-efficient
    compiled: bool  # torch.compile per block
    graphs: bool  # the STPT forward replayed as a CUDA graph

    @property
    def names(self) -> tuple[str, str, str]:
        """The row's first columns: attention, torch.compile, CUDA graphs."""
        return (f"{self.attention}{' (cuDNN first)' if self.cudnn_first else ''}", _yes(self.compiled),
                _yes(self.graphs))


def generation_variants() -> list[GenerationVariant]:
    """In order of importance: the default path first, each compile after its eager twin."""
    order = [("sdpa", False, False), ("sdpa", True, False), ("sdpa", False, True), ("xformers", False, False),
             ("xformers", False, True)]
    return [GenerationVariant(attention, cudnn, compiled, graphs)
            for attention, cudnn, compiled in order for graphs in (False, True)]


class Generation:
    """One text-to-video generation at `sizes`: guided sampling of every token, then the VQ decode, in bf16."""

    def __init__(self, sizes: Sizes, device: torch.device) -> None:
        self.sizes, self.device = sizes, device
        torch.manual_seed(0)
        self.tokenizer = VQGAN(get_tokenizer_config(sizes.tokenizer)).to(device).eval()
        self.config = dataclasses.replace(sizes.stpt, codebook_size=self.tokenizer.codebook_size)
        text = torch.randn(1, sizes.text_tokens, self.config.text_dim, device=device)
        self.cond = STPTCondition(text=text, text_mask=torch.ones(text.shape[:2], dtype=torch.bool, device=device))
        self.models: dict[tuple[str, bool], STPT] = {}

    def model(self, attention: str, compiled: bool) -> STPT:
        """The STPT with this attention backend (same weights every time), its blocks compiled if asked."""
        key = (attention, compiled)
        if key not in self.models:
            self.models.clear()  # one paper-1b at a time
            torch.manual_seed(0)
            with torch.device(self.device):
                model = STPT(dataclasses.replace(self.config, attention_backend=attention)).eval()
            if compiled:
                for block in model.blocks:
                    block.compile(backend=self.sizes.compile_backend)
            self.models[key] = model
        return self.models[key]

    def model_fn(self, variant: GenerationVariant) -> Callable[[torch.Tensor, STPTCondition], torch.Tensor]:
        model = self.model(variant.attention, variant.compiled)
        forward = GraphedForward(model) if variant.graphs else model

        def model_fn(tokens: torch.Tensor, cond: STPTCondition) -> torch.Tensor:
            priority = sdpa_kernel(CUDNN_FIRST, set_priority=True) if variant.cudnn_first else nullcontext()
            with bf16(self.device), priority:
                return forward(tokens, cond)

        return model_fn

    def seconds(self, model_fn: Callable) -> tuple[float, float]:
        """(sampling s, VQ decode s) of one video."""
        frames, height, width = self.sizes.video
        tokens, known = text_to_video(1, frames, height, width, self.config.codebook_size, device=self.device)
        config = SamplerConfig(steps=self.sizes.steps, guidance_scale=self.sizes.guidance)
        synchronize(self.device)
        start = time.perf_counter()
        result = sample(model_fn, tokens, known, mask_id=self.config.codebook_size, cond=self.cond,
                        uncond=self.cond.unconditional(), config=config,
                        generator=torch.Generator(self.device).manual_seed(0))
        synchronize(self.device)
        sampled = time.perf_counter()
        with bf16(self.device):
            self.tokenizer.decode(result.tokens[0])
        synchronize(self.device)
        return sampled - start, time.perf_counter() - sampled

    def measure(self, variant: GenerationVariant) -> tuple:
        """(first video s, sampling s, decode s, video s, note) of the fastest of `repeats` videos."""
        if variant.graphs and self.device.type != "cuda":
            return ("skipped: CUDA graphs need CUDA", "", "", "", "")
        if variant.attention == "xformers" and not xformers_usable(self.device):
            return ("skipped: xformers not importable here or not on CUDA", "", "", "", "")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            model_fn = self.model_fn(variant)
            start = time.perf_counter()
            self.seconds(model_fn)  # compiles and captures
            first = time.perf_counter() - start
            best = min((self.seconds(model_fn) for _ in range(self.sizes.repeats)), key=sum)
        fallback = [str(w.message) for w in caught if "using PyTorch SDPA" in str(w.message)]
        note = f"fell back: {fallback[0]}"[:160] if fallback else ""
        return (f"{first:.2f}", f"{best[0]:.3f}", f"{best[1]:.3f}", f"{sum(best):.3f}", note)

    def measure_pipeline(self) -> tuple:
        """`WorldDreamerPipeline.text_to_video` as `wd generate` runs it (bf16 STPT, fp32 tokenizer, frames to the
        host), with a hash text encoder of the STPT's text width standing in for T5."""
        frames, height, width = self.sizes.video
        factor = self.tokenizer.downsample_factor
        defaults = PipelineDefaults(steps=self.sizes.steps, guidance_scale=self.sizes.guidance, num_frames=frames,
                                    height=height * factor, width=width * factor,
                                    context_frames=min(PipelineDefaults.context_frames, frames - 1))
        encoder = HashTextEncoder(dim=self.config.text_dim, max_length=self.sizes.text_tokens)
        pipeline = WorldDreamerPipeline(self.tokenizer, self.model("sdpa", False), encoder, defaults)
        pipeline.to(self.device, "bf16")
        prompt = " ".join(f"word{index}" for index in range(self.sizes.text_tokens))
        pipeline.text_to_video(prompt)  # warm-up
        synchronize(self.device)
        start = time.perf_counter()
        pipeline.text_to_video(prompt)
        synchronize(self.device)
        return ("", "", "", f"{time.perf_counter() - start:.3f}", "")


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def generation_section(sizes: Sizes, device: torch.device, budget: Budget) -> str:
    generation = Generation(sizes, device)
    header = ("attention", "torch.compile", "CUDA graphs", "first video s (compile, capture)", "sampling s",
              "VQ decode s", "video s", "note")
    rows = [attempt(budget, 90 if variant.compiled else 20, variant.names, lambda v=variant: generation.measure(v),
                    len(header)) for variant in generation_variants()]
    pipeline = ("`WorldDreamerPipeline.text_to_video` (sdpa, fp32 decode)", "no", "no")
    rows.append(attempt(budget, 20, pipeline, generation.measure_pipeline, len(header)))
    frames, height, width = sizes.video
    return (f"### Generation: {frames} x {height} x {width} tokens, {sizes.steps} guided steps (batch 2), bf16, "
            f"then the {sizes.tokenizer} decode of {frames} frames (bf16)\n\n{table(header, rows)}")


# -- training ---------------------------------------------------------------------------------------------------


def peak_flops(device: torch.device) -> float | None:
    """The datasheet's dense bf16 peak of this GPU, None where we have none."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for model, flops in BF16_PEAK.items() if model in name), None)


def training_measure(step: Callable[[], object], device: torch.device, tokens: int, repeats: int) -> tuple:
    """(tokens/s, TFLOP/s, MFU / datasheet peak, MFU / bf16 matmul measured now, peak GiB)."""
    seconds, flops, peak = measure_step(step, device, repeats)
    achieved = flops / seconds
    datasheet = peak_flops(device)
    matmul = bf16_matmul_flops() if device.type == "cuda" else None
    return (f"{tokens / seconds:.0f}", f"{achieved / 1e12:.1f}",
            f"{achieved / datasheet:.1%}" if datasheet else "-", f"{achieved / matmul:.1%}" if matmul else "-",
            f"{peak / GIB:.1f}" if peak is not None else "-")


@contextmanager
def single_rank_group(device: torch.device) -> Iterator[None]:
    """A one-process group (NCCL on CUDA, gloo elsewhere): enough to run FSDP2's sharding and collectives."""
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0,
                            world_size=1, device_id=device if device.type == "cuda" else None)
    try:
        yield
    finally:
        dist.destroy_process_group()


def fsdp_measure(sizes: Sizes, device: torch.device, codebook: int, text_dim: int) -> tuple:
    """A bare training step (forward, cross-entropy over every token, backward, AdamW) of the STPT sharded by FSDP2
    over a single-rank group, with `wd train`'s default FSDP mixed precision. (`wd train` shards only when
    WORLD_SIZE > 1, so this wraps the model itself, as its parallelize() does, per block and at the root.)"""
    batch, (frames, height, width) = sizes.train_batch, sizes.train_shape
    with single_rank_group(device):
        torch.manual_seed(0)
        with torch.device(device):
            model = STPT(get_config(sizes.train_preset, codebook_size=codebook, text_dim=text_dim)).train()
        section = ParallelSection(strategy="fsdp")
        policy = MixedPrecisionPolicy(param_dtype=DTYPES[section.fsdp_param_dtype],
                                      reduce_dtype=DTYPES[section.fsdp_reduce_dtype])
        for block in model.blocks:
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        tokens = torch.randint(0, codebook + 1, (batch, frames, height, width), device=device)
        targets = torch.randint(0, codebook, tokens.shape, device=device)
        cond = STPTCondition(text=torch.randn(batch, 16, text_dim, device=device))

        def step() -> None:
            with bf16(device):
                logits = model(tokens, cond)
            F.cross_entropy(logits.float().flatten(0, -2), targets.flatten()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return training_measure(step, device, tokens.numel(), sizes.repeats)


def training_section(sizes: Sizes, device: torch.device, budget: Budget) -> str:
    header = ("step", "tokens/s", "TFLOP/s", "MFU (datasheet peak)", "/ bf16 matmul now", "peak GiB")
    config = get_config(sizes.train_preset)
    batch, shape = sizes.train_batch, sizes.train_shape
    tokens = batch * shape[0] * shape[1] * shape[2]
    rows = []
    with tempfile.TemporaryDirectory() as root:
        cache = token_cache(Path(root) / "cache", shape, config.codebook_size, config.text_dim, count=2 * batch)

        def wd_train(checkpointing: bool, compile_blocks: bool) -> tuple:
            run = trainer(cache, Path(root) / "run", sizes.train_preset, batch, checkpointing, compile_blocks)
            return training_measure(run.train_step, run.env.device, tokens, sizes.repeats)

        plan = [(30, "`wd train` step", lambda: wd_train(False, False)),
                (30, "`wd train` step, activation checkpointing", lambda: wd_train(True, False)),
                (30, "bare step + AdamW, FSDP2 on a 1-rank group",
                 lambda: fsdp_measure(sizes, device, config.codebook_size, config.text_dim)),
                (120, "`wd train` step, blocks compiled", lambda: wd_train(False, True))]
        rows = [attempt(budget, needs, (label,), measure, len(header)) for needs, label, measure in plan]
    return (f"### Training: {sizes.train_preset}, batch {batch} x {'x'.join(map(str, shape))} tokens ({tokens} per "
            f"step), bf16 autocast, AdamW\n\n{table(header, rows)}")


# -- tokenizer --------------------------------------------------------------------------------------------------


def tokenizer_section(sizes: Sizes, device: torch.device, budget: Budget) -> str:
    header = ("pixels", "frames per call", "encode frames/s", "decode frames/s")

    def measure(height: int, width: int) -> tuple:
        encode, decode = speed(device, sizes.tokenizer_frames, height, width, torch.bfloat16, sizes.tokenizer)
        return (f"{encode:.1f}", f"{decode:.1f}")

    rows = [attempt(budget, 15, (f"{height} x {width}", sizes.tokenizer_frames),
                    lambda h=height, w=width: measure(h, w), len(header)) for height, width in sizes.tokenizer_sizes]
    return f"### Tokenizer: {sizes.tokenizer}, bf16 autocast\n\n{table(header, rows)}"


def environment(device: torch.device) -> str:
    lines = [f"- device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU (dry run)'}",
             f"- torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}), "
             f"Python {sys.version.split()[0]}"]
    try:
        import xformers

        lines.append(f"- xformers {xformers.__version__}")
    except ImportError:
        lines.append("- xformers: not installed")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--budget", type=float, default=360, help="seconds for all rows together")
    parser.add_argument("--sections", default="generation,tokenizer,training",
                        help="comma-separated, run in this order")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    sizes = DRY_RUN if args.dry_run else PAPER
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.dry_run:
        parser.error("no CUDA device here: run with --dry-run")
    budget = Budget(args.budget)
    sections = {"generation": generation_section, "training": training_section, "tokenizer": tokenizer_section}
    print(environment(device))
    for name in args.sections.split(","):
        if name not in sections:
            parser.error(f"unknown section {name!r}; choose from {sorted(sections)}")
        print("\n" + sections[name](sizes, device, budget))


if __name__ == "__main__":
    main()
