"""The Slurm farm: what the profile (``profiles/slurm``) reads, and what it asks Slurm for.

- ``profile``: the site settings (``TRACKLSTM_SLURM_*``), each checked and passed to Snakemake
  as a value, never as code;
- ``preflight``: requests no node can satisfy, named before any job is submitted, and jobs that
  wait for a reason that never clears, named while the run goes on (docs/farm.md).
"""
