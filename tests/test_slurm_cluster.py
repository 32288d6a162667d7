"""The local SLURM cluster (slurm/cluster.sh) works the way rotsweep needs it to.

These tests submit real jobs through submitit to the single-node cluster that
`slurm/cluster.sh start` brings up.  They check what the sweep launcher relies
on: the profiles are valid submitit parameters, a job's return value comes
back, a job array returns one result per task, sacct reports job states
(submitit polls job states with it), MaxArraySize caps array indices, and
`scontrol requeue` runs a running job again (the mechanism behind
preemption/timeout requeues).

Without a reachable controller the tests skip, except under CI (env var CI set),
where the SLURM tests must run: there they fail instead.
"""

import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import cloudpickle
import pytest
import submitit

pytestmark = pytest.mark.slurm

SLURM_DIR = Path(__file__).resolve().parent.parent / "slurm"

# The jobs run `python -m submitit.core._submit`, which cannot import this test
# module (tests/ is not on its sys.path), so the functions below travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _controller_problem() -> str | None:
    """Why the local cluster cannot take jobs, or None if it can."""
    if shutil.which("sinfo") is None or shutil.which("srun") is None:
        return "sinfo/srun not found: install and start the cluster with `sudo slurm/cluster.sh start`"
    try:
        out = subprocess.run(["sinfo", "--noheader", "--partition=debug", "--format=%t"],
                             capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out: is slurmctld running? (`slurm/cluster.sh status`)"
    if out.returncode != 0:
        return f"sinfo cannot reach a controller ({out.stderr.strip()}): run `sudo slurm/cluster.sh start`"
    if out.stdout.strip() not in {"idle", "mix", "alloc"}:
        return f"partition debug has no usable node (state {out.stdout.strip()!r}): see `slurm/cluster.sh status`"
    return None


@pytest.fixture(scope="module")
def cluster() -> None:
    problem = _controller_problem()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the SLURM tests, but: {problem}")
        pytest.skip(problem)


def load_profile(name: str) -> dict:
    with open(SLURM_DIR / f"{name}.toml", "rb") as f:
        return tomllib.load(f)


@pytest.fixture
def executor(tmp_path, cluster) -> submitit.AutoExecutor:
    # tmp_path is visible to the jobs: they run as the same user on this machine.
    ex = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    ex.update_parameters(**load_profile("local"))
    return ex


def wait_for(job: submitit.Job, timeout_s: float = 180):
    """job.result(), but failing after timeout_s instead of waiting forever."""
    deadline = time.monotonic() + timeout_s
    while not job.done():
        assert time.monotonic() < deadline, f"job {job.job_id} not done after {timeout_s}s: {job.state}"
        time.sleep(0.5)
    return job.result()


def sacct_state(job_id: str) -> str:
    out = subprocess.run(["sacct", "--noheader", "--parsable2", "--allocations",
                          "--format=State", f"--jobs={job_id}"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def slurm_config() -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True)
    return {key.strip(): value.strip()
            for key, sep, value in (line.partition("=") for line in out.stdout.splitlines()) if sep}


def sbatch_test_only(*args: str) -> subprocess.CompletedProcess:
    """Ask the controller whether it would accept a job, without submitting one."""
    return subprocess.run(["sbatch", "--test-only", "--partition=debug", "--wrap=true", *args],
                          capture_output=True, text=True)


# --- functions run inside the jobs -------------------------------------------

def times_ten_in_job(x: int) -> tuple[int, str]:
    """x * 10, and the SLURM job id this ran under."""
    return x * 10, os.environ["SLURM_JOB_ID"]


def log_start_then_sleep(log: str) -> int:
    """Append a line to `log` per start; sleep on the first start only.

    So the first run is still running when the test requeues it, and the run
    after the requeue finishes at once.  Returns the number of starts.
    """
    with open(log, "a") as f:
        f.write(f"start {os.environ['SLURM_JOB_ID']}\n")
    starts = len(Path(log).read_text().splitlines())
    if starts == 1:
        time.sleep(300)
    return starts


# --- tests -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["local", "a100"])
def test_profile_is_valid_submitit_parameters(tmp_path, cluster, name):
    # update_parameters raises on a key the slurm executor does not know.
    submitit.AutoExecutor(folder=tmp_path, cluster="slurm").update_parameters(**load_profile(name))


def test_job_returns_its_value_and_sacct_says_completed(executor):
    job = executor.submit(times_ten_in_job, 7)
    value, job_id_inside = wait_for(job)
    assert value == 70
    assert job_id_inside == job.job_id
    # The record reaches slurmdbd a moment after the job ends.
    deadline = time.monotonic() + 30
    while (state := sacct_state(job.job_id)) != "COMPLETED":
        assert time.monotonic() < deadline, f"sacct says {state!r} for job {job.job_id}"
        time.sleep(0.5)
    # submitit reads its states through sacct too.
    assert job.get_info(mode="force")["State"] == "COMPLETED"


def test_job_array_returns_one_result_per_task(executor):
    jobs = executor.map_array(times_ten_in_job, [1, 2, 3])
    results = [wait_for(job) for job in jobs]
    assert [value for value, _ in results] == [10, 20, 30]
    # One array: every task is "<array id>_<index>".
    array_id = jobs[0].job_id.split("_")[0]
    assert [job.job_id for job in jobs] == [f"{array_id}_{i}" for i in range(3)]
    # Each task ran as its own SLURM job.
    assert len({job_id for _, job_id in results}) == 3


def test_max_array_size_caps_the_array_index(cluster):
    # The launcher splits sweeps by MaxArraySize; the cap is on the array index,
    # so a single task numbered 1001 is already refused.
    assert slurm_config()["MaxArraySize"] == "1001"
    assert sbatch_test_only("--array=1000").returncode == 0
    refused = sbatch_test_only("--array=1001")
    assert refused.returncode != 0
    assert "Invalid job array specification" in refused.stderr


def test_scontrol_requeue_runs_a_running_job_again(executor, tmp_path):
    log = tmp_path / "starts.log"
    job = executor.submit(log_start_then_sleep, str(log))
    deadline = time.monotonic() + 120
    while not log.exists():
        assert time.monotonic() < deadline, f"job {job.job_id} did not start: {job.state}"
        time.sleep(0.2)

    subprocess.run(["scontrol", "requeue", job.job_id], check=True)

    # The first run is killed before it returns, so the result is the second run's.
    assert wait_for(job) == 2
    assert log.read_text().splitlines() == [f"start {job.job_id}"] * 2
