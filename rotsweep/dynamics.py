"""Measure how every weight moves: norms, angular and RMS updates, radial component.

The paper follows each neuron's weight vector ω through its norm ‖ω‖, its
angular update η_r = ∠(ω_t, ω_t+1) (eq. 3) and, for biases and gains, its RMS
update η_g = sqrt(E[(b_t+1 − b_t)²]) (eq. 2). For weights that are not scale
invariant the gradient also has a radial part. The recorded `radial` statistic
is ⟨ω, ∇L⟩/‖ω‖² of the raw gradient. For SGD(M) this is λ_u of eq. 101
(§3.4, Appendix H): it acts like extra weight decay, comparable to λ because
momentum scales both alike, and the effective weight decay is λ + λ_u; a
positive λ_u means the gradient step shrinks ω. For the Adam family and Lion it
is only the radial share of the raw gradient: their updates divide g by
sqrt(v) (or take its sign) but not λ·ω, so it is not comparable to λ (Appendix
G's λ_u for Adam projects the scaled gradient g/sqrt(v), not recorded here).

Usage, every optimizer step (the recorder does nothing on steps it skips):

    rec = DynamicsRecorder(model.named_parameters(), interval=10)
    loss.backward()              # (and unscaling / clipping)
    rec.before_step(step)        # copies ω_t, reads the gradient
    optimizer.step()
    rec.after_step(step)         # compares ω_t+1 with the copy
    rec.drain()                  # now and then: a DataFrame of the rows so far

Rows follow the dynamics table of docs/architecture.md, without its run_id column: step, param,
stat, reduction, neuron, value. A weight is a parameter with
ndim >= 2; its neurons are the rows of weight.flatten(1) (output channels).

    stat             per neuron r                 layer (whole tensor)
    norm             ‖ω_r‖ before the step        ‖ω‖ (Frobenius)
    angular_update   ∠(ω_r, ω'_r)                 ∠(ω, ω') of the flattened tensor
    rms_update       ‖ω'_r − ω_r‖/sqrt(row size)  ‖ω' − ω‖/sqrt(numel)
    grad_norm        ‖g_r‖                        ‖g‖
    radial           ⟨ω_r, g_r⟩/‖ω_r‖²            ⟨ω, g⟩/‖ω‖²     (λ_u of eq. 101 for SGD(M) only)

Here ω is the weight before the step, ω' after it, g the gradient the optimizer
is about to use. Each record also has one constant row per weight, stat
"fan_in", reduction "layer": C, the size of one neuron's weight vector, which
Table 1's norm predictions need. Each stat gives these rows per recorded step:

    reduction   neuron   value
    layer       -1       the whole-tensor value (right column above); this
                         reduction is rotsweep's addition to the per-neuron ones
    mean, rms,  -1       mean, sqrt(mean of squares), population std (so that
    std, min,            rms² = mean² + std²), min and max over the neurons
    max
    sample      r        the per-neuron value of each of K neurons, chosen once
                         per tensor from `seed` and the parameter's name and
                         kept for the whole run (state_dict() stores them)

A parameter with ndim < 2 (bias, gain) only gets rms_update / layer. A
parameter without a gradient at before_step gets no grad_norm or radial rows
for that step; its norm, angular_update and rms_update rows stay (torch
optimizers skip it, so its update is usually zero). Tied parameters (one
tensor under two names) are recorded once, under the first name.

Angles. acos of a float32 cosine cannot resolve angles below ~3e-4 rad
(1 − cos θ ≈ θ²/2 falls under float32's resolution). Normalising first,
2·atan2(‖â − b̂‖, ‖â + b̂‖), still carries the rounding of â and b̂: measured
about 1e-2 relative error at 1e-6 rad and 3e-5 at 1e-4 rad in float32. We
subtract first instead: the update e = ω − ω' of one optimizer step is exact
in floating point (Sterbenz lemma: no element changes by a factor of 2, and
one that crosses zero is rounded relative to its own small update). Splitting
e along ω',

    e = c·ω' + e⊥,   c = ⟨e, ω'⟩/‖ω'‖²   so that   ω = (1 + c)·ω' + e⊥,

gives ∠(ω, ω') = atan2(‖e⊥‖, (1 + c)·‖ω'‖), with an error of about float eps ×
‖e‖/‖ω'‖ radians: ~1e-7 relative in float32 for any step that is mostly
rotation, down to the resolution of the float32 weights themselves. The
recorder does this in place, in the weights' dtype (all recorded weights share
one dtype and device); angle_between() does it in float64, where the
difference of float32 tensors is exact whatever their norms, for any two
tensors. A zero vector is taken to be at a right angle to any non-zero vector
and at angle 0 to another zero vector.

Cost. The recorder keeps one copy of the recorded parameters (allocated at the
first record and reused) and turns it into the update e in place. A record
reads or writes each weight element 16 times (AdamW's foreach step about 20)
and never waits for the device: results stay there until table()/drain()
moves them to the host in one transfer. Per-neuron norms take one call per
group of same-shaped weights (they share a stacked buffer), row dot products
one per tensor, and everything after that one per model, on flat per-neuron
vectors. benchmarks/bench_dynamics.py compares the cost with one AdamW step.
"""

import math
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.linalg import vector_norm

from rotsweep import store
from rotsweep.errors import UserError
from rotsweep.store import FAN_IN, PARTS_RECORD  # FAN_IN: a constant of each weight: the size C of one neuron's weight vector

STATS = ("norm", "angular_update", "rms_update", "grad_norm", "radial")
NEURON_REDUCTIONS = ("mean", "rms", "std", "min", "max")
COLUMNS = ("step", "param", "stat", "reduction", "neuron", "value")


# Rows whose value needs the gradient: left out for a parameter without one.
_GRAD_STATS = ("grad_norm", "radial")


def _angle(perp_norm, b_norm, c, a_norm):
    """∠(a, b) in [0, π] for a = (1 + c)·b + e⊥ with ‖e⊥‖ = perp_norm (module docstring)."""
    angle = torch.atan2(perp_norm, b_norm * (1 + c))
    # A zero vector has no direction: at π/2 to any other vector, at 0 to another zero.
    zero = (a_norm == 0) | (b_norm == 0)
    return torch.where(zero, (a_norm != b_norm) * (math.pi / 2), angle)


def _safe_div(num, den):
    """num / den, reading 0/0 as 0 (zero vectors have no direction to compare)."""
    return num / den.clamp_min(torch.finfo(den.dtype).tiny)


def angle_between(a: torch.Tensor, b: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Angle in radians between a and b, accurate down to the inputs' resolution.

    dim=None: one angle between the whole (flattened) tensors; dim=d: one angle
    per slice along d, e.g. dim=1 compares the rows of two matrices. Computed in
    float64, where a − b of float32 inputs is exact whatever their norms (so a
    tiny rotation under a large rescaling is still resolved), and returned in
    the inputs' dtype.
    """
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = a.double(), b.double()
    a_norm = vector_norm(a, dim=dim, keepdim=True)
    b_norm = vector_norm(b, dim=dim, keepdim=True)
    e = a - b
    c = _safe_div((e * b).sum(dim=dim, keepdim=True), b_norm.square())
    perp_norm = vector_norm(e - c * b, dim=dim, keepdim=True)
    angle = _angle(perp_norm, b_norm, c, a_norm).to(dtype)
    return angle.reshape(()) if dim is None else angle.squeeze(dim)


# Elements of a product per block in _row_dot: 16 MB of float32 mostly stays in a
# CPU's cache, and the largest GPT2 tensor (50304 x 768) takes 10 blocks.
_DOT_BLOCK = 1 << 22


def _row_dot(x, y, out, scratch):
    """out[r] = ⟨x_r, y_r⟩ for every row r of two matrices.

    torch has no fused multiply-and-sum along a dimension (einsum's batched
    matmul is several times slower than a norm on a CPU, and x * y allocates a
    temporary as large as x, which a CPU pays for in page faults), so the
    product goes through a reused scratch buffer, a block of rows at a time.
    """
    rows = max(1, scratch.numel() // x.shape[1])
    for xs, ys, outs in zip(x.split(rows), y.split(rows), out.split(rows)):
        block = scratch[: xs.numel()].view_as(xs)
        torch.sum(torch.mul(xs, ys, out=block), dim=1, out=outs)


def _neuron_reductions(v):
    """The NEURON_REDUCTIONS of v over its last dimension, stacked first."""
    return torch.stack(
        [
            v.mean(-1),
            v.square().mean(-1).sqrt(),
            v.std(-1, correction=0),  # population std: rms² = mean² + std²
            v.amin(-1),
            v.amax(-1),
        ]
    )


def _sample_rows(rows: int, k: int, seed: int, name: str) -> torch.Tensor:
    """K sorted row indices, a function of (seed, name) only: adding a layer moves no sample."""
    generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))
    return torch.randperm(rows, generator=generator)[:k].sort().values


class _WeightGroup:
    """Weights whose flatten(1) views share one shape.

    Their pre-step copies live in one stacked buffer (k, rows, cols), and their
    neurons lie side by side in the recorder's flat per-neuron vectors, so a
    norm of every neuron or a reduction over each tensor's neurons is a single
    call for the whole group.
    """

    def __init__(self, params, first_row):
        self.params = params
        self.rows, self.cols = params[0].flatten(1).shape
        self.flat = slice(first_row, first_row + len(params) * self.rows)
        self.buffer = None  # (k, rows, cols), allocated at the first record

    def views(self):
        return [p.flatten(1) for p in self.params]

    def neurons(self, x):
        """The group's part of a (..., N) per-neuron tensor, viewed as (..., k, rows)."""
        return x[..., self.flat].unflatten(-1, (len(self.params), self.rows))

    def row_norms(self, out):
        """Per-neuron norms of the buffer, written into the group's part of a flat vector."""
        vector_norm(self.buffer, dim=-1, out=self.neurons(out))


class DynamicsRecorder:
    """Buffer the dynamics of a model's parameters every `interval` steps (module docstring).

    Weights are numbered in group order (t = 0..T-1) and their neurons laid end
    to end in flat per-neuron vectors (length N = all their rows), so that each
    per-neuron formula is one call for the whole model and each reduction over
    neurons one call per group.
    """

    def __init__(
        self,
        named_parameters: Iterable[tuple[str, torch.Tensor]],
        *,
        interval: int = 10,
        sample_neurons: int = 16,
        seed: int = 0,
    ):
        if not isinstance(interval, int) or interval < 1:
            raise UserError(f"dynamics interval must be a positive integer, got {interval!r}")
        if not isinstance(sample_neurons, int) or sample_neurons < 0:
            raise UserError(f"sample_neurons must be an integer >= 0, got {sample_neurons!r}")
        self.interval = interval
        self.sample_neurons = sample_neurons
        self.seed = seed

        named, seen = [], set()
        for name, param in named_parameters:
            if id(param) not in seen:  # a tied tensor is recorded once, first name wins
                seen.add(id(param))
                named.append((name, param))
        if not named:
            raise UserError("DynamicsRecorder got no parameters: pass model.named_parameters()")
        self._names = [name for name, _ in named]
        weights = [(name, p) for name, p in named if p.ndim >= 2]
        if len({p.device for _, p in named}) > 1 or len({p.dtype for _, p in weights}) > 1:
            raise UserError(
                "DynamicsRecorder needs all parameters on one device and all weights in "
                "one dtype; record each part of the model with its own recorder"
            )
        self._vector_names = [name for name, p in named if p.ndim < 2]
        self._vector_params = [p for _, p in named if p.ndim < 2]
        self._vector_numel = torch.tensor(
            [p.numel() for p in self._vector_params], dtype=torch.float32,
            device=self._vector_params[0].device if self._vector_params else None,
        )

        by_shape = {}
        for name, p in weights:
            by_shape.setdefault(tuple(p.flatten(1).shape), []).append((name, p))
        self._groups, self._weight_names, row_counts, first_row = [], [], [], 0
        for (rows, cols), members in by_shape.items():
            group = _WeightGroup([p for _, p in members], first_row)
            self._groups.append(group)
            self._weight_names += [name for name, _ in members]
            row_counts += [rows] * len(members)
            first_row += rows * len(members)
        self._weight_params = [p for g in self._groups for p in g.params]
        starts = np.cumsum([0] + row_counts)
        self._rows_of = [slice(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]

        device = weights[0][1].device if weights else torch.device("cpu")
        dtype = weights[0][1].dtype if weights else torch.float32
        self._tensor_of_row = torch.repeat_interleave(
            torch.arange(len(row_counts)), torch.tensor(row_counts, dtype=torch.long)
        ).to(device)
        self._numel = torch.tensor([p.numel() for p in self._weight_params], dtype=dtype, device=device)
        self._row_size = torch.cat(
            [torch.full((g.rows * len(g.params),), g.cols, dtype=dtype) for g in self._groups]
            or [torch.zeros(0, dtype=dtype)]
        ).to(device)
        self._samples = {
            name: _sample_rows(rows, min(sample_neurons, rows), seed, name)
            for name, rows in zip(self._weight_names, row_counts)
        }
        self._layout = self._row_layout()

        self._vector_buffers = None  # pre-step copies of the vectors, allocated at the first record
        # Per-neuron workspace, one row each: ‖ω_r‖, ‖g_r‖, ⟨ω_r, g_r⟩, ‖e_r‖, ⟨e_r, ω'_r⟩, ‖e⊥_r‖.
        self._work = torch.empty((6, len(self._tensor_of_row)), dtype=dtype, device=device)
        self._scratch = None
        self._pending = None  # (step, has_grad) between before_step and after_step
        self._records = []  # (step, has_grad, values on the device), one per recorded step

    # ----- the per-step calls -------------------------------------------------------

    def should_record(self, step: int) -> bool:
        return step % self.interval == 0

    @torch.no_grad()
    def before_step(self, step: int) -> None:
        """Copy the weights and measure the gradient; call after backward, before optimizer.step()."""
        if not self.should_record(step):
            return
        if self._vector_buffers is None:
            self._allocate()
        torch._foreach_copy_(self._buffers(), self._param_views())

        norm, grad_norm, grad_dot, *_ = self._work
        for group in self._groups:
            group.row_norms(out=norm)
        for a, p, rows in zip(self._weight_buffers(), self._weight_params, self._rows_of):
            if p.grad is None:
                grad_norm[rows] = 0
                grad_dot[rows] = 0
            else:
                g = p.grad.flatten(1)
                vector_norm(g, dim=1, out=grad_norm[rows])
                _row_dot(a, g, grad_dot[rows], self._scratch)
        has_grad = np.array([p.grad is not None for p in self._params_by_name()])
        self._pending = (step, has_grad)

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Compare the weights with the copy; call right after optimizer.step()."""
        if not self.should_record(step):
            return
        if self._pending is None or self._pending[0] != step:
            raise RuntimeError(f"after_step({step}) needs before_step({step}) first")
        has_grad = self._pending[1]
        self._pending = None

        # The buffers now become e = ω − ω'; angles are measured against ω', so the
        # copy of ω is not needed any more (module docstring).
        torch._foreach_sub_(self._buffers(), self._param_views())
        values = []
        if self._groups:
            values = self._weight_values()
        if self._vector_params:
            update_norm = torch.stack(torch._foreach_norm(self._vector_buffers)).float()
            values.append(update_norm / self._vector_numel.sqrt())
        values = torch.cat([v.float() for v in values]) if values else torch.zeros(0)
        self._records.append((step, has_grad, values))

    def _weight_values(self):
        """This step's weight rows, as flat tensors in the order of self._layout."""
        norm, grad_norm, grad_dot, update_norm, update_dot, perp_norm = self._work
        for group in self._groups:
            group.row_norms(out=update_norm)
        for e, p, rows in zip(self._weight_buffers(), self._weight_params, self._rows_of):
            _row_dot(e, p.flatten(1), update_dot[rows], self._scratch)
        a_sq, e_sq = norm.square(), update_norm.square()
        b_sq = (a_sq - 2 * update_dot - e_sq).clamp_min(0)  # ‖ω'‖² from ω = ω' + e
        c = _safe_div(update_dot, b_sq)
        c_rows = [c[rows].unsqueeze(1) for rows in self._rows_of]
        torch._foreach_addcmul_(self._weight_buffers(), self._weight_views(), c_rows, value=-1)
        for group in self._groups:
            group.row_norms(out=perp_norm)  # the buffers now hold e⊥ = e − c·ω'

        per_neuron = torch.stack(
            [
                norm,
                _angle(perp_norm, b_sq.sqrt(), c, norm),
                update_norm / self._row_size.sqrt(),
                grad_norm,
                _safe_div(grad_dot, a_sq),
            ]
        )  # (stat, N)

        # Whole tensors: sums over their rows. For the angle, e − c_t·ω' splits per
        # row into the orthogonal parts e⊥_r and (c_r − c_t)·ω'_r.
        sums = torch.stack([a_sq, b_sq, e_sq, update_dot, grad_norm.square(), grad_dot])
        sums = self._per_tensor(sums, lambda v: v.sum(-1))
        a_sq_t, b_sq_t, e_sq_t, update_dot_t, grad_sq_t, grad_dot_t = sums
        c_t = _safe_div(update_dot_t, b_sq_t)
        perp_sq = perp_norm.square() + (c - c_t[self._tensor_of_row]).square() * b_sq
        perp_sq_t = self._per_tensor(perp_sq, lambda v: v.sum(-1))
        layer = torch.stack(
            [
                a_sq_t.sqrt(),
                _angle(perp_sq_t.sqrt(), b_sq_t.sqrt(), c_t, a_sq_t.sqrt()),
                (e_sq_t / self._numel).sqrt(),
                grad_sq_t.sqrt(),
                _safe_div(grad_dot_t, a_sq_t),
            ]
        )  # (stat, T)

        over_neurons = self._per_tensor(per_neuron, _neuron_reductions)  # (reduction, stat, T)
        samples = per_neuron[:, self._layout["sample_index"]]
        return [layer.flatten(), over_neurons.flatten(), samples.flatten()]

    def _per_tensor(self, x, reduce):
        """(..., N) per-neuron values -> (..., T): `reduce` over each weight tensor's neurons."""
        return torch.cat([reduce(g.neurons(x)) for g in self._groups], dim=-1)

    # ----- buffers and parameters in matching order ---------------------------------

    def _allocate(self):
        """The copy of the parameters (kept between records) and the dot products' scratch."""
        for group in self._groups:
            p = group.params[0]
            group.buffer = p.new_empty((len(group.params), group.rows, group.cols))
        self._vector_buffers = [torch.empty_like(p) for p in self._vector_params]
        if self._groups:
            biggest = max(g.rows * g.cols for g in self._groups)
            widest = max(g.cols for g in self._groups)
            self._scratch = self._work.new_empty(max(widest, min(biggest, _DOT_BLOCK)))

    def _weight_buffers(self):
        return [e for g in self._groups for e in g.buffer]

    def _weight_views(self):
        return [v for g in self._groups for v in g.views()]

    def _buffers(self):
        return self._weight_buffers() + self._vector_buffers

    def _param_views(self):
        return self._weight_views() + self._vector_params

    def _params_by_name(self):
        """Every recorded parameter, in the order of self._names."""
        by_name = dict(zip(self._weight_names, self._weight_params))
        by_name.update(zip(self._vector_names, self._vector_params))
        return [by_name[n] for n in self._names]

    # ----- buffered rows -> DataFrame ----------------------------------------------

    def table(self) -> pd.DataFrame:
        """All buffered rows (long format, columns COLUMNS), moved to the host in one transfer."""
        layout = self._layout
        n_steps, n_rows = len(self._records), len(layout["param"])
        steps = np.array([step for step, _, _ in self._records], dtype=np.int64)
        has_grad = np.array([mask for _, mask, _ in self._records], dtype=bool)
        has_grad = has_grad.reshape(n_steps, len(self._names))
        values = np.zeros((0, n_rows))
        if self._records:
            values = torch.stack([v for _, _, v in self._records]).cpu().numpy()
        # Model order, and no gradient rows for a parameter that had no gradient.
        values = values[:, layout["order"]].astype(np.float64)
        keep = (has_grad[:, layout["param_index"]] | ~layout["needs_grad"]).ravel()
        frame = pd.DataFrame(
            {
                "step": np.repeat(steps, n_rows)[keep],
                "param": np.tile(layout["param"], n_steps)[keep],
                "stat": np.tile(layout["stat"], n_steps)[keep],
                "reduction": np.tile(layout["reduction"], n_steps)[keep],
                "neuron": np.tile(layout["neuron"], n_steps)[keep],
                "value": values.ravel()[keep],
            }
        )
        # Table 1's norm prediction for a neuron depends on its fan-in C: one constant row
        # per weight and record, so the results tables carry it without the model.
        fan_ins = np.array([p[0].numel() for p in self._weight_params], dtype=np.float64)
        constant = pd.DataFrame({
            "step": np.repeat(steps, len(fan_ins)),
            "param": np.tile(np.array(self._weight_names, dtype=object), n_steps),
            "stat": FAN_IN, "reduction": "layer", "neuron": np.int64(-1),
            "value": np.tile(fan_ins, n_steps),
        })
        frame = pd.concat([frame, constant], ignore_index=True) if n_steps else frame
        return frame.astype({"param": str, "stat": str, "reduction": str, "neuron": "int64"})

    def drain(self) -> pd.DataFrame:
        """table(), then forget those rows (train.py appends each drain to dynamics.parquet)."""
        frame = self.table()
        self._records.clear()
        return frame

    def _row_layout(self):
        """Describe, once, the rows of one record in the order after_step produces them."""
        rows = []  # (param, stat, reduction, neuron)
        for reduction in ("layer",) + NEURON_REDUCTIONS:
            for stat in STATS:
                rows += [(name, stat, reduction, -1) for name in self._weight_names]
        sample_index = []
        for stat in STATS:
            for name, rows_of in zip(self._weight_names, self._rows_of):
                rows += [(name, stat, "sample", r) for r in self._samples[name].tolist()]
                if stat == STATS[0]:
                    sample_index += (rows_of.start + self._samples[name]).tolist()
        rows += [(name, "rms_update", "layer", -1) for name in self._vector_names]

        # Sorted for reading: model order, then stat, then reduction, then neuron.
        param_index = {name: i for i, name in enumerate(self._names)}
        reduction_index = {r: i for i, r in enumerate(("layer",) + NEURON_REDUCTIONS + ("sample",))}
        keys = [(param_index[p], STATS.index(s), reduction_index[r], n) for p, s, r, n in rows]
        order = np.array(sorted(range(len(rows)), key=keys.__getitem__), dtype=np.int64)
        rows = [rows[i] for i in order]
        return {
            "order": order,
            "sample_index": torch.tensor(sample_index, dtype=torch.long, device=self._tensor_of_row.device),
            "param": np.array([r[0] for r in rows], dtype=object),
            "stat": np.array([r[1] for r in rows], dtype=object),
            "reduction": np.array([r[2] for r in rows], dtype=object),
            "neuron": np.array([r[3] for r in rows], dtype=np.int64),
            "param_index": np.array([param_index[r[0]] for r in rows], dtype=np.int64),
            "needs_grad": np.array([r[1] in _GRAD_STATS for r in rows], dtype=bool),
        }

    # ----- resume -------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The settings and sampled neurons; buffered rows are not included (drain first)."""
        return {
            "interval": self.interval,
            "sample_neurons": self.sample_neurons,
            "seed": self.seed,
            "samples": {name: rows.clone() for name, rows in self._samples.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Record the same neurons as the run that saved `state`."""
        for key in ("interval", "sample_neurons"):
            if state[key] != getattr(self, key):
                raise UserError(
                    f"checkpoint recorded dynamics with {key}={state[key]}, this run uses "
                    f"{getattr(self, key)}: resume with the run's original config"
                )
        saved, ours = state["samples"], set(self._samples)
        if set(saved) != ours:
            raise UserError(
                "checkpoint's dynamics recorder measured other weights "
                f"({sorted(set(saved) ^ ours)[:3]} differ): resume with the same model"
            )
        samples = {}
        for name, rows_of in zip(self._weight_names, self._rows_of):
            rows = torch.as_tensor(saved[name], dtype=torch.long).cpu()
            n_rows = rows_of.stop - rows_of.start
            in_range = rows.numel() == 0 or (rows.min() >= 0 and rows.max() < n_rows)
            if rows.shape != self._samples[name].shape or not in_range:
                raise UserError(
                    f"checkpoint's sampled neurons do not fit {name}: resume with the same model"
                )
            samples[name] = rows
        self._samples = samples
        self.seed = state["seed"]
        self._layout = self._row_layout()


# --- Part files ----------------------------------------------------------------------------
#
# A run appends its rows as one part file per checkpoint and records each part in
# PARTS_RECORD, so that a part deleted later is a gap the reader can see
# (rotsweep.analysis.gather reports it), not a silently shorter run.


def _read_record(directory: Path) -> dict:
    try:
        return store.read_json(directory / PARTS_RECORD)["parts"]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return {}  # none yet, or unreadable: the parts on disk are all we know


def write_part(directory: str | Path, rows: pd.DataFrame) -> Path:
    """Write the rows of some recorded steps as a new part of `directory` and record it."""
    directory = Path(directory)
    first, last = int(rows["step"].min()), int(rows["step"].max())
    path = directory / f"part-{first:09d}-{last:09d}.parquet"
    store.write_parquet(path, rows)
    # The part before its record: a kill in between leaves a part that is read but not
    # recorded, never a record of a part that was not written.
    record = _read_record(directory)
    record[path.name] = {"first_step": first, "last_step": last, "rows": len(rows)}
    store.write_json(directory / PARTS_RECORD, {"parts": dict(sorted(record.items()))})
    return path


def _last_step(part_name: str) -> int:
    return int(Path(part_name).stem.split("-")[2])


def discard_parts_from(directory: str | Path, step: int) -> None:
    """Remove the parts whose last step is >= `step` (a resumed run records them again)."""
    directory = Path(directory)
    # The record first: a kill in between leaves an unrecorded part, never a recorded one missing.
    record = _read_record(directory)
    if record:
        kept = {name: entry for name, entry in record.items() if _last_step(name) < step}
        store.write_json(directory / PARTS_RECORD, {"parts": kept})
    for part in directory.glob("part-*.parquet"):
        if _last_step(part.name) >= step:
            part.unlink()


__all__ = ["DynamicsRecorder", "angle_between", "write_part", "discard_parts_from", "STATS", "FAN_IN",
           "NEURON_REDUCTIONS", "COLUMNS", "PARTS_RECORD"]
