"""Runs and the surface below the CLI: a run's configuration and stages (`pipeline`), its
folder and manifest (`folder`), output files (`outputs`), the HTML report (`report`) and
the demo (`demo`)."""

from tasklens.runs.folder import LOCK, MANIFEST, STAGES, RunFolder, check_out_folder

__all__ = ["LOCK", "MANIFEST", "STAGES", "RunFolder", "check_out_folder"]
