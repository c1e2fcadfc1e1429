"""Two torch processes on one machine: STPT training steps/s and `text_to_video` latency, alone and beside a
second busy torch process, under each thread policy.

A user who trains in one terminal and generates in another runs two torch processes at once. On the 2-core
machine their OpenMP threads oversubscribe the cores; this measures how much each slows down and what the wd
command's thread policy (`wd_cli.threads`) changes. Every workload runs in its own process started the way the
wd command starts (wd_cli.main imported before torch), with the policy's environment:

- "torch defaults": what a process got before the policy: OpenMP's default wait (spin, then sleep) and one
  thread per core;
- "passive wait": OMP_WAIT_POLICY=PASSIVE (waiting threads sleep at once);
- "short spin": OpenMP's default with GOMP_SPINCOUNT 10000 (spin briefly, then sleep);
- "wd policy": whatever `wd_cli.threads.configure_threads` chooses;
- "one thread each": that, with one OpenMP thread per process (each process keeps a core to itself).

The training workload is a quickstart-sized STPT step (width 128, depth 4, batch 8 x 8 frames x 8 x 8 tokens, bf16
autocast where `auto` picks it);
the generation workload a guided 8-frame text-to-video on a pipeline of that size; the busy neighbour is the
same training loop, running until it is stopped.

Run (nothing else on the machine): uv run python benchmarks/bench_sharing.py  [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETUP = """
import wd_cli.main  # the wd command's thread policy is applied on this import, before torch loads
import time, json, sys, torch
from wd_cli.devices import prefers_bf16
from wd_stpt import STPT, STPTCondition, get_config
config = get_config("tiny", width=128, depth=4, num_heads=4, action_dim=2, codebook_size=1000, text_dim=64,
                    patch_stride=2)
"""

TRAIN = SETUP + """
model = STPT(config)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
tokens = torch.randint(0, 1000, (8, 8, 8, 8))
cond = STPTCondition(text=torch.randn(8, 12, 64), text_mask=torch.ones(8, 12, dtype=torch.bool))

bf16 = prefers_bf16(torch.device("cpu"))  # what wd train's mixed_precision "auto" picks

def step():
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(tokens, cond)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 1000), tokens.reshape(-1))
    loss.backward(); optimizer.step(); optimizer.zero_grad()

step()
seconds, steps, start = float(sys.argv[1]), 0, time.perf_counter()
while time.perf_counter() - start < seconds:
    step(); steps += 1
print(json.dumps({"steps_per_second": steps / (time.perf_counter() - start), "threads": torch.get_num_threads()}))
"""

GENERATE = SETUP + """
from wd_cli.pipeline import PipelineDefaults, WorldDreamerPipeline
from wd_cli.text_encoders import HashTextEncoder
from wd_tokenizer import VQGAN, get_config as tokenizer_config
pipeline = WorldDreamerPipeline(VQGAN(tokenizer_config("f4-patch")), STPT(config), HashTextEncoder(dim=64),
                                PipelineDefaults(num_frames=8, height=32, width=32, context_frames=2))
pipeline.to("cpu", "auto")  # as wd generate: bf16 where the CPU is measured faster in it
pipeline.text_to_video("a red circle moves up", steps=10)
repeats, times = int(sys.argv[1]), []
for seed in range(repeats):
    start = time.perf_counter()
    pipeline.text_to_video("a red circle moves up", steps=10, guidance_scale=2.0, seed=seed)
    times.append(time.perf_counter() - start)
print(json.dumps({"seconds": sorted(times)[len(times) // 2], "threads": torch.get_num_threads()}))
"""

# OMP_WAIT_POLICY set to "" keeps the wd policy from choosing one, so OpenMP falls back to its own default.
POLICIES = {
    "torch defaults": {"OMP_WAIT_POLICY": ""},
    "passive wait": {"OMP_WAIT_POLICY": "PASSIVE"},
    "short spin (GOMP_SPINCOUNT 10000)": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "10000"},
    "wd policy": {},
    "wd policy, one thread each": {"OMP_NUM_THREADS": "1"},
}


def run(script: str, argument: str, environment: dict[str, str]) -> dict:
    """Run a workload in a fresh process and return what it printed (one JSON line)."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as handle:
        handle.write(script)
    try:
        done = subprocess.run([sys.executable, handle.name, argument], env=environment, capture_output=True,
                              text=True, check=True)
    finally:
        Path(handle.name).unlink()
    return json.loads(done.stdout.strip().splitlines()[-1])


def beside_busy(script: str, argument: str, environment: dict[str, str]) -> dict:
    """The workload while another process trains without pause (started first, stopped after)."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as handle:
        handle.write(TRAIN)
    neighbour = subprocess.Popen([sys.executable, handle.name, "1e9"], env=environment, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    try:
        time.sleep(3.0)  # past its start-up
        return run(script, argument, environment)
    finally:
        neighbour.kill()
        neighbour.wait()
        Path(handle.name).unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Seconds, not minutes: check the script runs.")
    args = parser.parse_args()
    train_seconds, repeats = ("3", "3") if args.quick else ("30", "10")
    rows = []
    for name, overrides in POLICIES.items():
        environment = {**os.environ, **overrides}
        train_alone = run(TRAIN, train_seconds, environment)
        train_shared = beside_busy(TRAIN, train_seconds, environment)
        generate_alone = run(GENERATE, repeats, environment)
        generate_shared = beside_busy(GENERATE, repeats, environment)
        rows.append((name, train_alone, train_shared, generate_alone, generate_shared))
    print(f"cores available: {len(os.sched_getaffinity(0))}\n")
    print("| policy | threads | train steps/s alone | beside a busy process | slowdown | text2video s alone | "
          "beside a busy process | slowdown |")
    print("|---|---|---|---|---|---|---|---|")
    for name, train_alone, train_shared, generate_alone, generate_shared in rows:
        print(f"| {name} | {train_alone['threads']} | {train_alone['steps_per_second']:.2f} | "
              f"{train_shared['steps_per_second']:.2f} | "
              f"{train_alone['steps_per_second'] / train_shared['steps_per_second']:.2f}x | "
              f"{generate_alone['seconds']:.3f} | {generate_shared['seconds']:.3f} | "
              f"{generate_shared['seconds'] / generate_alone['seconds']:.2f}x |")


if __name__ == "__main__":
    main()
