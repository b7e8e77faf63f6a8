"""Batch prediction: score files and datasets with any model, in chunks, resumable (docs/batch.md).

    >>> from shipyard.batch import BatchSpec, run_batch
    >>> run_batch(BatchSpec(model="model.joblib", input="in.parquet", output="out.parquet", carry=["id"]))

Modules: ``spec`` (BatchSpec and its rules), ``readers`` (chunks of Parquet / CSV / JSON Lines from any
fsspec URL), ``tensors`` (columns to tensors and outputs to columns), ``predictors`` (a model in process
or a V2 endpoint; isolating bad rows), ``chunks`` (one chunk to its parts), ``writers`` (parts and
combining them), ``manifest`` (the work folder and the record of done chunks), ``run`` (run_batch).
"""

from shipyard.batch.errors import BatchError
from shipyard.batch.manifest import discard, work_dir
from shipyard.batch.run import BatchProgress, BatchResult, input_problems, run_batch
from shipyard.batch.spec import FORMATS, BatchSpec, parse_max_errors, spec_problems

__all__ = [
    "FORMATS", "BatchError", "BatchProgress", "BatchResult", "BatchSpec", "discard", "input_problems",
    "parse_max_errors", "run_batch", "spec_problems", "work_dir",
]
