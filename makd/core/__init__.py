"""The method core: low-rank modules, factorisation, capture, losses, objective, trainer, checkpoints."""
