"""Shared pure-PyTorch building blocks (no torchvision, no custom CUDA ops)."""
