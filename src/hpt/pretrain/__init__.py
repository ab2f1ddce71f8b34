"""Pretraining: the Base -> Source -> Target chain (hierarchy.py) of stages (stage.py, settings in config.py), each
trained by the step loop (loop.py) with a method from hpt.methods; around it the Base anchor, the guard, early
stopping, BatchNorm upkeep, health checks and the atomic resume state."""
