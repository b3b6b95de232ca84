"""grv-batch: batch gender recognition by voice over folders and buckets of audio.

The command line (``grv-batch``) is a thin layer over these functions::

    from grv_batch import load_job, run_job, dask_client
    job = load_job("jobs/default.toml")
    with dask_client(job.execution) as client:
        summary = run_job("corpus/", "out/", job, client=client, metadata_url="meta.csv")
"""

from grv_batch._version import __version__
from grv_batch.runner import RunSummary, dask_client, run_job
from grv_batch.spec import JobSpec, load_job

__all__ = ["JobSpec", "RunSummary", "__version__", "dask_client", "load_job", "run_job"]
