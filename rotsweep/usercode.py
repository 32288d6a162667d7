"""Your own model and data: `model = "package.module:function"`, `dataset = "package.module:function"`.

A RunConfig's `model` or `dataset` holding a colon is an import path to a builder
of yours instead of a built-in name (an import path is just another string, so it
enters the run_id like any model name):

    model builder     build(config, *, num_classes, vocab_size) -> torch.nn.Module
                      config is the run's RunConfig (read model_options, tiny, ... from it);
                      num_classes / vocab_size come from the data set (None for the other kind)
    dataset builder   build(config, *, seed, data_dir, device) -> a Dataset (rotsweep.data)
                      seed is the data set's own seed (data_seed, else seed), data_dir the
                      data root (--data-dir, $ROTSWEEP_DATA_DIR, ~/.cache/rotsweep/data),
                      device where its tensors should live

What is decayed, and so rotational under an RV, is models.param_groups' rule
(weight_decay_on) unless the model names its decayed tensors itself with a method
`decayed_parameters(self)` returning names from `named_parameters()`.

Where the code lives is not what is computed, so it is not in the RunConfig.
Launching looks for a user module on sys.path, then in the sweep file's directory
and the working directory (`launch_dirs`); the directory each one was found in
(unless it is inside this Python installation) is recorded in the sweep's
manifest.json (`code_path`) and appended to sys.path by the job on the node and by
every later relaunch of the sweep directory, so they work from any shell.

This module imports nothing heavy: the launcher checks an import path (import it,
find a callable) without torch. `try_builders` then builds what is about to be
submitted once, on the CPU at tiny cost, so a builder returning the wrong thing
is one line at launch and not a failed job.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from rotsweep.errors import UserError

MODEL_SIGNATURE = "build(config, *, num_classes, vocab_size) -> torch.nn.Module"
DATASET_SIGNATURE = "build(config, *, seed, data_dir, device) -> a rotsweep.data.Dataset"


def is_import_path(name: str) -> bool:
    """A model or dataset name with a colon names a builder ("package.module:function")."""
    return isinstance(name, str) and ":" in name


def label(name: str) -> str:
    """A name fit for a directory: "examples.tiny_net:build" -> "examples.tiny_net.build"."""
    return name.replace(":", ".") if is_import_path(name) else name


def import_builder(path: str, what: str) -> Callable:
    """The callable at `path` ("package.module:function"); a one-line UserError if there is none.

    what: "model" or "dataset", for the message.
    """
    module_name, _, attribute = path.partition(":")
    fix = ("run rotsweep from the directory that holds it, put it next to the sweep file, or pip install "
           "its package")
    if not module_name or not attribute or ":" in attribute:
        raise UserError(f"{what} {path!r} is not an import path; write \"package.module:function\"")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and (module_name == error.name or module_name.startswith(error.name + ".")):
            raise UserError(f"{what} {path!r}: no module {error.name!r} on the Python path; {fix}") from None
        raise UserError(f"{what} {path!r}: importing {module_name} failed (ModuleNotFoundError: {error}); "
                        "install what it imports") from None
    except Exception as error:  # the user's module raised while importing: name it, one line
        raise UserError(f"{what} {path!r}: importing {module_name} raised {type(error).__name__}: "
                        f"{_first_line(error)}; fix the module") from None
    builder = module
    for part in attribute.split("."):
        if not hasattr(builder, part):
            raise UserError(f"{what} {path!r}: module {module_name} has no attribute {attribute!r}; "
                            f"define {MODEL_SIGNATURE if what == 'model' else DATASET_SIGNATURE} there")
        builder = getattr(builder, part)
    if not callable(builder):
        raise UserError(f"{what} {path!r} is a {type(builder).__name__}, not a function; point it at "
                        f"{MODEL_SIGNATURE if what == 'model' else DATASET_SIGNATURE}")
    return builder


# --- Where the code lives ----------------------------------------------------------------


def add_to_sys_path(directories: Iterable[str | os.PathLike]) -> None:
    """Append directories (absolute) to sys.path, each once: what is installed is still found first."""
    for directory in (str(Path(d).resolve()) for d in directories):
        if directory not in sys.path:
            sys.path.append(directory)


def launch_dirs(sweep_file: str | os.PathLike | None = None) -> list[str]:
    """Where a launch looks for user modules beyond sys.path: the sweep file's directory, the working directory."""
    directories = [] if sweep_file is None else [Path(sweep_file).resolve().parent]
    return [str(d) for d in (*directories, Path.cwd().resolve())]


def code_path(configs: Iterable) -> list[str]:
    """The directories a job must put on sys.path to import the configs' builders, in first-seen order.

    A builder's directory is the one its top-level package or module was imported from;
    one inside this Python installation (site-packages, an installed package) is left
    out, since every process of this Python finds it anyway. Call after the builders
    were imported (check_model / check_dataset).
    """
    installed = {Path(p).resolve() for p in {sys.prefix, sys.base_prefix, sys.exec_prefix}}
    found: list[str] = []
    for config in configs:
        for name in (config.model, config.dataset):
            if not is_import_path(name):
                continue
            root = _import_root(name.partition(":")[0].split(".")[0])
            if root is None or any(root == p or p in root.parents for p in installed):
                continue
            if str(root) not in found:
                found.append(str(root))
    return found


def _import_root(top_level: str) -> Path | None:
    """The sys.path entry that module or package `top_level` was imported from."""
    module = sys.modules.get(top_level)
    if module is None:
        return None
    if getattr(module, "__file__", None):
        file = Path(module.__file__).resolve()
        return file.parent.parent if file.stem == "__init__" else file.parent
    locations = list(getattr(module, "__path__", []))  # a namespace package: no __init__.py
    return Path(locations[0]).resolve().parent if locations else None


# --- Building once at launch ---------------------------------------------------------------


def try_builders(configs: Iterable, data_dir: str | os.PathLike | None = None) -> None:
    """Build each distinct user model and data set of `configs` once, so that a wrong one is refused now.

    A data set builder runs on the CPU (its contract is checked: kind, sizes, batch
    methods, the config's eval_split); a model builder runs on the meta device (shapes,
    no storage: milliseconds even for a large network), on the CPU if the builder
    cannot run there, with num_classes / vocab_size of the run's data set. A user
    model on a built-in data set that is read from files is only imported: rotsweep
    does not read a data set on the submitting machine to learn its class count.
    """
    configs = [c for c in configs if is_import_path(c.model) or is_import_path(c.dataset)]
    if not configs:
        return
    import torch

    from rotsweep.data import dataset_for_run
    from rotsweep.models import model_for_run, param_groups

    tried: set[str] = set()
    for config in configs:
        key = repr((config.model, config.model_options, config.dataset, config.dataset_options,
                    config.val_split, config.block_size, config.eval_split))
        if key in tried:
            continue
        tried.add(key)
        if is_import_path(config.dataset):
            data = dataset_for_run(config, data_dir=data_dir, device="cpu")
        elif config.dataset.startswith("synthetic-"):  # generated in memory: cheap
            data = dataset_for_run(config, data_dir=data_dir, device="cpu")
        else:
            continue
        if config.eval_split not in data.eval_splits:
            raise UserError(f"dataset {config.dataset!r} has no {config.eval_split!r} split to evaluate on "
                            f"(it has: {', '.join(data.eval_splits)}); set eval_split to one of them")
        if not is_import_path(config.model):
            continue
        sizes = dict(num_classes=data.num_classes, vocab_size=data.vocab_size)
        try:
            with torch.device("meta"):
                model = model_for_run(config, **sizes)
        except Exception:  # maybe an op the meta device lacks (e.g. orthogonal init): build it for real
            with torch.random.fork_rng():
                model = model_for_run(config, **sizes)
        param_groups(model, config.weight_decay, config.weight_decay_on)  # checks decayed_parameters()


def call_builder(path: str, what: str, *args: Any, **kwargs: Any) -> Any:
    """Import and call a builder; what it raises becomes one line naming the builder."""
    builder = import_builder(path, what)
    try:
        return builder(*args, **kwargs)
    except UserError:
        raise
    except TypeError as error:  # most often a signature that does not fit the contract
        signature = MODEL_SIGNATURE if what == "model" else DATASET_SIGNATURE
        raise UserError(f"{what} builder {path!r} raised TypeError: {_first_line(error)}; "
                        f"its signature must be {signature}") from None
    except Exception as error:
        raise UserError(f"{what} builder {path!r} raised {type(error).__name__}: {_first_line(error)}; "
                        "fix the builder (the run's config is its first argument)") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
