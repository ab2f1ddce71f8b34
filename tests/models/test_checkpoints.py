"""Checkpoint formats, strict loading, safe unpickling, named weights, saving and export."""

from __future__ import annotations

import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from hpt.atomic import atomic_write as _atomic_write
from hpt.errors import HptError
from hpt.models import (
    NAMED_WEIGHTS,
    BackboneSpec,
    NamedWeight,
    ResNet,
    build_backbone,
    build_resnet,
    export_backbone,
    extract_backbone,
    infer_spec,
    inspect_checkpoint,
    load_backbone,
    read_state_dict,
    resolve_named,
    save_backbone,
)


def _randomised(model: ResNet, seed: int = 0) -> ResNet:
    """Fill every tensor (BN statistics included) with distinct random values so equality means something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if k.endswith("num_batches_tracked"):
                v.fill_(seed + 7)
            elif k.endswith("running_var"):
                v.copy_(torch.rand(v.shape, generator=g) + 0.5)
            else:
                v.copy_(torch.randn(v.shape, generator=g))
    return model


def _tiny(seed: int = 0, num_classes: int | None = None, **kw: Any) -> ResNet:
    kw.setdefault("width", 8)
    return _randomised(build_resnet("resnet18", num_classes=num_classes, **kw), seed)


def _backbone(model: ResNet) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}


def _assert_equal_state(model: ResNet, expected: dict[str, Tensor]) -> None:
    got = _backbone(model)
    assert list(got) == list(expected)
    for k in got:
        assert torch.equal(got[k], expected[k]), k


def _save(obj: Any, path: Path) -> Path:
    torch.save(obj, path)
    return path


# ------------------------------------------------------------------ format builders


def fmt_torchvision(sd: dict[str, Tensor]) -> dict[str, Any]:
    return {**sd, "fc.weight": torch.randn(10, 64), "fc.bias": torch.randn(10)}


def fmt_moco(sd: dict[str, Tensor]) -> dict[str, Any]:
    other = _backbone(_tiny(seed=99))  # the key encoder differs from the query encoder
    state = {"module.encoder_q." + k: v for k, v in sd.items()}
    state.update({"module.encoder_q.fc.0.weight": torch.randn(64, 64), "module.encoder_q.fc.0.bias": torch.randn(64)})
    state.update({"module.encoder_q.fc.2.weight": torch.randn(16, 64), "module.encoder_q.fc.2.bias": torch.randn(16)})
    state.update({"module.encoder_k." + k: v for k, v in other.items()})
    state.update({"module.encoder_k.fc.0.weight": torch.randn(64, 64), "module.encoder_k.fc.2.weight": torch.randn(16, 64)})
    state.update({"module.queue": torch.randn(16, 32), "module.queue_ptr": torch.zeros(1, dtype=torch.long)})
    return {"epoch": 200, "arch": "resnet18", "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}


def fmt_openselfsup_extracted(sd: dict[str, Tensor]) -> dict[str, Any]:
    return {"state_dict": dict(sd), "author": "OpenSelfSup"}


def fmt_openselfsup_raw(sd: dict[str, Tensor]) -> dict[str, Any]:
    other = _backbone(_tiny(seed=98))
    state = {"backbone." + k: v for k, v in sd.items()}
    state.update({"encoder_q.0." + k: v for k, v in sd.items()})  # the same module registered twice
    state.update({"encoder_q.1.mlp.0.weight": torch.randn(64, 64), "encoder_q.1.mlp.2.weight": torch.randn(16, 64)})
    state.update({"encoder_k.0." + k: v for k, v in other.items()})
    state.update({"encoder_k.1.mlp.0.weight": torch.randn(64, 64), "queue": torch.randn(16, 32)})
    return {"meta": {"epoch": 200, "iter": 1000}, "state_dict": state, "optimizer": {}}


def fmt_openselfsup_encoder_q_only(sd: dict[str, Tensor]) -> dict[str, Any]:
    state = {"encoder_q.0." + k: v for k, v in sd.items()}
    state.update({"encoder_q.1.mlp.0.weight": torch.randn(64, 64), "encoder_k.0." + "conv1.weight": sd["conv1.weight"]})
    return {"state_dict": state}


def fmt_ddp(sd: dict[str, Tensor]) -> dict[str, Any]:
    return {"module." + k: v for k, v in fmt_torchvision(sd).items()}


def fmt_model_wrapper(sd: dict[str, Tensor]) -> dict[str, Any]:
    return {"model": fmt_torchvision(sd), "epoch": 3}


def fmt_hpt_state(sd: dict[str, Tensor]) -> dict[str, Any]:
    other = _backbone(_tiny(seed=97))
    model = {"backbone." + k: v for k, v in sd.items()}
    model.update({"head.0.weight": torch.randn(64, 64), "head.2.weight": torch.randn(16, 64)})
    model.update({"key_backbone." + k: v for k, v in other.items()})
    model.update({"queue": torch.randn(16, 32)})
    return {"hpt_state": 1, "model": model, "optimizer": {"state": {}, "param_groups": []}, "step": 5}


FORMAT_CASES: list[tuple[Callable[[dict[str, Tensor]], dict[str, Any]], str]] = [
    (fmt_torchvision, "torchvision"),
    (fmt_moco, "moco"),
    (fmt_openselfsup_extracted, "openselfsup"),
    (fmt_openselfsup_raw, "openselfsup"),
    (fmt_openselfsup_encoder_q_only, "openselfsup"),
    (fmt_ddp, "torchvision"),
    (fmt_model_wrapper, "torchvision"),
    (fmt_hpt_state, "hpt-state"),
]


@pytest.mark.parametrize(("make", "fmt"), FORMAT_CASES, ids=[f.__name__ for f, _ in FORMAT_CASES])
@pytest.mark.parametrize("small_stem", [False, True])
def test_formats_round_trip(tmp_path: Path, make: Callable[[dict[str, Tensor]], dict[str, Any]], fmt: str, small_stem: bool) -> None:
    src = _tiny(small_stem=small_stem)
    expected = _backbone(src)
    path = _save(make(expected), tmp_path / "ckpt.pth")

    info = inspect_checkpoint(path)
    assert info.format == fmt
    assert info.spec == BackboneSpec("resnet18", small_stem, 8)
    assert info.backbone_keys == len(expected)
    assert info.num_params == sum(p.numel() for p in src.parameters())

    model = build_resnet("resnet18", small_stem=small_stem, width=8)
    load_backbone(model, path)
    _assert_equal_state(model, expected)

    built, binfo = build_backbone(str(path))
    assert binfo is not None and binfo.format == fmt
    assert (built.arch, built.small_stem, built.width, built.fc) == ("resnet18", small_stem, 8, None)
    _assert_equal_state(built, expected)


def test_ignored_keys_are_reported(tmp_path: Path) -> None:
    info = inspect_checkpoint(_save(fmt_moco(_backbone(_tiny())), tmp_path / "moco.pth.tar"))
    assert "module.encoder_q.fc.0.weight" in info.ignored_keys and "module.queue" in info.ignored_keys
    assert "module.encoder_k.conv1.weight" in info.ignored_keys
    assert info.metadata["arch"] == "resnet18" and info.metadata["epoch"] == "200"
    tv = inspect_checkpoint(_save(fmt_torchvision(_backbone(_tiny())), tmp_path / "tv.pth"))
    assert tv.ignored_keys == ["fc.weight", "fc.bias"]
    assert "resnet18" in tv.describe()


def test_safetensors_round_trip_and_metadata(tmp_path: Path) -> None:
    src = _tiny(small_stem=True, num_classes=5)
    path = tmp_path / "out" / "backbone.safetensors"
    save_backbone(src, path, {"stage": "target"})
    assert [p.name for p in path.parent.iterdir()] == ["backbone.safetensors"]  # no temp file left behind
    tensors = load_file(str(path))
    assert not any(k.startswith("fc.") for k in tensors)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta == {"format": "hpt-backbone", "family": "resnet", "arch": "resnet18", "small_stem": "True", "width": "8",
                    "in_chans": "3", "stage": "target"}
    info = inspect_checkpoint(path)
    assert info.format == "safetensors" and info.spec == BackboneSpec("resnet18", True, 8)
    model, _ = build_backbone(str(path))
    _assert_equal_state(model, _backbone(src))
    state, meta2 = read_state_dict(path)
    assert meta2["format"] == "hpt-backbone" and set(state) == set(tensors)


def test_safetensors_detected_without_suffix(tmp_path: Path) -> None:
    src = _tiny()
    save_backbone(src, tmp_path / "weights.bin")
    assert inspect_checkpoint(tmp_path / "weights.bin").format == "safetensors"


def test_foreign_safetensors_with_moco_keys(tmp_path: Path) -> None:
    expected = _backbone(_tiny())
    save_file({"module.encoder_q." + k: v for k, v in expected.items()}, str(tmp_path / "foreign.st"))
    info = inspect_checkpoint(tmp_path / "foreign.st")
    assert info.format == "safetensors" and info.spec == BackboneSpec("resnet18", False, 8) and info.metadata == {}
    model, _ = build_backbone(str(tmp_path / "foreign.st"))
    _assert_equal_state(model, expected)


def test_save_backbone_reserved_metadata() -> None:
    with pytest.raises(ValueError, match="reserved"):
        save_backbone(_tiny(), Path("unused.safetensors"), {"arch": "resnet50"})


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def boom(f: Any) -> None:
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        _atomic_write(path, boom)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_missing_num_batches_tracked_is_tolerated(tmp_path: Path) -> None:
    """Checkpoints saved before PyTorch 0.4.1 (e.g. old torchvision weights) have no num_batches_tracked."""
    sd = {k: v for k, v in _backbone(_tiny()).items() if not k.endswith("num_batches_tracked")}
    model = build_resnet("resnet18", width=8)
    load_backbone(model, _save(sd, tmp_path / "old.pth"))
    for k, v in sd.items():
        assert torch.equal(model.state_dict()[k], v)


# ------------------------------------------------------------------ strict loading errors


def test_wrong_arch(tmp_path: Path) -> None:
    path = _save(_backbone(_tiny()), tmp_path / "r18.pth")
    with pytest.raises(HptError) as e:
        load_backbone(build_resnet("resnet34", width=8), path)
    msg = str(e.value)
    assert "resnet18 (small_stem=False, width=8)" in msg and "--arch resnet18" in msg
    assert "missing keys" in msg and "layer1.2.conv1.weight" in msg
    with pytest.raises(HptError, match="--arch resnet18"):
        build_backbone(str(path), arch="resnet34")
    with pytest.raises(HptError, match="--width 8"):
        build_backbone(str(path), width=16)
    with pytest.raises(HptError, match="pass --no-small-stem"):
        build_backbone(str(path), small_stem=True)


def test_wrong_width_shape_mismatch_names_keys(tmp_path: Path) -> None:
    path = _save(_backbone(_tiny(width=16)), tmp_path / "w16.pth")
    with pytest.raises(HptError) as e:
        load_backbone(build_resnet("resnet18", width=8), path)
    assert "shape mismatches" in str(e.value) and "conv1.weight (16, 3, 7, 7)" in str(e.value)
    assert "--width 16" in str(e.value)


def test_garbage_prefix_no_backbone(tmp_path: Path) -> None:
    sd = {"garbage." + k.replace("conv1", "convX"): v for k, v in _backbone(_tiny()).items()}
    path = _save(sd, tmp_path / "garbage.pth")
    with pytest.raises(HptError, match=r"no ResNet backbone found .*garbage\.convX\.weight"):
        load_backbone(build_resnet("resnet18", width=8), path)
    with pytest.raises(HptError, match="no ResNet backbone found"):
        inspect_checkpoint(path)


def test_unexpected_key_is_named(tmp_path: Path) -> None:
    sd = _backbone(_tiny())
    sd["layer2.0.extra.weight"] = torch.zeros(3)
    with pytest.raises(HptError, match=r"1 unexpected keys: layer2\.0\.extra\.weight"):
        load_backbone(build_resnet("resnet18", width=8), _save(sd, tmp_path / "x.pth"))


def test_missing_key_is_named(tmp_path: Path) -> None:
    sd = _backbone(_tiny())
    del sd["layer2.0.bn1.running_mean"]
    with pytest.raises(HptError, match=r"1 missing keys: layer2\.0\.bn1\.running_mean"):
        load_backbone(build_resnet("resnet18", width=8), _save(sd, tmp_path / "x.pth"))


def test_shape_mismatch_is_named(tmp_path: Path) -> None:
    sd = _backbone(_tiny())
    sd["layer3.0.conv1.weight"] = torch.zeros(32, 16, 1, 1)
    with pytest.raises(HptError, match=r"layer3\.0\.conv1\.weight \(32, 16, 1, 1\) in file vs \(32, 16, 3, 3\)"):
        load_backbone(build_resnet("resnet18", width=8), _save(sd, tmp_path / "x.pth"))


def test_several_different_backbones_is_an_error(tmp_path: Path) -> None:
    a, b = _backbone(_tiny(seed=1)), _backbone(_tiny(seed=2))
    obj = {"state_dict": {**{"backbone." + k: v for k, v in a.items()}, **{"encoder_q.0." + k: v for k, v in b.items()}}}
    with pytest.raises(HptError, match="several different ResNet backbones"):
        inspect_checkpoint(_save(obj, tmp_path / "two.pth"))


def test_unsupported_resnet_depth() -> None:
    sd = _backbone(_tiny())
    sd = {k: v for k, v in sd.items() if not k.startswith("layer4.1.")}
    with pytest.raises(HptError, match=r"depths \[2, 2, 2, 1\]"):
        infer_spec(sd)


def test_extract_rejects_hpt_state_without_backbone() -> None:
    with pytest.raises(HptError, match="no 'backbone"):
        extract_backbone({"hpt_state": 1, "model": {"head.weight": torch.zeros(1)}})


# ------------------------------------------------------------------ unsafe and broken files

TRIGGERED: list[str] = []


def _trigger(tag: str) -> None:
    TRIGGERED.append(tag)


class RunsCodeOnLoad:
    """Unpickling this calls _trigger (a function global): exactly what a malicious checkpoint does."""

    def __reduce__(self) -> tuple[Callable[[str], None], tuple[str]]:
        return (_trigger, ("reduce",))


class SetsStateOnLoad:
    """A plain class instance: unpickling would call __setstate__."""

    def __init__(self) -> None:
        self.x = 1

    def __setstate__(self, state: dict[str, Any]) -> None:
        _trigger("setstate")
        self.__dict__.update(state)


@pytest.mark.parametrize(("payload", "name"), [(RunsCodeOnLoad, "_trigger"), (SetsStateOnLoad, "SetsStateOnLoad")])
def test_pickle_with_code_is_refused(tmp_path: Path, payload: type, name: str) -> None:
    path = _save({"state_dict": _backbone(_tiny()), "extra": payload()}, tmp_path / "evil.pth")
    TRIGGERED.clear()
    with pytest.raises(HptError) as e:
        load_backbone(build_resnet("resnet18", width=8), path)
    msg = str(e.value)
    assert "is a pickle that needs code to load" in msg and name in msg and "never executes" in msg
    assert str(path) in msg and "weights_only" not in msg and "\n" not in msg
    assert TRIGGERED == []  # the code never ran
    with pytest.raises(HptError, match="needs code to load"):
        build_backbone(str(path))
    assert TRIGGERED == []


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_torch_file(tmp_path: Path, legacy: bool) -> None:
    path = tmp_path / "cut.pth"
    torch.save(_backbone(_tiny()), path, _use_new_zipfile_serialization=not legacy)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(HptError, match=f"cannot read checkpoint {path}"):
        inspect_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all\n" * 10, b"PK\x03\x04garbage"])
def test_garbage_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(HptError, match=str(path)):
        load_backbone(build_resnet("resnet18", width=8), path)


def test_truncated_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "b.safetensors"
    save_backbone(_tiny(), path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(HptError, match="cannot read safetensors file"):
        inspect_checkpoint(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(HptError, match="not found"):
        inspect_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(HptError, match="is a directory"):
        inspect_checkpoint(tmp_path)
    with pytest.raises(HptError, match=r"no such file or named weights: nope\.pth; named weights are: .*moco-v2-800ep"):
        build_backbone("nope.pth")


def test_not_a_dict(tmp_path: Path) -> None:
    with pytest.raises(HptError, match="not a state dict"):
        inspect_checkpoint(_save(torch.zeros(3), tmp_path / "t.pth"))


# ------------------------------------------------------------------ building, named weights


def test_build_random() -> None:
    model, info = build_backbone("random", arch="resnet18", width=8, small_stem=True)
    assert info is None and (model.arch, model.width, model.small_stem, model.fc) == ("resnet18", 8, True, None)
    default, _ = build_backbone("random", width=8)
    assert (default.arch, default.small_stem) == ("resnet50", False)
    with pytest.raises(HptError, match="resnet18, resnet34, resnet50"):
        build_backbone("random", arch="vgg16")


def test_named_entries() -> None:
    assert {
        "torchvision:resnet18", "torchvision:resnet34", "torchvision:resnet50", "torchvision:resnet50-v2",
        "moco-v1-200ep", "moco-v2-200ep", "moco-v2-800ep", "dinov2:vits14", "dinov2:vitb14", "mae:vitb16",
        "timm:vit_small_patch16_224", "timm:convnext_tiny",
    } <= set(NAMED_WEIGHTS)
    assert len({entry.filename for entry in NAMED_WEIGHTS.values()}) == len(NAMED_WEIGHTS)  # one cache file each
    assert NAMED_WEIGHTS["dinov2:vits14"].url == ("https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/"
                                                  "dinov2_vits14_pretrain.pth")
    assert NAMED_WEIGHTS["dinov2:vits14"].num_heads == 6
    assert NAMED_WEIGHTS["torchvision:resnet50"].filename == "resnet50-0676ba61.pth"
    assert NAMED_WEIGHTS["torchvision:resnet50"].hash_prefix == "0676ba61"
    assert NAMED_WEIGHTS["moco-v2-800ep"].url.endswith("moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar")
    assert NAMED_WEIGHTS["moco-v2-800ep"].hash_prefix is None


def _no_network(*args: Any, **kwargs: Any) -> None:
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def test_named_real_entry_from_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full-size resnet18 under the torchvision file name in $TORCH_HOME/hub/checkpoints: no network needed."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    src = build_resnet("resnet18", num_classes=1000)
    torch.save(src.state_dict(), cache / "resnet18-f37072fd.pth")
    assert resolve_named("torchvision:resnet18") == cache / "resnet18-f37072fd.pth"
    model, info = build_backbone("torchvision:resnet18")
    assert info is not None and info.spec == BackboneSpec("resnet18", False, 64) and info.format == "torchvision"
    _assert_equal_state(model, _backbone(src))


@pytest.fixture
def tiny_named(monkeypatch: pytest.MonkeyPatch) -> NamedWeight:
    entry = NamedWeight("https://example.invalid/weights/tiny-0123abcd.pth", "resnet18", "test entry", "0123abcd")
    monkeypatch.setitem(NAMED_WEIGHTS, "test:tiny", entry)
    return entry


def test_named_from_cache_dir(tmp_path: Path, tiny_named: NamedWeight, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    src = _tiny(small_stem=True)
    _save(fmt_moco(_backbone(src)), tmp_path / "tiny-0123abcd.pth")
    assert resolve_named("test:tiny", cache_dir=tmp_path) == tmp_path / "tiny-0123abcd.pth"
    model, info = build_backbone("test:tiny", cache_dir=tmp_path)
    assert info is not None and info.format == "moco"
    _assert_equal_state(model, _backbone(src))


def test_named_missing_and_offline(tmp_path: Path, tiny_named: NamedWeight, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    with pytest.raises(HptError) as e:
        resolve_named("test:tiny", cache_dir=tmp_path / "cache")
    msg = str(e.value)
    assert tiny_named.url in msg and str(tmp_path / "cache" / "tiny-0123abcd.pth") in msg
    assert "not in the cache" in msg and "name resolution" in msg
    with pytest.raises(HptError, match="could not be downloaded"):
        build_backbone("test:tiny", cache_dir=tmp_path / "cache")


def test_named_download_passes_hash_prefix(tmp_path: Path, tiny_named: NamedWeight, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str, str | None]] = []
    src = _tiny()

    def fake_download(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        calls.append((url, dst, hash_prefix))
        torch.save(src.state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    path = resolve_named("test:tiny", cache_dir=tmp_path)
    assert calls == [(tiny_named.url, str(tmp_path / "tiny-0123abcd.pth"), "0123abcd")]
    assert resolve_named("test:tiny", cache_dir=tmp_path) == path and len(calls) == 1  # cached now


def test_unknown_named() -> None:
    with pytest.raises(HptError, match="named weights are: torchvision:resnet18"):
        resolve_named("moco-v3")


# ------------------------------------------------------------------ export


@pytest.mark.parametrize("fmt", ["torchvision", "moco", "safetensors"])
def test_export_round_trip(tmp_path: Path, fmt: str) -> None:
    src = _tiny(small_stem=True)
    expected = _backbone(src)
    source = _save(fmt_openselfsup_raw(expected), tmp_path / "raw.pth")
    out = export_backbone(source, tmp_path / f"exported.{fmt}", fmt)
    assert out == tmp_path / f"exported.{fmt}" and out.is_file()
    model = build_resnet("resnet18", small_stem=True, width=8)
    info = load_backbone(model, out)
    _assert_equal_state(model, expected)
    assert info.format == {"torchvision": "torchvision", "moco": "moco", "safetensors": "safetensors"}[fmt]
    if fmt == "torchvision":
        sd = torch.load(out, weights_only=True)
        assert list(sd) == list(expected)
        with_fc = build_resnet("resnet18", small_stem=True, width=8, num_classes=3)
        result = with_fc.load_state_dict(sd, strict=False)
        assert result.missing_keys == ["fc.weight", "fc.bias"] and result.unexpected_keys == []
    elif fmt == "moco":
        obj = torch.load(out, weights_only=True)
        assert obj["arch"] == "resnet18"
        assert all(k.startswith("module.encoder_q.") for k in obj["state_dict"])


def test_export_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(HptError, match="torchvision, moco, timm, safetensors"):
        export_backbone(tmp_path / "whatever.pth", tmp_path / "out", "onnx")


def test_export_refuses_incomplete_backbone(tmp_path: Path) -> None:
    sd = _backbone(_tiny())
    del sd["layer4.1.bn2.weight"]
    with pytest.raises(HptError, match=r"layer4\.1\.bn2\.weight"):
        export_backbone(_save(sd, tmp_path / "x.pth"), tmp_path / "out.pth", "torchvision")
    assert not (tmp_path / "out.pth").exists()
