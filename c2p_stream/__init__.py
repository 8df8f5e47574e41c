"""c2p-stream: live Cluster-to-Predict (C2P) affect-contour labels from speech."""

__version__ = "0.1.0"
