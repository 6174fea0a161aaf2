"""Whether an EAP run is ill-conditioned, as its ``eap_results.json`` says, for every stage
that reports on the run (its plots, the sweep summary)."""

from __future__ import annotations

from circuitflow.errors import JsonFileError
from circuitflow.json_files import read_json


def ill_conditioned_reason(results_json: str) -> str | None:
    """Why eap_results.json marks its run ill-conditioned, or None when it does not."""
    results = read_json(results_json)
    diagnostics = results.get("diagnostics") if isinstance(results, dict) else None
    if not isinstance(diagnostics, dict) or "ill_conditioned" not in diagnostics:
        raise JsonFileError(f"{results_json}: no diagnostics block; run rule eap again to rebuild it")
    return diagnostics["reason"] if diagnostics["ill_conditioned"] else None
