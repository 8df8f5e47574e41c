"""c2p-train: offline C2P training, baselines, evaluation and reports."""
