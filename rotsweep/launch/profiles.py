"""Cluster profiles (slurm/NAME.toml) and the resources of one run's job."""

from __future__ import annotations

from pathlib import Path

from rotsweep.errors import UserError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

PROFILE_DIR = Path(__file__).resolve().parents[2] / "slurm"


def default_profile(scale: str) -> str:
    """Paper-scale runs go to A100 nodes; tiny runs are CPU runs, like the local test cluster's."""
    return "a100" if scale == "paper" else "local"


def load_profile(name: str) -> dict:
    """A cluster profile: slurm/NAME.toml, or a path to a .toml file.

    Keys are submitit AutoExecutor parameters (timeout_min, mem_gb, cpus_per_task,
    gpus_per_node, slurm_partition, slurm_array_parallelism, ...), see slurm/README.md.
    """
    path = Path(name) if name.endswith(".toml") else PROFILE_DIR / f"{name}.toml"
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))) or "none"
        what = "a directory, not a file" if path.is_dir() else "no file"
        raise UserError(f"unknown profile {name!r}: {path} is {what}; available profiles: {available}")
    try:
        profile = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"profile {path} is not UTF-8 text; save it as UTF-8 TOML") from None
    except OSError as error:
        raise UserError(f"cannot read profile {path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"profile {path} is not valid TOML: {error}") from None
    check_profile(profile, path)
    return profile


# The type of each AutoExecutor parameter that a profile may set, besides the slurm_* ones
# (submitit's AutoExecutor: the generic parameters every cluster understands).
GENERIC_PROFILE_TYPES = {"timeout_min": int, "mem_gb": (int, float), "nodes": int, "tasks_per_node": int,
                         "cpus_per_task": int, "gpus_per_node": int, "stderr_to_stdout": bool}


def check_profile(profile: dict, path: Path) -> None:
    """Refuse unknown keys and wrongly typed values now, before a manifest is written or sbatch asked."""
    import typing

    from rotsweep.launch.slurm import submitit_sbatch_parameter_types

    slurm_types = submitit_sbatch_parameter_types()
    for key, value in profile.items():
        if key.startswith("slurm_") and key[len("slurm_"):] in slurm_types:
            expected = typing.get_args(slurm_types[key[len("slurm_"):]]) or (slurm_types[key[len("slurm_"):]],)
            expected = tuple(typing.get_origin(t) or t for t in expected if t is not type(None))
        elif key in GENERIC_PROFILE_TYPES:
            expected = GENERIC_PROFILE_TYPES[key]
            expected = expected if isinstance(expected, tuple) else (expected,)
        else:
            raise UserError(f"profile {path}: unknown key {key!r}; keys are submitit AutoExecutor parameters "
                            f"({', '.join(GENERIC_PROFILE_TYPES)}, or slurm_ and an sbatch option), see slurm/README.md")
        # TOML's true/false are Python bools, which isinstance also counts as ints.
        if not (bool in expected if isinstance(value, bool) else isinstance(value, expected)):
            names = " or ".join(t.__name__ for t in expected)
            raise UserError(f"profile {path}: {key} = {value!r} has the wrong type, expected {names}")


def run_resources(profile: dict, gpus_per_run: int | None = None, nodes_per_run: int | None = None) -> dict:
    """The profile with the processes of one run laid out as submitit parameters.

    A run of G processes (one per GPU; CPU processes with gloo on a profile without
    gpus_per_node) on N nodes is one job of `nodes` = N and `tasks_per_node` = G / N,
    plus `gpus_per_node` = G / N on a GPU profile. G and N come from the arguments, else
    from the profile's own nodes × tasks_per_node and nodes (1 and 1 if absent). They do
    not change what a run computes (see rotsweep.distributed), so they are not in run_ids.
    """
    parameters = dict(profile)
    processes = gpus_per_run or parameters.get("nodes", 1) * parameters.get("tasks_per_node", 1)
    nodes = nodes_per_run or parameters.get("nodes", 1)
    if processes < 1 or nodes < 1:
        raise UserError(f"GPUs per run ({processes}) and nodes per run ({nodes}) must be at least 1")
    if processes % nodes:
        raise UserError(f"{processes} GPUs per run cannot be spread evenly over {nodes} nodes; "
                        f"choose a number of GPUs per run that is a multiple of the nodes per run")
    parameters["nodes"] = nodes
    parameters["tasks_per_node"] = processes // nodes
    if "gpus_per_node" in parameters:
        parameters["gpus_per_node"] = processes // nodes
    return parameters


def processes_per_run(resources: dict) -> int:
    return resources.get("nodes", 1) * resources.get("tasks_per_node", 1)
