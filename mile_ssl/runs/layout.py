"""Where a run keeps its files: one answer for every module that finds a run's folder.

A run folder holds ``checkpoints/*.ckpt`` beside its config, logs and reports, so the
folder of a checkpoint inside ``checkpoints/`` is the one above; a checkpoint kept
anywhere else is taken to sit in its own run's folder.
"""

from __future__ import annotations

import os
import secrets
from datetime import datetime
from pathlib import Path

CHECKPOINT_FOLDER = "checkpoints"
"""Sub-folder of a run folder holding its Lightning checkpoints. The adapters look for
the same name when given a run folder (``mile_ssl.adapters.reading``); it is spelled here
again because this module stays free of torch for the run-folder lock."""

RUN_NAME_RESOLVER = "mile_ssl.run_name"
"""The OmegaConf resolver of the default run folder name (``hydra.run.dir``)."""


def run_folder(checkpoint_path: str | Path) -> Path:
    """The run folder a checkpoint belongs to: above ``checkpoints/``, else its own folder."""
    parent = Path(checkpoint_path).parent
    return parent.parent if parent.name == CHECKPOINT_FOLDER else parent


def keep_run_records(overrides: list[str]) -> list[str]:
    """Leave the ``.hydra`` records of an existing run folder as its first run wrote them.

    Hydra rewrites them at every start, before the run can check anything; a resume that
    is then refused (other data, a folder in use) must leave the folder as it was. The
    resumed run's own settings are in its ``resolved_config.yaml`` and its log.

    Args:
        overrides: The ``mile-ssl train`` command line.

    Returns:
        ``overrides``, plus ``hydra.output_subdir=null`` where the named ``hydra.run.dir``
        already holds Hydra's records.
    """
    folder = named_run_folder(overrides)
    if folder is not None and (folder / ".hydra").is_dir():
        return [*overrides, "hydra.output_subdir=null"]
    return overrides


def named_run_folder(overrides: list[str] | tuple[str, ...]) -> Path | None:
    """The run folder a ``mile-ssl train`` command line names (``hydra.run.dir=``), if any.

    The last one counts, as in Hydra.
    """
    named = [item.split("=", 1)[1] for item in overrides if item.startswith("hydra.run.dir=")]
    return Path(named[-1]) if named else None


def slurm_job_id() -> str | None:
    """The SLURM job of this process (``<array job>_<task>`` for job arrays), if any."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    array_task = os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return os.environ.get("SLURM_JOB_ID") or None


def default_run_name() -> str:
    """The run folder under ``runs/`` when the user names none.

    - Under SLURM, ``slurm-<job>`` (``<array job>_<task>`` for arrays; ``.<step>`` for a
      job's later ``srun`` steps): every task of the job finds the same folder, and a
      requeued job finds its own again and resumes from it.
    - Under another launcher that starts every rank itself (``torchrun``),
      ``<date>/<time>`` with the rendezvous id where there is one: every rank must agree.
    - Otherwise ``<date>/<time>-<6 hex digits>``: two runs started in the same second
      do not share a folder.
    """
    environ = os.environ
    job = slurm_job_id()
    if job:
        step = environ.get("SLURM_STEP_ID", "0")
        return f"slurm-{job}" + (f".{step}" if step.isdigit() and step != "0" else "")
    stamp = datetime.now().strftime("%Y-%m-%d/%H-%M-%S")
    if "RANK" in environ or "LOCAL_RANK" in environ:
        rendezvous = environ.get("TORCHELASTIC_RUN_ID", "none")
        return stamp if rendezvous in ("", "none") else f"{stamp}-{rendezvous}"
    return f"{stamp}-{secrets.token_hex(3)}"


def register_run_name_resolver() -> None:
    """Let ``hydra.run.dir`` (``runs/${mile_ssl.run_name:}``) name a run's default folder."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver(
        RUN_NAME_RESOLVER, default_run_name, use_cache=True, replace=True
    )
