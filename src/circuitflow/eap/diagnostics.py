"""Whether an EAP run is ill-conditioned, as its ``eap_results.json`` says, for every stage
that reports on the run (its plots, the sweep summary)."""

from __future__ import annotations

from circuitflow.errors import JsonFileError


def ill_conditioned_reason(results: dict, results_json: str) -> str | None:
    """Why ``results`` (read from ``results_json``) marks its run ill-conditioned, or None when
    it does not."""
    diagnostics = results.get("diagnostics") if isinstance(results, dict) else None
    if not isinstance(diagnostics, dict) or "ill_conditioned" not in diagnostics:
        raise JsonFileError(f"{results_json}: no diagnostics block; run rule eap again to rebuild it")
    return diagnostics["reason"] if diagnostics["ill_conditioned"] else None
