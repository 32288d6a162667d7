"""Cost of recording one step's dynamics, in units of one torch AdamW(foreach=True) step.

Two parameter sets with random gradients (no forward pass needed): a 6-layer,
384-wide GPT and GPT2-124M (nanoGPT layout, vocab 50304, tied embeddings).
For each, interleaved in one run, the median over repetitions of:

  AdamW    one AdamW(foreach=True) step
  recorder DynamicsRecorder.before_step + after_step around that step, plus a
           drain() after every record (the worst case: train.py drains less often)
  official the official DynamicsLogger's way: clone every parameter and
           deep-copy the optimizer state before the step, then per-parameter
           norms, grad norms, relative and angular (acos) updates and the mean
           second moment, per neuron and per layer (epfml/REQ, shared/utils/logger.py)

Target: recorder / AdamW <= 1.0. Run: .venv/bin/python benchmarks/bench_dynamics.py
(on a busy machine also: --threads 1 --clock cpu).
"""

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from rotsweep.dynamics import DynamicsRecorder


def gpt_shapes(n_layer, n_embd, vocab=50304, block=1024):
    """(name, shape) of nanoGPT's parameters; lm_head is tied to wte, so listed once."""
    shapes = [("wte.weight", (vocab, n_embd)), ("wpe.weight", (block, n_embd))]
    for i in range(n_layer):
        h, c = f"h.{i}.", n_embd
        shapes += [
            (h + "ln_1.weight", (c,)), (h + "ln_1.bias", (c,)),
            (h + "attn.c_attn.weight", (3 * c, c)), (h + "attn.c_attn.bias", (3 * c,)),
            (h + "attn.c_proj.weight", (c, c)), (h + "attn.c_proj.bias", (c,)),
            (h + "ln_2.weight", (c,)), (h + "ln_2.bias", (c,)),
            (h + "mlp.c_fc.weight", (4 * c, c)), (h + "mlp.c_fc.bias", (4 * c,)),
            (h + "mlp.c_proj.weight", (c, 4 * c)), (h + "mlp.c_proj.bias", (c,)),
        ]  # fmt: skip
    return shapes + [("ln_f.weight", (n_embd,)), ("ln_f.bias", (n_embd,))]


MODELS = {
    "gpt-6x384": gpt_shapes(6, 384, block=256),
    "gpt2-124m": gpt_shapes(12, 768, block=1024),
}


class OfficialStyleLogger:
    """What the official DynamicsLogger does on a recorded step (written from the facts doc)."""

    def __init__(self, named, optimizer, eps=1e-8):
        self.named, self.optimizer, self.eps = named, optimizer, eps
        self.buffer = []

    def before_step(self):
        self.pre = [p.detach().clone() for _, p in self.named]
        self.grads = [p.grad for _, p in self.named]
        self.state = copy.deepcopy(self.optimizer.state)

    def after_step(self):
        eps, stats = self.eps, {}
        for (name, p), w0, g in zip(self.named, self.pre, self.grads):
            if p.ndim < 2:
                continue
            w, w0, g = p.detach().flatten(1), w0.flatten(1), g.flatten(1)
            v = self.optimizer.state[p]["exp_avg_sq"].flatten(1)
            for level, dim, (x0, x, gx, vx) in (
                ("neuron", 1, (w0, w, g, v)),
                ("layer", 0, (w0.flatten(), w.flatten(), g.flatten(), v.flatten())),
            ):
                norm = x0.norm(dim=dim)
                stats[f"{level}_norm/{name}"] = norm
                stats[f"{level}_grad_norm/{name}"] = gx.norm(dim=dim)
                stats[f"{level}_relative_update/{name}"] = ((x - x0).norm(dim=dim) + eps) / (norm + eps)
                cosine = F.cosine_similarity(x0, x, dim=dim).clamp(-1, 1)
                stats[f"{level}_angular_update/{name}"] = torch.acos(cosine)
                stats[f"{level}_mean_second_grad_moment/{name}"] = vx.mean(dim=dim)
        self.buffer.append(stats)
        del self.pre, self.grads, self.state


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def timed(device, fn):
    sync(device)
    start = clock()
    fn()
    sync(device)
    return clock() - start


def bench(shapes, reps, device):
    gen = torch.Generator(device).manual_seed(0)
    named = []
    for name, shape in shapes:
        p = torch.nn.Parameter(0.02 * torch.randn(shape, generator=gen, device=device))
        p.grad = torch.randn(shape, generator=gen, device=device)
        named.append((name, p))
    optimizer = torch.optim.AdamW([p for _, p in named], lr=1e-3, weight_decay=0.1, foreach=True)
    recorder = DynamicsRecorder(named, interval=1)
    official = OfficialStyleLogger(named, optimizer)

    def recorded_step(step):
        hooks = timed(device, lambda: recorder.before_step(step))
        optimizer.step()
        hooks += timed(device, lambda: recorder.after_step(step))
        return hooks, timed(device, recorder.drain)

    def official_step():
        hooks = timed(device, official.before_step)
        optimizer.step()
        return hooks + timed(device, official.after_step)

    # Warm up: optimizer state, the recorder's buffer, the allocator.
    optimizer.step()
    recorded_step(0)
    official_step()
    # Each repetition times the three side by side, and the ratios are taken within
    # a repetition: on a shared machine neighbouring timings see the same load.
    times = {"adamw": [], "hooks": [], "drain": [], "official": []}
    for step in range(1, reps + 1):
        times["adamw"].append(timed(device, optimizer.step))
        hooks, drain = recorded_step(step)
        times["hooks"].append(hooks)
        times["drain"].append(drain)
        times["official"].append(official_step())
    recorder.before_step(0)
    recorder.after_step(0)  # no optimizer step between: just count one record's rows
    med = statistics.median
    return {
        "params_m": sum(p.numel() for _, p in named) / 1e6,
        "rows": len(recorder.drain()),
        **{f"{k}_ms": 1e3 * med(v) for k, v in times.items()},
        "recorder_ratio": med(
            (h + d) / a for h, d, a in zip(times["hooks"], times["drain"], times["adamw"])
        ),
        "official_ratio": med(o / a for o, a in zip(times["official"], times["adamw"])),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--clock", choices=CLOCKS, default="wall",
        help="cpu: this process's CPU time, steadier than wall time on a busy shared "
        "machine (use with --threads 1: idle threads spinning count as CPU time)",
    )
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
          f"{args.clock} clock, medians over {args.reps} repetitions "
          "(ratios taken within each repetition)")
    header = (f"{'model':<10} {'params':>8} {'rows/rec':>8} {'AdamW':>9} {'recorder (hooks+drain)':>24}"
              f" {'rec/AdamW':>9} {'official':>10} {'off/AdamW':>9}")
    print(header)
    for name, shapes in MODELS.items():
        r = bench(shapes, args.reps, device)
        print(
            f"{name:<10} {r['params_m']:>7.1f}M {r['rows']:>8} {r['adamw_ms']:>7.0f}ms "
            f"{r['hooks_ms'] + r['drain_ms']:>9.0f}ms ({r['hooks_ms']:.0f}+{r['drain_ms']:.0f} ms)"
            f"{'':>2} {r['recorder_ratio']:>9.2f} {r['official_ms']:>8.0f}ms {r['official_ratio']:>9.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
