"""circuitflow: TinySQL circuit analyses as a cached, reproducible Snakemake workflow."""

__version__ = "0.1.0"
