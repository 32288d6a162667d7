"""The dry run: everything a launch would do, as data (DryRun.to_dict) and as text (DryRun.format)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rotsweep.config import RunConfig
from rotsweep.launch.finish import check_then, describe_steps, finisher_steps
from rotsweep.launch.labels import describe_run
from rotsweep.launch.plan import Plan
from rotsweep.launch.profiles import default_profile, load_profile, processes_per_run, run_resources
from rotsweep.launch.submit import check_divides_accumulation, check_submission_options, pack


# A100 throughput of each recipe, from the train durations of the paper's Tables 4 and 5:
# ResNet-20/18 CIFAR: 200 epochs x 50k images in 35 min; ResNet-50 ImageNet: 90 x 1.28M in 30 h;
# GPT2-124M: 15k steps x 165 x 512 tokens in 3 h (Wikitext), 5k x 491,520 tokens in 4 h (OpenWebText).
A100_IMAGES_PER_SECOND = {"resnet20": 4762.0, "resnet18": 4762.0, "resnet18-ln": 4762.0, "vgg13": 4762.0,
                          "resnet50": 1067.0}
A100_TOKENS_PER_SECOND = {"wikitext": 117_000.0, "openwebtext": 170_000.0}
TRAIN_SET_SIZES = {"cifar10": 50_000, "cifar100": 50_000, "imagenet": 1_281_167}


def estimated_gpu_hours(config: RunConfig) -> float | None:
    """Rough A100 hours of one run from the paper's measured durations (None if unknown)."""
    samples_per_step = config.batch_size * config.accumulation
    if config.model == "gpt2" and config.dataset in A100_TOKENS_PER_SECOND and config.steps is not None:
        tokens = config.steps * samples_per_step * (config.block_size or 1024)
        return tokens / A100_TOKENS_PER_SECOND[config.dataset] / 3600
    if config.model in A100_IMAGES_PER_SECOND and config.dataset in TRAIN_SET_SIZES:
        train_size = TRAIN_SET_SIZES[config.dataset] * (0.9 if config.val_split else 1.0)
        steps = config.steps if config.steps is not None else config.epochs * train_size // samples_per_step
        return steps * samples_per_step / A100_IMAGES_PER_SECOND[config.model] / 3600
    return None


@dataclass
class DryRun:
    experiment: str
    model: str
    scale: str
    sweep: str
    axes: dict
    runs: list[dict]  # {"run_id", "state", "submit", "config"} per run of the plan
    to_submit: int
    already_done: int
    executor: str
    profile: dict | None  # the resources of each job; None for jobs on this machine
    jobs: int
    runs_per_job: int
    max_parallel: int | None
    threads_per_job: int | None
    gpus_per_run: int
    gpu_hours: float | None  # paper scale only, from the paper's durations
    problems: list[str]
    sbatch_header: str | None = None  # the scheduler's job script header, when jobs would be submitted
    then: str | None = None  # the steps a finisher would run once the sweep's jobs end (launch --then)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        for optional in ("sbatch_header", "then"):
            if data[optional] is None:
                del data[optional]
        return data

    def format(self) -> str:
        from rotsweep.launch.backends import get_backend

        lines = [
            f"{self.experiment} / {self.model} / {self.scale} scale -> {self.sweep}",
            "grid: " + "; ".join(f"{axis} = {values}" for axis, values in self.axes.items()),
            f"runs: {len(self.runs)} ({self.to_submit} to submit, {self.already_done} already finished)",
        ]
        for run in self.runs:
            mark = "submit" if run["submit"] else "skip  "
            lines.append(f"  {mark} {run['run_id']}  {run['state']:9s} {describe_run(run['config'])}")
        lines.append(get_backend(self.executor).describe_jobs(self))
        if not self.to_submit:
            lines.append("to_submit: 0 (nothing to do: every run is finished, in flight or needs --rerun-failed)")
        lines += [f"problem: {problem}" for problem in self.problems]
        if self.gpu_hours is not None:
            lines.append(f"estimated A100 GPU-hours (from the paper's Table 4/5 durations, × {self.gpus_per_run} "
                         f"GPU(s) per run): {self.gpu_hours}")
            if self.gpus_per_run > 1:
                lines.append(f"  (held for a run's single-GPU duration: an upper bound; at ideal DDP scaling a run "
                             f"takes 1/{self.gpus_per_run} of it and the GPU-hours are those of one GPU)")
        if self.then is not None:
            lines.append(f"then: {describe_steps(self.then)}, once every job of the sweep has ended")
        if self.sbatch_header is not None:
            lines += ["sbatch header:", self.sbatch_header]
        lines.append("dry run: nothing was submitted or written")
        return "\n".join(lines)


def dry_run(
    plan: Plan, *, executor: str, profile_name: str | None, max_parallel: int | None, runs_per_job: int,
    gpus_per_run: int | None = None, nodes_per_run: int | None = None, then: str | None = None,
) -> DryRun:
    """Everything `launch` would do: runs, grid, resources, sbatch header, GPU hours.

    Checks what `submit` checks first, and counts jobs as it packs them; local jobs have no
    profile (their resources are this machine's), and nothing to submit has no sbatch header.
    GPU hours count every GPU a run holds: the estimated single-GPU run hours × the GPUs of
    its job, an upper bound (a run on G GPUs at ideal scaling takes 1/G of the time).
    """
    backend = check_submission_options(executor, max_parallel, runs_per_job)
    check_then(then)
    profile = run_resources(load_profile(profile_name or default_profile(plan.scale)), gpus_per_run, nodes_per_run)
    gpus_per_job = processes_per_run(profile)  # one GPU per process
    check_divides_accumulation(plan.to_submit, gpus_per_job)
    packed = backend.packing(len(plan.to_submit), max_parallel, runs_per_job)
    jobs = len(pack(plan.to_submit, packed.runs_per_job))
    hours = [estimated_gpu_hours(run.config) for run in plan.to_submit]
    known = [h for h in hours if h is not None]
    return DryRun(
        experiment=plan.experiment,
        model=plan.model,
        scale=plan.scale,
        sweep=str(plan.sweep),
        axes=plan.axes,
        runs=[
            {"run_id": run.config.run_id, "state": run.state.state, "submit": run.submit,
             "config": run.config.to_dict()}
            for run in plan.runs
        ],
        to_submit=len(plan.to_submit),
        already_done=len(plan.already_done),
        executor=executor,
        profile=backend.dry_run_profile(profile),
        jobs=jobs,
        runs_per_job=packed.runs_per_job,
        max_parallel=packed.max_parallel,
        threads_per_job=packed.threads,
        gpus_per_run=gpus_per_job,
        gpu_hours=round(sum(known) * gpus_per_job, 1) if known and plan.scale == "paper" else None,
        problems=plan.problems,
        sbatch_header=backend.dry_run_header(profile, plan.sweep, f"rotsweep-{plan.experiment}", jobs, max_parallel),
        then=finisher_steps(plan.sweep, then, submits_jobs=jobs > 0),
    )
