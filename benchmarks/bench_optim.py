"""Step time and transient memory of RV-AdamW against torch's AdamW (foreach and fused).

    .venv/bin/python benchmarks/bench_optim.py [--rounds 10]

Parameters have the shapes of nanoGPT models (no biases, lm_head tied to wte,
so wte counts once): a 6-layer 384-wide GPT (block 256) and GPT2-124M (12
layers, 768 wide, block 1024), vocabulary 50304; and, to show the fixed cost
per tensor, of the CIFAR ResNet-20 (0.27 M parameters in 22 small tensors).
Matrices and filters get weight decay 0.1 (and are rotational in RV-AdamW),
gains and biases none, as in nanoGPT. The gradients are random and fixed: no
model runs, only optimizer steps.

Time: the three optimizers live in this process on their own copies of the
parameters and take turns, one step each per round, so that load from other
processes hits them alike. The median and the fastest step over rounds are
printed, with the ratios of each (on a machine shared with other jobs the
fastest step is the better estimate of the optimizer's own cost).

Memory: torch has no allocator statistics for the CPU, and tracemalloc does not
see torch's allocations, so each optimizer runs alone in a fresh subprocess
that measures its resident set (Linux /proc): after two warm-up steps (state
allocated) it resets the high-water mark (/proc/self/clear_refs), takes one
step, and reports VmHWM minus the resident set before the step. The subprocess
runs with MALLOC_MMAP_THRESHOLD_=65536 so that glibc returns every freed block
of 64 KiB or more to the system at once: a step's temporaries then show up in
the high-water mark instead of reusing memory freed by the previous step.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from rotsweep.optim import build_optimizer

def gpt_shapes(n_layer: int, n_embd: int, block: int, vocab: int = 50304) -> list[tuple[int, ...]]:
    shapes = [(vocab, n_embd), (block, n_embd)]
    for _ in range(n_layer):
        shapes += [(n_embd,), (3 * n_embd, n_embd), (n_embd, n_embd),
                   (n_embd,), (4 * n_embd, n_embd), (n_embd, 4 * n_embd)]
    return shapes + [(n_embd,)]


def resnet20_shapes() -> list[tuple[int, ...]]:
    shapes = [(16, 3, 3, 3), (16,), (16,)]
    for width, previous in ((16, 16), (32, 16), (64, 32)):
        for block in range(3):
            fan_in = previous if block == 0 else width
            shapes += [(width, fan_in, 3, 3), (width,), (width,), (width, width, 3, 3), (width,), (width,)]
            if fan_in != width:
                shapes += [(width, fan_in, 1, 1), (width,), (width,)]
    return shapes + [(10, 64), (10,)]


SIZES = {
    "GPT 6x384": gpt_shapes(n_layer=6, n_embd=384, block=256),
    "GPT2-124M": gpt_shapes(n_layer=12, n_embd=768, block=1024),
    "ResNet-20": resnet20_shapes(),
}
OPTIMIZERS = ("RV-AdamW", "AdamW foreach", "AdamW fused")
LR, WEIGHT_DECAY, BETAS = 6e-4, 0.1, (0.9, 0.95)


def make_optimizer(name: str, size: str, seed: int = 0) -> torch.optim.Optimizer:
    generator = torch.Generator().manual_seed(seed)
    params = []
    for shape in SIZES[size]:
        p = torch.nn.Parameter(0.02 * torch.randn(shape, generator=generator))
        p.grad = 1e-3 * torch.randn(shape, generator=generator)
        params.append(p)
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    if name == "RV-AdamW":
        return build_optimizer("adamw", groups, lr=LR, weight_decay=WEIGHT_DECAY, betas=BETAS, rotational=True)
    fused = name == "AdamW fused"
    return torch.optim.AdamW(groups, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY,
                             foreach=not fused, fused=fused)


def n_parameters(size: str) -> int:
    return sum(torch.Size(shape).numel() for shape in SIZES[size])


def step_times(size: str, rounds: int) -> dict[str, list[float]]:
    optimizers = {name: make_optimizer(name, size) for name in OPTIMIZERS}
    times = {name: [] for name in OPTIMIZERS}
    for round_ in range(rounds + 2):  # two warm-up rounds allocate the state
        for name, optimizer in optimizers.items():
            start = time.perf_counter()
            optimizer.step()
            if round_ >= 2:
                times[name].append(time.perf_counter() - start)
    return times


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory(name: str, size: str) -> dict:
    """Run inside the subprocess: the resident-set growth during one step, in bytes."""
    optimizer = make_optimizer(name, size)
    for _ in range(2):
        optimizer.step()
    gc.collect()
    before = _proc_status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset VmHWM to the current resident set
    optimizer.step()
    peak = _proc_status_kib("VmHWM")
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                if isinstance(t, torch.Tensor))
    return {"extra": (peak - before) * 1024, "state": state}


def step_memory(name: str, size: str) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    result = subprocess.run([sys.executable, __file__, "--memory-of", name, size], env=env,
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="timed steps per optimizer and size")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES), metavar="SIZE",
                        help=f"parameter sets to measure, of: {', '.join(map(repr, SIZES))}")
    parser.add_argument("--memory-of", nargs=2, metavar=("OPTIMIZER", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        print(json.dumps(measure_memory(*args.memory_of)))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} timed steps each (20x for ResNet-20), "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'':<25} {'step ms':^15} {'/ AdamW foreach':^15} {'/ AdamW fused':^15} {'peak extra memory of a step':^29}")
    print(f"{'size':<10} {'optimizer':<14} {'median':>7} {'min':>7} {'median':>7} {'min':>7} {'median':>7} {'min':>7} "
          f"{'MB':>7} {'/foreach':>9} {'/params':>8}  state MB")
    for size in args.sizes:
        params_bytes = 4 * n_parameters(size)
        # A ResNet-20 step takes about a millisecond: more rounds to beat the noise.
        times = step_times(size, args.rounds if params_bytes > 2**20 * 10 else 20 * args.rounds)
        median = {name: statistics.median(values) for name, values in times.items()}
        fastest = {name: min(values) for name, values in times.items()}
        memory = {name: step_memory(name, size) for name in OPTIMIZERS}
        for name in OPTIMIZERS:
            extra = memory[name]["extra"]
            ratios = [median[name] / median["AdamW foreach"], fastest[name] / fastest["AdamW foreach"],
                      median[name] / median["AdamW fused"], fastest[name] / fastest["AdamW fused"]]
            print(f"{size:<10} {name:<14} {1e3 * median[name]:7.1f} {1e3 * fastest[name]:7.1f} "
                  + " ".join(f"{ratio:7.2f}" for ratio in ratios)
                  + f" {extra / 2**20:7.1f} {extra / max(memory['AdamW foreach']['extra'], 1):9.2f}"
                  f" {extra / params_bytes:8.2f}  {memory[name]['state'] / 2**20:8.1f}")
        print(f"{size:<10} parameters: {n_parameters(size) / 1e6:.1f} M = {params_bytes / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
