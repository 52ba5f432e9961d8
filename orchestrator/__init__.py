"""tierflow: orchestrator."""
