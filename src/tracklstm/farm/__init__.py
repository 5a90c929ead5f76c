"""The Slurm farm: what the profile (``profiles/slurm``) reads from the environment.

- ``profile``: the site settings (``TRACKLSTM_SLURM_*``), each checked and passed to Snakemake
  as a value, never as code.
"""
