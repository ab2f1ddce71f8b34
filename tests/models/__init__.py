"""Tests of the model architectures against reference implementations."""
