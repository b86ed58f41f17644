"""What every step shares: atomic files and safe checkpoints (``io``), progress logs (``progress``), and the
trainers' common ground (``training``: device and accelerator, threads, pixel ranges, EMA, divergence checks)."""
