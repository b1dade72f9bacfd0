"""Stage functions of the workflow: pure functions over artifact rows, settings and model clients."""
