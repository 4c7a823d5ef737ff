"""What every command module of `relightful` shares: the job error, the params options and config loading.

A leaf: it imports no other command module, so each of them can import it (DESIGN 2).
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

from relightful.io.errors import InputError, redact

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class JobFailed(RuntimeError):
    """A job ran but could not do all of its work (the message says what; redacted, as it may quote a URI)."""

    def __init__(self, message: str = ""):
        super().__init__(redact(message))


def add_params(p: argparse.ArgumentParser) -> None:
    """The options of every job that reads a section of params.yaml."""
    p.add_argument("--params", type=Path, default=None, help="params.yaml to read this job's section from")
    p.add_argument("--profile", default=None, help="profile of params.yaml to use (default: its 'profile' key)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set plan.seed=3 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--track", action=argparse.BooleanOptionalAction, default=None,
                   help="log this job as an MLflow run (default: on when mlflow is installed and RELIGHTFUL_TRACKING "
                        "is not 0; URI from MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def add_model_options(p: argparse.ArgumentParser) -> None:
    """`--model` and `--device`, for the commands that run a trained model."""
    p.add_argument("--model", required=True, metavar="MODEL",
                   help="model folder, or an MLflow URI such as models:/relightful-stage3@champion")
    p.add_argument("--device", type=device_option, default="auto",
                   help="torch device: auto (CUDA when available), cpu, cuda, cuda:N or mps; checked before the "
                        "model is loaded")


def device_option(text: str) -> str:
    """argparse type of `--device`: its spelling (`DEVICE_CHOICES`), so `--device banana` is a usage error naming
    the option, not a torch traceback after the model was read. Whether the device exists is `check_device`'s."""
    value = text.strip().lower()
    if not _DEVICE.match(value):
        raise argparse.ArgumentTypeError(f"expected {DEVICE_CHOICES}, got {text!r}")
    return value


def check_device(device: str, option: str = "--device") -> str:
    """`device` if this machine has it, else `InputError` naming `option` (`--device`, or `evaluate.device` of
    params.yaml): asking for CUDA where there is none must fail before anything is loaded, with the fix."""
    value = str(device).strip().lower()
    if not _DEVICE.match(value):
        raise InputError(option, f"expected {DEVICE_CHOICES}, got {device!r}")
    if value in ("auto", "cpu"):
        return value
    import torch

    if value == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise InputError(option, "mps was asked for, but this machine has no Apple GPU (MPS) for torch: "
                                     "use cpu or auto")
        return value
    if not torch.cuda.is_available():
        raise InputError(option, f"{value} was asked for, but torch finds no CUDA device on this machine "
                                 f"(torch.cuda.is_available() is false): use cpu or auto")
    index = int(value.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise InputError(option, f"{value} was asked for, but this machine has {torch.cuda.device_count()} CUDA "
                                 f"device(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return value


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: equal after resolving symlinks and `..`, or (both existing) the same inode,
    which also catches hard links."""
    try:
        if Path(a).resolve() == Path(b).resolve():
            return True
    except (OSError, RuntimeError):  # a symlink loop: compare what exists
        pass
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output_file(out: Path, inputs: Mapping[str, Path | None], suffixes: tuple[str, ...] | None = None,
                      option: str = "--out", kind: str = "an image file") -> None:
    """Before any work: `out` has a valid suffix, is not a folder nor an input (`{"--fg": path, ...}`, through
    symlinks and hard links), and its folder exists or can be created and is writable. A mistake there must not
    cost a whole inference, nor overwrite an input."""
    out = Path(out)
    if suffixes and out.suffix.lower() not in suffixes:
        raise InputError(out, f"{option} must be {kind}, one of {', '.join(suffixes)}")
    if out.is_dir():
        raise InputError(out, f"{option} is a folder; give a file name in it, e.g. {out / ('out' + (suffixes or ('',))[0])}")
    if out.exists() and not out.is_file():
        raise InputError(out, f"{option} exists and is not a regular file")
    refuse_inputs(out, inputs, option, "file")
    check_writable_parent(out, option)


def check_output_folder(out: Path, inputs: Mapping[str, Path | None], option: str = "--out") -> None:
    """Before any work: the output folder `out` is not a file nor one of the input folders, and it can be created
    (or replaced) where it is."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, f"{option} is a file; give a folder")
    refuse_inputs(out, inputs, option, "folder")
    check_writable_parent(out, option)


def refuse_inputs(out: Path, inputs: Mapping[str, Path | None], option: str, what: str) -> None:
    """`out` is none of the inputs (`{"--fg": path, ...}`, through symlinks and hard links): writing it must never
    overwrite what the job reads."""
    for name, path in inputs.items():
        if path is not None and same_file(out, Path(path)):
            raise InputError(out, f"{option} is the same {what} as {name} {path}: refusing to overwrite an input")


def check_writable_parent(out: Path, option: str = "--out") -> None:
    """The nearest existing folder above `out` is a folder and writable, tried with a real temp file (os.access says
    yes to root on a read-only filesystem). Nothing is created; writers make the missing folders."""
    parent = Path(os.path.abspath(out)).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(out, f"{option}: cannot create it, {parent} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".relightful-write-check-", dir=parent)
    except OSError as err:
        raise InputError(out, f"{option}: the folder {parent} is not writable ({err.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def job_config(cls, args: argparse.Namespace, section: str):
    """The job's `section` of params.yaml (with `--set` overrides) as a `cls`; kept on `args` for its MLflow run."""
    from relightful.config import load_config

    cfg = load_config(cls, args.params, section, args.overrides, args.profile)
    if isinstance(getattr(cfg, "device", None), str):  # evaluate, augment: before any model is loaded
        check_device(cfg.device, f"{args.params or 'config'}: {section}.device")
    args.job_config = (section, cfg)  # what the job ran with, for its MLflow run
    return cfg


__all__ = ["DEVICE_CHOICES", "JobFailed", "add_model_options", "add_params", "check_device", "check_output_file",
           "check_output_folder", "check_writable_parent", "device_option", "job_config", "positive_int", "same_file"]
