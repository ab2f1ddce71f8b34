"""One resolver of device names and one cache folder for the whole package."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hpt.device import cache_root, resolve_device
from hpt.errors import HptError


def test_auto_and_cpu_resolve_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device("cpu") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(HptError, match=f"device '{name}' was asked for but no CUDA GPU is visible; use --device cpu"):
            resolve_device(name)


def test_cuda_names_the_process_gpu_or_the_given_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", local_rank=3) == torch.device("cuda", 3)
    assert resolve_device("cuda:1", local_rank=3) == torch.device("cuda", 1)


def test_an_unknown_device_is_refused_with_the_names_that_work() -> None:
    with pytest.raises(HptError, match="unknown device 'tpu'; use auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")


def test_every_cache_lives_below_hpt_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from hpt.data.listing import listings_dir
    from hpt.data.stats import default_cache_dir
    from hpt.eval.features import features_cache_dir

    monkeypatch.setenv("HPT_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    assert {p.parent for p in (listings_dir(), default_cache_dir(), features_cache_dir())} == {tmp_path}
    monkeypatch.delenv("HPT_CACHE")
    assert cache_root() == Path.home() / ".cache" / "hpt"
