"""Training paths beyond the plain run: accumulation, clipping, bf16, label smoothing, epochs, preemption.

One optimizer step of train.Trainer is compared with the same step computed
here from its definition: plain SGD (momentum 0, no weight decay) moves each
weight by −lr·g, so the weights after the step show exactly which gradient
the trainer used. The preemption tests interrupt a real training process and
resume it.
"""

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from itertools import islice

import pandas as pd
import pytest
import torch

from rotsweep import store, train
from rotsweep.config import RunConfig
from rotsweep.presets import preset

# Plain SGD at a constant lr: a step is w ← w − lr·g, nothing else.
PLAIN_SGD = dict(optimizer="sgdm", momentum=0.0, weight_decay=0.0, lr=0.1, schedule="constant", warmup_steps=0)
# A tiny GPT (LayerNorm, no BatchNorm): its loss on 2 × 8 windows is its loss on the 16 windows together.
GPT = dict(PLAIN_SGD, model_options={"dropout": 0.0}, batch_size=8, steps=5)


def make_trainer(config: RunConfig, run_dir) -> train.Trainer:
    run_dir.mkdir(parents=True, exist_ok=True)
    return train.Trainer(config, run_dir, torch.device("cpu"), None, train.RunLog(run_dir / store.LOG_FILE))


def first_batches(trainer: train.Trainer, count: int):
    """The first `count` micro-batches the trainer will draw, concatenated into one batch."""
    batches = list(islice(trainer.data.train_batches(trainer.config.batch_size, seed=trainer.config.seed), count))
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def cross_entropy_by_hand(logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Mean over examples of (1 − ε)·(−log p_target) + ε·mean_k(−log p_k) (label smoothing, Szegedy et al.)."""
    log_p = torch.log_softmax(logits.reshape(-1, logits.shape[-1]).double(), dim=-1)
    targets = targets.reshape(-1)
    nll = -log_p.gather(1, targets.unsqueeze(1)).squeeze(1)
    return ((1 - smoothing) * nll - smoothing * log_p.mean(dim=1)).mean()


def step_and_compare(trainer, expected_loss, expected_grads, *, atol=1e-6):
    """Run one trainer step; its loss and new weights must be the hand-computed ones."""
    before = [p.detach().clone() for p in trainer.model.parameters()]
    loss = trainer.train_step(trainer.data.train_batches(trainer.config.batch_size, seed=trainer.config.seed))
    assert loss == pytest.approx(expected_loss.item(), rel=1e-5)
    lr = trainer.config.lr
    for p, p0, g in zip(trainer.model.parameters(), before, expected_grads):
        assert torch.allclose(p.detach(), p0 - lr * g, rtol=0, atol=atol)
    moved = max((p.detach() - p0).abs().max().item() for p, p0 in zip(trainer.model.parameters(), before))
    assert moved > 100 * atol  # the step did something to compare


def gradients(trainer, loss):
    return [g.float() for g in torch.autograd.grad(loss, list(trainer.model.parameters()))]


def test_accumulation_equals_one_bigger_batch(tmp_path):
    config = preset("tiny-gpt2-adamw", **GPT, accumulation=2)
    trainer = make_trainer(config, tmp_path)
    inputs, targets = first_batches(trainer, 2)  # 2 micro-batches of 8 = the step's 16 windows
    assert inputs.shape[0] == 16
    loss = cross_entropy_by_hand(trainer.model(inputs), targets)
    step_and_compare(trainer, loss, gradients(trainer, loss))


def test_grad_clip_scales_the_whole_gradient_to_the_clip_norm(tmp_path):
    config = preset("tiny-gpt2-adamw", **GPT, grad_clip=0.05)
    trainer = make_trainer(config, tmp_path)
    inputs, targets = first_batches(trainer, 1)
    loss = cross_entropy_by_hand(trainer.model(inputs), targets)
    grads = gradients(trainer, loss)
    total = math.sqrt(sum(g.double().square().sum().item() for g in grads))
    assert total > 4 * config.grad_clip  # the clip acts
    step_and_compare(trainer, loss, [g * config.grad_clip / total for g in grads])


def test_label_smoothing_is_in_the_training_loss_and_its_gradient(tmp_path):
    config = preset("tiny-gpt2-adamw", **GPT, label_smoothing=0.2)
    trainer = make_trainer(config, tmp_path)
    inputs, targets = first_batches(trainer, 1)
    logits = trainer.model(inputs)
    loss = cross_entropy_by_hand(logits, targets, smoothing=0.2)
    assert abs(loss.item() - cross_entropy_by_hand(logits, targets).item()) > 1e-3  # smoothing changes it
    step_and_compare(trainer, loss, gradients(trainer, loss))


def test_bf16_autocast_on_the_cpu(tmp_path):
    """The forward pass runs in bfloat16; the loss is close to float32's but not equal; a run learns."""
    fp32 = make_trainer(preset("tiny-gpt2-adamw", **GPT), tmp_path / "fp32")
    bf16 = make_trainer(preset("tiny-gpt2-adamw", **GPT, precision="bf16"), tmp_path / "bf16")
    inputs, _ = first_batches(bf16, 1)
    with bf16.autocast():
        assert bf16.forward(inputs).dtype == torch.bfloat16
    batches = {name: t.data.train_batches(8, seed=0) for name, t in (("fp32", fp32), ("bf16", bf16))}
    loss32, loss16 = fp32.train_step(batches["fp32"]), bf16.train_step(batches["bf16"])
    assert loss16 != loss32 and loss16 == pytest.approx(loss32, rel=0.02)

    config = preset("tiny-gpt2-adamw", steps=100, precision="bf16", eval_interval=50)
    assert train.run(config, tmp_path / "run") == "done"
    metrics = pd.read_parquet(tmp_path / "run" / store.METRICS_FILE)
    loss = metrics[(metrics["split"] == "train") & (metrics["metric"] == "loss")]["value"].to_numpy()
    assert loss[-1] < 0.8 * loss[0], loss


def test_epoch_based_length_and_warmup(tmp_path):
    """640 images in batches of 32 × 2 micro-batches: 10 steps an epoch; 2.5 epochs; warmup 0.5 epoch."""
    config = preset("tiny-resnet20-adamw", steps=None, epochs=2.5, warmup_steps=0, warmup_epochs=0.5,
                    batch_size=32, accumulation=2, dataset_options={"image_size": 16, "num_train": 640},
                    eval_interval=10, checkpoint_interval=0, lr=0.01, warmup_start_lr=1e-4)
    trainer = make_trainer(config, tmp_path / "steps")
    batches = trainer.data.train_batches(32, seed=0)
    applied = []
    for _ in range(8):
        trainer.train_step(batches)
        applied.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.step += 1
    # Warmup over 5 steps from warmup_start_lr, overlapping a cosine over 25 steps.
    warm = [1e-4 + (0.01 - 1e-4) * t / 5 for t in range(5)]
    cosine = [0.01 * (1 + math.cos(math.pi * t / 25)) / 2 for t in range(5, 8)]
    assert applied == pytest.approx(warm + cosine, rel=1e-12)

    assert train.run(config, tmp_path / "run") == "done"
    status = store.read_status(tmp_path / "run")
    assert (status["total_steps"], status["warmup_steps"], status["steps_per_epoch"], status["step"]) == (25, 5, 10, 25)
    metrics = pd.read_parquet(tmp_path / "run" / store.METRICS_FILE)
    assert metrics["epoch"].max() == 2.5
    assert sorted(metrics[metrics["split"] == "val"]["step"].unique()) == [10, 20, 25]


# ------------------------------------------------------------ preemption and resume


WORKER = textwrap.dedent(
    """
    import signal, sys, torch
    torch.set_num_threads(1)
    # As submitit does on preemption or timeout: requeue the job, then sys.exit from the signal handler.
    signal.signal(signal.SIGUSR2, lambda signum, frame: sys.exit(-1))
    from rotsweep import train
    from rotsweep.config import RunConfig
    train.run(RunConfig.load(sys.argv[1]), sys.argv[2])
    """
)


def interrupt(config: RunConfig, run_dir, tmp_path, signum: int) -> None:
    """Start a training process, send it `signum` once it has gone past a checkpoint, wait for it to end."""
    config_path = tmp_path / f"config-{signum}.json"
    config_path.write_text(config.canonical_json())
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(config_path), str(run_dir)],
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            status = store.read_status(run_dir)
            if status.get("step", 0) > config.checkpoint_interval and status["status"] == "running":
                break
            if worker.poll() is not None:
                pytest.fail("the worker ended before it could be interrupted")
            time.sleep(0.05)
        else:
            pytest.fail("the worker never passed its first checkpoint")
        worker.send_signal(signum)
        assert worker.wait(timeout=120) != 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def final_state(run_dir):
    metrics = pd.read_parquet(run_dir / store.METRICS_FILE)
    weights = torch.load(run_dir / store.CHECKPOINT_FILE, weights_only=False)["model"]
    return metrics, weights


@pytest.mark.parametrize("signum, changes", [
    (signal.SIGINT, dict(rotational=True, imbalance_portion=0.5, imbalance_factor=4.0)),  # Ctrl-C
    (signal.SIGUSR2, dict(rotational=True)),  # SLURM preemption through submitit: SystemExit
], ids=["SIGINT-imbalanced-rotational", "SystemExit-rotational"])
def test_an_interrupted_run_is_preempted_and_resumes_exactly(tmp_path, signum, changes):
    config = preset("tiny-resnet20-adamw", steps=120, checkpoint_interval=30, eval_interval=20,
                    dynamics_interval=10, **changes)
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert train.run(config, straight) == "done"

    interrupt(config, interrupted, tmp_path, signum)
    status = store.read_status(interrupted)
    assert status["status"] == "preempted" and status.get("error") is None
    assert 0 < torch.load(interrupted / store.CHECKPOINT_FILE, weights_only=False)["step"] < config.steps
    assert "interrupted" in (interrupted / store.LOG_FILE).read_text()

    assert train.run(config, interrupted) == "done"
    (metrics_a, weights_a), (metrics_b, weights_b) = final_state(straight), final_state(interrupted)
    pd.testing.assert_frame_equal(metrics_a, metrics_b)
    assert weights_a.keys() == weights_b.keys() and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    dynamics = [pd.read_parquet(d / store.DYNAMICS_DIR).sort_values(["step", "param", "stat", "reduction", "neuron"])
                .reset_index(drop=True) for d in (straight, interrupted)]
    pd.testing.assert_frame_equal(*dynamics)
