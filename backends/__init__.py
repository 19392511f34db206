"""Backend plugins: one module per vendor, the only place vendor APIs appear."""
