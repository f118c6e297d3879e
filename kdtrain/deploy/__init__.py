"""The deploy wing: what a model becomes on the target device: its files (ONNX, TorchScript, a JSON card),
checked against PyTorch, and its cost (params, bytes, FLOPs, latency, throughput). Knows nothing of training."""
