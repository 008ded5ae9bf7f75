"""Training infrastructure shared by the teacher stage, the warm start and every method: the Lightning Trainer
factory, exact resume, checkpoint selection, stopping on signals."""
