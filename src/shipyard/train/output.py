"""From a finished TrainJob to a model package: ``shipyard package --from-job NAME``.

A job's model is what its training code wrote to ``<workdir>/output/``: a transformers model
folder (what the built-in fine-tuning trainer writes), or one saved object (``.joblib``,
``.pkl``, ``.onnx``, ``.pt``, ``.pt2``) as ``shipyard package OBJECT_FILE`` reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shipyard.control.resources import DEFAULT_NAMESPACE
from shipyard.home import shipyard_home
from shipyard.train.runtimes import job_workdir


def job_output(job: str, namespace: str = DEFAULT_NAMESPACE, home: Path | None = None) -> Path:
    """The output folder of ``job``; ValueError says what is missing."""
    workdir = job_workdir(home or shipyard_home(), namespace, job)
    if not workdir.is_dir():
        raise ValueError(f"--from-job: no TrainJob workspace for '{job}' in namespace '{namespace}' ({workdir})")
    output = workdir / "output"
    if not output.is_dir() or not any(output.iterdir()):
        raise ValueError(f"--from-job: TrainJob '{job}' wrote no model to {output} (training code writes its model "
                         "there: os.environ['SHIPYARD_JOB_DIR'] + '/output')")
    return output


def output_object(output: Path) -> Any:
    """The trained object in an output folder: a transformers pipeline, or the one saved object file."""
    if (output / "config.json").is_file():
        return _pipeline(output)
    from shipyard.package.from_object import OBJECT_SUFFIXES, read_object

    files = [path for path in sorted(output.iterdir()) if path.suffix.lower() in OBJECT_SUFFIXES]
    if len(files) != 1:
        found = ", ".join(sorted(path.name for path in output.iterdir())) or "nothing"
        raise ValueError(f"--from-job: {output} must hold a transformers model (config.json) or exactly one of "
                         f"{', '.join(OBJECT_SUFFIXES)}; found {found}")
    return read_object(files[0])


def _pipeline(folder: Path) -> Any:
    from transformers import pipeline

    from shipyard.runtimes.huggingface import infer_task, supported_tasks

    config = json.loads((folder / "config.json").read_text())
    task = infer_task(folder, config, supported_tasks()[0])
    return pipeline(task, model=str(folder), tokenizer=str(folder), device="cpu")


def package_job(job: str, directory: Path, namespace: str = DEFAULT_NAMESPACE, name: str | None = None,
                force: bool = False, home: Path | None = None) -> Path:
    """Package the model a TrainJob wrote into ``directory`` (named ``name``, default the folder's name)."""
    from shipyard.package.from_object import package
    from shipyard.package.probe import check_target

    check_target(directory, force, flag="--force")
    obj = output_object(job_output(job, namespace, home))
    return package(obj, directory, name=name, overwrite=force)
