"""dcoord: straggler-tolerant, private distributed PyTorch training."""
