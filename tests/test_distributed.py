"""One run on several processes (rotsweep.distributed): same numbers, same weights, shared data.

The multi-process tests start real gloo process groups on this CPU; they are
tiny (a tiny GPT-2 on synthetic text, tens of steps) because the machine has two
shared cores.

Tolerance of "same numbers": world size 2 with accumulation a and world size 1
with accumulation 2a compute the same gradient, the mean over the same 2a
micro-batches, only summed in another order (each rank's partial sum, then the
all-reduce). That changes the float32 gradient by a few ulps (~1e-7 relative);
AdamW / RV-AdamW are smooth in the gradient, and 50 tiny steps amplify such a
difference to well below 1e-5 relative in the logged losses, so 1e-5 separates
rounding from any real difference (a wrong loss scale, a missing all-reduce or
an overlapping shard moves the losses by 1e-3 or more).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from rotsweep import distributed, launch, presets, store, train
from rotsweep.launch.profiles import load_profile, run_resources
from rotsweep.cli import app
from rotsweep.config import RunConfig
from rotsweep.data import load_dataset
from rotsweep.distributed import Ranks
from rotsweep.errors import UserError
from helpers import needs_slurm

ROTSWEEP = str(Path(sys.executable).parent / "rotsweep")
RELATIVE_TOLERANCE = 1e-5


def two(rank: int) -> Ranks:
    return Ranks(rank=rank, world_size=2, local_rank=rank)


# --- sharded data (no process group needed) ------------------------------------------------


@pytest.mark.parametrize("dataset", ["synthetic-text", "synthetic-images"])
@pytest.mark.parametrize("start_step", [0, 3])
def test_shards_are_disjoint_and_their_union_is_the_single_process_sequence(dataset, start_step):
    data = load_dataset(dataset, seed=0, block_size=8)
    accumulation, steps = 4, 3

    def stream(first):
        return data.train_batches(4, seed=1, start_step=first)

    single = distributed.sharded_train_batches(stream, start_step=start_step, accumulation=accumulation, ranks=Ranks())
    shards = [distributed.sharded_train_batches(stream, start_step=start_step, accumulation=accumulation,
                                                ranks=two(rank)) for rank in (0, 1)]
    for _ in range(steps):
        expected = [next(single) for _ in range(accumulation)]
        got = [next(shards[0]) for _ in range(accumulation // 2)] + [next(shards[1]) for _ in range(accumulation // 2)]
        for (x_expected, y_expected), (x_got, y_got) in zip(expected, got):
            assert torch.equal(x_expected, x_got) and torch.equal(y_expected, y_got)
        # Disjoint: the two ranks' first micro-batches of a step differ.
        assert not torch.equal(got[0][0], got[accumulation // 2][0])


def test_eval_shards_cover_every_batch_exactly_once():
    batches = list(range(7))
    shards = [list(distributed.sharded_eval_batches(iter(batches), two(rank))) for rank in (0, 1)]
    assert sorted(shards[0] + shards[1]) == batches
    assert not set(shards[0]) & set(shards[1])


def test_other_ranks_draw_their_own_dropout_masks_and_redraw_them_on_resume():
    def mask(rank: int, step: int) -> torch.Tensor:
        torch.manual_seed(0)  # where every rank starts from
        distributed.reseed_other_ranks(7, step, two(rank))
        return torch.nn.functional.dropout(torch.ones(64), p=0.5)

    assert torch.equal(mask(0, 3), mask(0, 4))  # rank 0's global stream is left alone
    assert not torch.equal(mask(0, 3), mask(1, 3))  # rank 1 draws another mask...
    assert not torch.equal(mask(1, 3), mask(1, 4))  # ...a new one every step...
    assert torch.equal(mask(1, 3), mask(1, 3))  # ...which a resumed run draws again


def test_accumulation_that_does_not_split_evenly_is_refused():
    assert distributed.per_rank_accumulation(6, two(0)) == 3
    with pytest.raises(UserError, match="accumulation 3 cannot be split evenly over 2 processes"):
        distributed.per_rank_accumulation(3, two(1))


def test_cli_refuses_procs_not_dividing_accumulation_before_writing(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--preset", "tiny-gpt2-adamw", "--procs", "2", "--out", str(out)])
    assert result.exit_code == 2
    assert "--procs 2 does not divide accumulation 1" in result.output and "accumulation=2" in result.output
    assert not out.exists()


# --- launch resources and estimates ---------------------------------------------------------


def test_gpus_per_run_becomes_tasks_and_gpus_per_node():
    profile = load_profile("a100")
    resources = run_resources(profile, gpus_per_run=8, nodes_per_run=2)
    assert (resources["nodes"], resources["tasks_per_node"], resources["gpus_per_node"]) == (2, 4, 4)
    # The CPU profile has no GPUs: the processes are CPU tasks (gloo), and no GPU is asked for.
    local = run_resources(load_profile("local"), gpus_per_run=2)
    assert (local["nodes"], local["tasks_per_node"]) == (1, 2) and "gpus_per_node" not in local
    with pytest.raises(UserError, match="3 GPUs per run cannot be spread evenly over 2 nodes"):
        run_resources(profile, gpus_per_run=3, nodes_per_run=2)


def test_dry_run_header_and_gpu_hours_count_the_gpus_of_a_run():
    runner = CliRunner()
    one = runner.invoke(app, ["launch", "warmup", "--model", "gpt2", "--dry-run", "--json"])
    four = runner.invoke(app, ["launch", "warmup", "--model", "gpt2", "--gpus-per-run", "4", "--dry-run", "--json"])
    assert one.exit_code == 0 and four.exit_code == 0, one.output + four.output
    import json

    one, four = json.loads(one.output), json.loads(four.output)
    assert (one["gpus_per_run"], four["gpus_per_run"]) == (1, 4)
    assert four["gpu_hours"] == pytest.approx(4 * one["gpu_hours"], abs=0.3)  # each rounded to 0.1 h
    header = four["sbatch_header"].splitlines()
    for line in ("#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4"):
        assert line in header
    text = runner.invoke(app, ["launch", "warmup", "--model", "gpt2", "--gpus-per-run", "4", "--dry-run"]).output
    assert "× 4 GPU(s) per run" in text


def test_launch_refuses_gpus_per_run_not_dividing_accumulation():
    result = CliRunner().invoke(app, ["launch", "warmup", "--model", "gpt2", "--gpus-per-run", "3", "--dry-run"])
    assert result.exit_code == 2
    assert "accumulates 40 micro-batches per step, which cannot be shared out over 3 processes" in result.output


# --- multi-process runs (gloo on this CPU) ---------------------------------------------------


def metrics(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / store.METRICS_FILE).set_index(["step", "split", "metric"])["value"].sort_index()


def assert_same_metrics(expected_dir: Path, got_dir: Path) -> None:
    expected, got = metrics(expected_dir), metrics(got_dir)
    assert list(expected.index) == list(got.index)
    relative = ((expected - got).abs() / expected.abs()).max()
    assert relative < RELATIVE_TOLERANCE, f"largest relative difference {relative:g}"


def rotsweep_train(*args: str, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([ROTSWEEP, "train", "--preset", "tiny-gpt2-adamw", "--no-progress", *args],
                          capture_output=True, text=True, timeout=900, **popen)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer, accumulation", [("adamw", 2), ("rv-adamw", 6)])
def test_two_processes_equal_one_process_with_twice_the_accumulation(tmp_path, optimizer, accumulation):
    # accumulation 6 = 3 per rank: 1/3 is inexact, so the sums really are taken in another order.
    settings = ["--set", "steps=50", "--set", f"accumulation={accumulation}",
                "--set", f"rotational={optimizer == 'rv-adamw'}"]
    one = rotsweep_train(*settings, "--out", str(tmp_path / "one"))
    two_procs = rotsweep_train(*settings, "--procs", "2", "--out", str(tmp_path / "two"))
    assert one.returncode == 0 and two_procs.returncode == 0, one.stderr[-2000:] + two_procs.stderr[-2000:]
    assert store.read_status(tmp_path / "two")["world_size"] == 2
    assert_same_metrics(tmp_path / "one", tmp_path / "two")
    # A mistake the comparison must catch: the 2-process run against one process with the
    # accumulation *not* doubled (half the batch) differs far beyond the tolerance.
    half = presets.preset("tiny-gpt2-adamw").with_overrides(
        ["steps=50", f"accumulation={accumulation // 2}", f"rotational={optimizer == 'rv-adamw'}"])
    train.run(half, tmp_path / "half")
    with pytest.raises(AssertionError, match="relative difference"):
        assert_same_metrics(tmp_path / "half", tmp_path / "two")


def _train_and_save_checksums(config, run_dir: str, out_dir: str) -> None:
    """One rank: train through the Trainer and save its parameter checksums before and after."""
    device = torch.device("cpu")
    ranks = distributed.init_from_env(device)
    if ranks.is_main:
        store.prepare_run_dir(config, Path(run_dir))
    distributed.barrier(ranks)
    trainer = train.Trainer(config, Path(run_dir), device, None, train.RunLog(Path(run_dir) / store.LOG_FILE, ranks=ranks),
                            ranks)
    before = distributed.parameter_checksum(trainer.model)
    assert trainer.train() == "done"
    torch.save({"before": before, "after": distributed.parameter_checksum(trainer.model)},
               Path(out_dir) / f"rank{ranks.rank}.pt")


@pytest.mark.slow
def test_all_ranks_hold_identical_weights_after_rotational_steps(tmp_path):
    config = presets.preset("tiny-gpt2-adamw").with_overrides(
        ["steps=12", "accumulation=2", "rotational=true", "checkpoint_interval=0", "eval_interval=0"])
    distributed.spawn(2, _train_and_save_checksums, config, str(tmp_path / "run"), str(tmp_path))
    rank0, rank1 = (torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1))
    assert not torch.equal(rank0["before"], rank0["after"])  # the weights moved...
    assert torch.equal(rank0["before"], rank1["before"])
    assert torch.equal(rank0["after"], rank1["after"])  # ...identically on both ranks, to the bit


def _gloo_threads() -> int:
    """This process's gloo worker threads (Linux names its threads in /proc)."""
    return sum("gloo" in (task / "comm").read_text() for task in Path("/proc/self/task").iterdir())


def _count_gloo_threads_left(config, run_dir: str, out_dir: str) -> None:
    """One rank: a whole run, then how many gloo threads are alive before and after shutdown()."""
    assert train.run(config, run_dir) == "done"
    during = _gloo_threads()
    distributed.shutdown()
    torch.save({"during": during, "after_shutdown": _gloo_threads()}, Path(out_dir) / f"rank{os.environ['RANK']}.pt")


@pytest.mark.slow
def test_shutdown_stops_the_gloo_threads_before_the_process_exits(tmp_path):
    # A gloo thread still alive when Python exits may release a tensor without the interpreter
    # and abort a finished run's rank ("terminate called without an active exception"). The group
    # outlived destroy_process_group when torch.distributed.nn.functional was imported after it.
    config = presets.preset("tiny-gpt2-adamw").with_overrides(["steps=4", "accumulation=2"])
    distributed.spawn(2, _count_gloo_threads_left, config, str(tmp_path / "run"), str(tmp_path))
    for rank in (0, 1):
        counts = torch.load(tmp_path / f"rank{rank}.pt")
        assert counts["during"] > 0  # the run communicated through gloo's threads...
        assert counts["after_shutdown"] == 0  # ...which shutdown() stopped


def spawned_ranks(parent: int) -> list[int]:
    """The pids of the rank processes under a `rotsweep train --procs` process, rank 0 first."""
    children = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        children += [int(pid) for pid in (task / "children").read_text().split()]
    ranks = [pid for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    return sorted(ranks)  # started one after the other: rank order is pid order


@pytest.mark.slow
def test_sigkill_of_a_rank_takes_the_run_down_and_it_resumes_with_another_world_size(tmp_path):
    settings = ["--set", "steps=120", "--set", "accumulation=2", "--set", "checkpoint_interval=20"]
    out = tmp_path / "killed"
    run = subprocess.Popen([ROTSWEEP, "train", "--preset", "tiny-gpt2-adamw", "--no-progress", *settings,
                            "--procs", "2", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not (out / store.CHECKPOINT_FILE).exists():
        assert run.poll() is None, run.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    ranks = spawned_ranks(run.pid)
    assert len(ranks) == 2
    os.kill(ranks[1], signal.SIGKILL)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode != 0
    assert "rank 1 of 2 failed" in stderr and "SIGKILL" in stderr
    assert store.read_status(out)["status"] not in store.FINISHED_STATUSES
    assert 0 < torch.load(out / store.CHECKPOINT_FILE, weights_only=False)["step"] < 120

    resumed = rotsweep_train(*settings, "--out", str(out))  # one process now
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed at step" in (out / store.LOG_FILE).read_text()
    uninterrupted = rotsweep_train(*settings, "--out", str(tmp_path / "uninterrupted"))
    assert uninterrupted.returncode == 0
    assert_same_metrics(tmp_path / "uninterrupted", out)


@pytest.mark.slow
def test_local_executor_runs_a_run_on_two_processes(tmp_path):
    import json

    sweep = tmp_path / "sweep"
    result = CliRunner().invoke(app, [
        "launch", "dynamics", "--model", "gpt2", "--scale", "tiny", "--executor", "local", "--out", str(sweep),
        "--gpus-per-run", "2", "--json", "--set", "steps=20", "--set", "accumulation=2",
        "--grid", "weight_standardization=false"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["submitted_runs"] == 1
    report = wait_for(lambda: (r := launch.sweep_status(sweep).to_dict())["runs"][0]["state"] in launch.STOPPED_STATES and r,
                      900, "the local run")
    assert report["runs"][0]["state"] == "done", report
    run_dir = store.run_dir(sweep, report["runs"][0]["run_id"])
    assert store.read_status(run_dir)["world_size"] == 2
    assert "× 2 processes" in (run_dir / store.LOG_FILE).read_text()


# --- the real SLURM cluster: 2 tasks per run (gloo) -------------------------------------------



def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def slurm_task_pids(jobs_dir: Path) -> dict[int, int]:
    """{SLURM_PROCID: pid} of the tasks running a sweep's submitit jobs (srun sets the variable at exec)."""
    tasks = {}
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or str(jobs_dir).encode() not in (proc / "cmdline").read_bytes():
                continue
            environ = dict(item.split(b"=", 1) for item in (proc / "environ").read_bytes().split(b"\0") if b"=" in item)
        except OSError:
            continue  # gone meanwhile
        if b"SLURM_PROCID" in environ and b"submitit.core._submit" in (proc / "cmdline").read_bytes():
            tasks[int(environ[b"SLURM_PROCID"])] = int(proc.name)
    return tasks


@pytest.mark.slurm
@pytest.mark.slow
@needs_slurm
def test_slurm_run_of_two_tasks_survives_sigkill_of_a_rank_and_ends_as_an_uninterrupted_run(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["launch", "dynamics", "--model", "gpt2", "--scale", "tiny", "--executor", "slurm", "--profile", "local",
            "--out", str(sweep), "--gpus-per-run", "2", "--json",
            "--set", "steps=400", "--set", "accumulation=2", "--set", "checkpoint_interval=50",
            "--set", "eval_interval=100", "--grid", "weight_standardization=false"]
    import json

    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert json.loads(first.output)["submitted_runs"] == 1
    run_id = store.read_manifest(sweep)["launches"][0]["submitted"][0]
    run_dir = store.run_dir(sweep, run_id)
    wait_for(lambda: store.read_status(run_dir).get("step", 0) >= 50, 900, "the first checkpoint")
    assert store.read_status(run_dir)["world_size"] == 2
    tasks = wait_for(lambda: (found := slurm_task_pids(store.jobs_dir(sweep))) and len(found) == 2 and found,
                     60, "two SLURM tasks")
    os.kill(tasks[0], signal.SIGKILL)  # rank 0, the one that writes the files
    stopped = wait_for(lambda: (report := launch.sweep_status(sweep).to_dict())["runs"][0]["state"] in launch.STOPPED_STATES
                       and report, 300, "the job to end")
    assert stopped["runs"][0]["state"] in ("failed", "preempted") and store.read_status(run_dir)["step"] < 400

    again = CliRunner().invoke(app, args)  # the relaunch resubmits the killed run
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["submitted_runs"] == 1
    done = wait_for(lambda: (report := launch.sweep_status(sweep).to_dict())["runs"][0]["state"] in launch.STOPPED_STATES
                    and report, 900, "the relaunched run")
    assert done["runs"][0]["state"] == "done", done
    assert "resumed at step" in (run_dir / store.LOG_FILE).read_text()

    # The same run, uninterrupted, in one process here.
    config = RunConfig.load(run_dir / store.CONFIG_FILE)
    assert train.run(config, tmp_path / "uninterrupted") == "done"
    assert_same_metrics(tmp_path / "uninterrupted", run_dir)
