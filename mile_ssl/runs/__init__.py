"""The run folder: layout, lock, checkpoints, logs, reports, resume, and the guard that saves."""
