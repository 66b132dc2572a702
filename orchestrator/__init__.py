"""The control plane: CLI, study specs, Tune/Train wiring, baselines, results and reports."""
