"""Real-format dataset readers and the synthetic writers that produce the same formats."""
