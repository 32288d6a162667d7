"""Step time and transient memory of RV-AdamW's implementations against torch's AdamW.

    .venv/bin/python benchmarks/bench_optim.py [--rounds 10] [--device cpu|cuda] [--threads N]

Parameters have the shapes of nanoGPT models (no biases, lm_head tied to wte,
so wte counts once): a 6-layer 384-wide GPT (block 256) and GPT2-124M (12
layers, 768 wide, block 1024), vocabulary 50304; and, to show the fixed cost
per tensor, of the CIFAR ResNet-20 (0.27 M parameters in 22 small tensors).
Matrices and filters get weight decay 0.1 (and are rotational in RV-AdamW),
gains and biases none, as in nanoGPT. The gradients are random and fixed: no
model runs, only optimizer steps. The device is CUDA when there is one.

Time: the optimizers live in this process on their own copies of the
parameters and take turns, one step each per round, so that load from other
processes hits them alike. Two warm-up rounds allocate the state (and compile
RV-AdamW compiled, and build or load RV-AdamW kernel's C++ extension; their
first steps' times are printed). Medians over rounds are
printed: wall-clock, and on the CPU also the process's CPU time (all threads),
which other processes on a shared machine disturb less; and the ratios of both
to torch's fused AdamW, with the spread of the CPU-time ratio: the quartiles of
its value in each round (the two optimizers' steps of one round are next to
each other in time, so they saw about the same load).

Memory: on CUDA torch's allocator statistics. On the CPU torch has none, and
tracemalloc does not see torch's allocations, so each optimizer runs alone in a
fresh subprocess that measures its resident set (Linux /proc): after two warm-up
steps (state allocated) it resets the high-water mark (/proc/self/clear_refs),
takes one step, and reports VmHWM minus the resident set before the step. The
subprocess runs with MALLOC_MMAP_THRESHOLD_=65536 so that glibc returns every
freed block of 64 KiB or more to the system at once: a step's temporaries then
show up in the high-water mark instead of reusing memory freed by the previous
step.
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
OPTIMIZERS = ("AdamW foreach", "AdamW fused", "RV-AdamW chunked", "RV-AdamW grouped", "RV-AdamW compiled",
              "RV-AdamW kernel")
LR, WEIGHT_DECAY, BETAS = 6e-4, 0.1, (0.9, 0.95)


def make_optimizer(name: str, size: str, device: str, seed: int = 0) -> torch.optim.Optimizer:
    generator = torch.Generator().manual_seed(seed)
    params = []
    for shape in SIZES[size]:
        p = torch.nn.Parameter((0.02 * torch.randn(shape, generator=generator)).to(device))
        p.grad = (1e-3 * torch.randn(shape, generator=generator)).to(device)
        params.append(p)
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    if name.startswith("RV-AdamW"):
        return build_optimizer("adamw", groups, lr=LR, weight_decay=WEIGHT_DECAY, betas=BETAS, rotational=True,
                               impl=name.split()[-1])
    fused = name == "AdamW fused"
    return torch.optim.AdamW(groups, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY,
                             foreach=not fused, fused=fused)


def n_parameters(size: str) -> int:
    return sum(torch.Size(shape).numel() for shape in SIZES[size])


def timed_step(optimizer: torch.optim.Optimizer, device: str) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one step."""
    wall, cpu = time.perf_counter(), time.process_time()
    optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def step_times(size: str, rounds: int, device: str) -> tuple[dict, dict, dict]:
    """{optimizer: [wall seconds]}, {optimizer: [CPU seconds]} over rounds, {optimizer: first step's wall seconds}."""
    optimizers = {name: make_optimizer(name, size, device) for name in OPTIMIZERS}
    wall, cpu, first = ({name: [] for name in OPTIMIZERS} for _ in range(3))
    for round_ in range(rounds + 2):  # two warm-up rounds allocate the state and compile
        for name, optimizer in optimizers.items():
            seconds, cpu_seconds = timed_step(optimizer, device)
            if round_ == 0:
                first[name] = seconds
            if round_ >= 2:
                wall[name].append(seconds)
                cpu[name].append(cpu_seconds)
    return wall, cpu, first


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory(name: str, size: str, device: str) -> dict:
    """The memory growth during one step after two warm-up steps, in bytes (CPU: run inside the subprocess)."""
    optimizer = make_optimizer(name, size, device)
    for _ in range(2):
        optimizer.step()
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        optimizer.step()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - before
    else:
        before = _proc_status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # reset VmHWM to the current resident set
        optimizer.step()
        extra = (_proc_status_kib("VmHWM") - before) * 1024
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                if isinstance(t, torch.Tensor))
    return {"extra": extra, "state": state}


def step_memory(name: str, size: str, device: str) -> dict:
    if device == "cuda":
        return measure_memory(name, size, device)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    result = subprocess.run([sys.executable, __file__, "--memory-of", name, size,
                             "--threads", str(torch.get_num_threads())], env=env,
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.splitlines()[-1])


def load_average() -> str:
    with open("/proc/loadavg") as loadavg:
        return " ".join(loadavg.read().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="timed steps per optimizer and size")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES), metavar="SIZE",
                        help=f"parameter sets to measure, of: {', '.join(map(repr, SIZES))}")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch's intra-op threads (default: torch's own choice); "
                        "1 keeps CPU times free of the threads' waits for each other on a busy machine")
    parser.add_argument("--memory-of", nargs=2, metavar=("OPTIMIZER", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_of:
        print(json.dumps(measure_memory(*args.memory_of, "cpu")))
        return

    device = args.device
    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"measured on {device} ({where}), torch {torch.__version__}, {args.rounds} timed steps each "
          f"(20x for ResNet-20), load average {load_average()} on {os.cpu_count()} CPUs")
    print(f"{'':<28} {'median step ms':^15} {'/ AdamW fused':^27} {'/ foreach':^9} {'peak extra memory':^18}")
    print(f"{'size':<10} {'optimizer':<17} {'wall':>7} {'CPU':>7} {'wall':>7} {'CPU':>7} {'CPU quartiles':>13} "
          f"{'CPU':>7} {'MB':>8} {'/params':>8}  state MB")
    for size in args.sizes:
        params_bytes = 4 * n_parameters(size)
        # A ResNet-20 step takes about a millisecond: more rounds to beat the noise.
        wall, cpu, first = step_times(size, args.rounds if params_bytes > 2**20 * 10 else 20 * args.rounds, device)
        spread = {name: statistics.quantiles([mine / fused for mine, fused in zip(values, cpu["AdamW fused"])], n=4)
                  for name, values in cpu.items()}
        wall = {name: statistics.median(values) for name, values in wall.items()}
        cpu = {name: statistics.median(values) for name, values in cpu.items()}
        memory = {name: step_memory(name, size, device) for name in OPTIMIZERS}
        for name in OPTIMIZERS:
            extra = memory[name]["extra"]
            ratios = [wall[name] / wall["AdamW fused"], cpu[name] / cpu["AdamW fused"]]
            print(f"{size:<10} {name:<17} {1e3 * wall[name]:7.1f} {1e3 * cpu[name]:7.1f} "
                  + " ".join(f"{ratio:7.2f}" for ratio in ratios)
                  + f"   {spread[name][0]:5.2f}-{spread[name][2]:<5.2f}"
                  + f" {cpu[name] / cpu['AdamW foreach']:7.2f} {extra / 2**20:8.1f} {extra / params_bytes:8.2f}"
                  f"  {memory[name]['state'] / 2**20:8.1f}")
        print(f"{size:<10} parameters: {n_parameters(size) / 1e6:.1f} M = {params_bytes / 2**20:.0f} MB; first step of "
              f"RV-AdamW compiled (compiling): {first['RV-AdamW compiled']:.1f} s, kernel (building or loading): "
              f"{first['RV-AdamW kernel']:.1f} s; load average {load_average()}")


if __name__ == "__main__":
    main()
