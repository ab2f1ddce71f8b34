"""What a pretraining stage adds around its method's step: the anchor to the Base, the guard, BatchNorm upkeep."""
