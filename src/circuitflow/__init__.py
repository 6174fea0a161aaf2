"""circuitflow: circuit analyses of small transformers as a cached, reproducible Snakemake workflow.

Each stage is a module declaring ``STAGE`` (``circuitflow.stage``), run as
``python -m circuitflow NAME``; ``circuitflow.registry`` lists them. Nothing is imported here, so
that a job's code inputs (the modules it imports) stay its own.
"""

__version__ = "0.1.0"
