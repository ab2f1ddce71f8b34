"""Strict backbone loading, building from ``--base``, inspection, saving and export.

The public HPT code loaded checkpoints non-strictly, so a wrong key prefix silently left models random.
Here every backbone key must be present with the right shape; the only keys a file may hold beyond the
backbone are the ``fc``/projection-head, momentum-encoder and queue keys that
:func:`~hpt.models.formats.extract_backbone` sets aside (and lists in :class:`CheckpointInfo`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from hpt.atomic import atomic_write
from hpt.errors import HptError
from hpt.models.formats import (
    BackboneSpec,
    _is_safetensors,
    extract_backbone,
    infer_spec,
    read_state_dict,
)
from hpt.models.named import NAMED_WEIGHTS, resolve_named
from hpt.models.resnet import ARCHS, ResNet, build_resnet

EXPORT_FORMATS = ("torchvision", "moco", "safetensors")
_SHOW = 10  # keys listed per category in error messages
_RESERVED_META = ("format", "arch", "small_stem", "width")


@dataclass
class LoadCheck:
    """Whether a checkpoint's backbone loads strictly (as ``--base`` loads it) into the architecture it describes."""

    target: str | None  # the architecture tried: detected from the weights, else claimed by the metadata
    loadable: bool
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatches: list[str] = field(default_factory=list)
    problem: str = ""  # why it does not load, with the first offending keys; "" when it loads

    def describe(self) -> str:
        """'yes, into ARCH' or 'not loadable into ARCH: WHY' (the line of `hpt inspect`)."""
        if self.loadable:
            return f"yes, into {self.target}"
        return f"not loadable into {self.target}: {self.problem}" if self.target else f"not loadable: {self.problem}"


@dataclass
class CheckpointInfo:
    """What a checkpoint file holds, as far as hpt is concerned."""

    path: str
    format: str  # one of formats.FORMATS
    spec: BackboneSpec | None  # None when the backbone keys are not a recognised ResNet
    num_params: int  # backbone parameters (no fc/head, no BN running statistics)
    backbone_keys: int
    ignored_keys: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    load_check: LoadCheck | None = None  # set by inspect_checkpoint

    def describe(self) -> str:
        """A few human-readable lines (for ``hpt inspect``-style output)."""
        ignored = ", ".join(self.ignored_keys[:_SHOW]) + (" ..." if len(self.ignored_keys) > _SHOW else "")
        lines = [
            f"path:      {self.path}",
            f"format:    {self.format}",
            f"backbone:  {self.spec if self.spec else 'not a recognised ResNet'}",
            f"params:    {self.num_params:,} in {self.backbone_keys} backbone keys",
            f"ignored:   {len(self.ignored_keys)} keys" + (f" ({ignored})" if ignored else ""),
        ]
        lines += [f"meta:      {k} = {v}" for k, v in sorted(self.metadata.items())]
        if self.load_check is not None:
            lines.append(f"loadable:  {self.load_check.describe()}")
        return "\n".join(lines)


def _resolve_source(source: str | Path, cache_dir: Path | None = None) -> Path:
    if isinstance(source, str) and source in NAMED_WEIGHTS:
        return resolve_named(source, cache_dir)
    return Path(source)


def _count_params(state: Mapping[str, Tensor]) -> int:
    stats = ("running_mean", "running_var", "num_batches_tracked")
    return sum(int(v.numel()) for k, v in state.items() if not k.endswith(stats))


def _open(source: str | Path, cache_dir: Path | None = None) -> tuple[dict[str, Tensor], CheckpointInfo]:
    """Read a file or named weights; return its backbone state and description."""
    path = _resolve_source(source, cache_dir)
    obj, meta = read_state_dict(path)
    state, fmt, ignored = extract_backbone(obj, where=str(path))
    if fmt != "hpt-state" and _is_safetensors(path):  # the container decides: any key layout inside
        fmt = "safetensors"
    try:
        spec: BackboneSpec | None = infer_spec(state)
    except HptError:
        spec = None
    info = CheckpointInfo(str(path), fmt, spec, _count_params(state), len(state), ignored, meta)
    return state, info


def inspect_checkpoint(source: str | Path) -> CheckpointInfo:
    """Describe a checkpoint file or named weights (format, inferred architecture, key counts, loadability).

    Raises HptError if the file cannot be read or holds no ``conv1``/``layer1`` ResNet keys at all;
    ``spec`` is None when such keys exist but do not form a supported ResNet. ``load_check`` says whether the
    backbone loads strictly into the architecture detected (or, failing that, claimed by the metadata).
    """
    state, info = _open(source)
    info.load_check = check_loadable(state, info)
    return info


def load_refusal(info: CheckpointInfo) -> HptError | None:
    """The error ``--base`` would refuse this checkpoint with (it names the fix), or None when it loads."""
    check = info.load_check
    if check is None or check.loadable:
        return None
    fix = ""
    if check.missing or check.unexpected:
        fix = ("; its key names do not match a ResNet's (renamed keys, or a prefix hpt does not strip): rename "
               "them to torchvision's ResNet names and re-save")
    elif check.shape_mismatches:
        fix = "; the file is damaged or was edited: re-export it from the model it came from"
    return HptError(f"{info.path} is {check.describe()}{fix}")


def inspect_lines(info: CheckpointInfo) -> list[str]:
    """What `hpt inspect` prints: file, format, architecture, parameters, keys set aside, metadata, loadability."""
    lines = [f"file:        {info.path}", f"format:      {info.format}"]
    if info.spec is not None:
        spec = info.spec
        lines.append(f"arch:        {spec.arch} (small_stem={spec.small_stem}, width={spec.width})")
    lines.append(f"parameters:  {info.num_params:,} in {info.backbone_keys} backbone tensors")
    ignored = info.ignored_keys
    shown = ", ".join(ignored[:8]) + (f", ... ({len(ignored)} in all)" if len(ignored) > 8 else "")
    lines.append(f"set aside:   {shown or 'nothing'}")
    lines += [f"meta {key}: {value}" for key, value in sorted(info.metadata.items())]
    if info.load_check is not None:
        lines.append(f"loadable:    {info.load_check.describe()}")
    return lines


def _claimed_spec(meta: Mapping[str, str], state: Mapping[str, Tensor]) -> BackboneSpec | None:
    """The architecture a file's metadata names (``arch``, ``small_stem``, ``width``), the rest from conv1."""
    arch = meta.get("arch")
    if arch not in ARCHS:
        return None
    conv1 = state.get("conv1.weight")
    small_stem = meta["small_stem"] == "True" if "small_stem" in meta else conv1 is not None and conv1.shape[-1] == 3
    width = meta.get("width", "")
    return BackboneSpec(str(arch), small_stem, int(width) if width.isdigit() else 64 if conv1 is None else conv1.shape[0])


def _short(title: str, items: list[str], show: int = 3) -> str:
    more = f" and {len(items) - show} more" if len(items) > show else ""
    return f"{len(items)} {title} ({', '.join(items[:show])}{more})"


def check_loadable(state: Mapping[str, Tensor], info: CheckpointInfo) -> LoadCheck:
    """Check ``state`` against the keys and shapes of a ResNet of the detected (else claimed) architecture by the
    rule :func:`load_backbone` applies: every key present with its shape, nothing else."""
    target = info.spec or _claimed_spec(info.metadata, state)
    if target is None:
        try:
            infer_spec(state)
            problem = "its backbone keys are not a recognised ResNet"
        except HptError as err:
            problem = str(err)
        return LoadCheck(None, False, problem=problem)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build_resnet(target.arch, small_stem=target.small_stem, width=target.width)
    model_state = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    missing, unexpected, shapes = _check_strict(model_state, state)
    if not (missing or unexpected or shapes):
        return LoadCheck(str(target), True)
    found = [_short(title, items) for title, items in
             (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if items]
    return LoadCheck(str(target), False, missing, unexpected, shapes, ", ".join(found))


def _spec_of(model: ResNet) -> BackboneSpec:
    return BackboneSpec(model.arch, model.small_stem, model.width)


def _flag_hint(ckpt: BackboneSpec, model: BackboneSpec) -> str:
    """How to make the model match the checkpoint, phrased with the CLI's flags."""
    flags = []
    if ckpt.arch != model.arch:
        flags.append(f"--arch {ckpt.arch}")
    if ckpt.small_stem != model.small_stem:
        flags.append("--small-stem" if ckpt.small_stem else "--no-small-stem")
    if ckpt.width != model.width:
        flags.append(f"--width {ckpt.width}")
    if not flags:
        return ""
    return f"pass {' '.join(flags)} or omit those options to use the checkpoint's"


def _listing(title: str, items: list[str]) -> str:
    more = f" ... and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return f"{len(items)} {title}: {', '.join(items[:_SHOW])}{more}"


def _check_strict(model_state: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> tuple[list[str], list[str], list[str]]:
    """Missing, unexpected and shape-mismatched keys (missing BN ``num_batches_tracked`` is tolerated)."""
    missing = [k for k in model_state if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in model_state]
    shapes = [
        f"{k} {tuple(state[k].shape)} in file vs {tuple(v.shape)} in model"
        for k, v in model_state.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    return missing, unexpected, shapes


def _load_state(model: ResNet, state: Mapping[str, Tensor], info: CheckpointInfo) -> None:
    model_state = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    missing, unexpected, shapes = _check_strict(model_state, state)
    if missing or unexpected or shapes:
        model_spec = _spec_of(model)
        head = f"checkpoint {info.path} ({info.format}) does not fit the model"
        if info.spec is not None and info.spec != model_spec:
            head += f": the checkpoint is a {info.spec} but the model is {model_spec}; {_flag_hint(info.spec, model_spec)}"
        elif info.spec is None:
            head += f" {model_spec}: the checkpoint's backbone keys are not a recognised ResNet"
        else:
            head += f" {model_spec}: its backbone keys differ from a standard {model_spec.arch} (the file is damaged or was edited)"
        parts = [head]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                parts.append(_listing(title, items))
        raise HptError("; ".join(parts))
    full = dict(state)
    for k, v in model_state.items():  # pre-0.4.1 checkpoints lack num_batches_tracked: keep the model's
        full.setdefault(k, v)
    result = model.load_state_dict(full, strict=False)
    leftover = [k for k in result.missing_keys if not k.startswith("fc.")] + list(result.unexpected_keys)
    if leftover:  # cannot happen after the checks above; never let a partial load pass silently
        raise HptError(f"internal error: loading {info.path} left keys unmatched: {', '.join(leftover[:_SHOW])}")


def load_backbone(model: ResNet, source: str | Path) -> CheckpointInfo:
    """Load a checkpoint file (or named weights) into ``model`` strictly; ``fc.*`` of the model is left alone."""
    state, info = _open(source)
    _load_state(model, state, info)
    return info


def build_backbone(
    base: str,
    *,
    arch: str | None = None,
    small_stem: bool | None = None,
    width: int | None = None,
    cache_dir: Path | None = None,
) -> tuple[ResNet, CheckpointInfo | None]:
    """Build the backbone for ``--base``: ``"random"``, a named weight, or a checkpoint file.

    With weights, the architecture comes from the checkpoint; explicit ``arch``/``small_stem``/``width``
    must agree with it. The model has no ``fc``.
    """
    if base == "random":
        model = build_resnet(arch or "resnet50", small_stem=bool(small_stem), width=64 if width is None else width)
        return model, None
    if base not in NAMED_WEIGHTS and not Path(base).exists():
        raise HptError(
            f"no such file or named weights: {base}; named weights are: {', '.join(NAMED_WEIGHTS)} "
            "(or pass 'random' for a randomly initialised model)"
        )
    state, info = _open(base, cache_dir)
    if info.spec is None:
        infer_spec(state)  # raises the HptError that says what is wrong
        raise AssertionError("unreachable")
    wanted = BackboneSpec(
        arch if arch is not None else info.spec.arch,
        small_stem if small_stem is not None else info.spec.small_stem,
        width if width is not None else info.spec.width,
    )
    if wanted != info.spec:
        raise HptError(
            f"the checkpoint {info.path} is a {info.spec} but the model asked for is {wanted}; "
            f"{_flag_hint(info.spec, wanted)}"
        )
    model = build_resnet(info.spec.arch, small_stem=info.spec.small_stem, width=info.spec.width)
    _load_state(model, state, info)
    return model, info


def _write_bytes(f: IO[bytes], data: bytes) -> None:
    f.write(data)


def _backbone_state(model: ResNet) -> dict[str, Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith("fc.")}


def save_backbone(model: ResNet, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Save the backbone (no ``fc``) as safetensors with torchvision key names, atomically.

    Metadata: ``format="hpt-backbone"``, ``arch``, ``small_stem``, ``width`` plus the caller's entries
    (which may not override those four).
    """
    from safetensors.torch import save

    meta = {"format": "hpt-backbone", "arch": model.arch, "small_stem": str(model.small_stem), "width": str(model.width)}
    for k, v in (metadata or {}).items():
        if k in _RESERVED_META and str(v) != meta[k]:
            raise ValueError(f"metadata key {k!r} is reserved (it is {meta[k]!r} for this model)")
        meta[str(k)] = str(v)
    data = save(_backbone_state(model), metadata=meta)
    atomic_write(Path(path), lambda f: _write_bytes(f, data))


def export_backbone(source: str | Path, out: Path, fmt: str) -> Path:
    """Export a checkpoint's backbone (validated by a strict load) for use outside hpt; return ``out``.

    * ``"torchvision"``: ``torch.save(state_dict)`` with torchvision key names and no ``fc``; load it with
      ``torchvision.models.resnet50().load_state_dict(sd, strict=False)``: the only missing keys are ``fc.*``.
    * ``"moco"``: ``{"state_dict": {"module.encoder_q." + key: ...}, "arch": arch}`` like a MoCo ``.pth.tar``
      (MoCo's ``main_lincls.py --pretrained`` reads it).
    * ``"safetensors"``: as :func:`save_backbone`.
    """
    if fmt not in EXPORT_FORMATS:
        raise HptError(f"unknown export format {fmt!r}; choose one of: {', '.join(EXPORT_FORMATS)}")
    state, info = _open(source)
    if info.spec is None:
        infer_spec(state)  # raises with the reason
        raise AssertionError("unreachable")
    model = build_resnet(info.spec.arch, small_stem=info.spec.small_stem, width=info.spec.width)
    _load_state(model, state, info)
    out = Path(out)
    if fmt == "safetensors":
        save_backbone(model, out, {"exported_from": Path(info.path).name, "source_format": info.format})
        return out
    sd = _backbone_state(model)
    obj: Any = sd if fmt == "torchvision" else {"state_dict": {"module.encoder_q." + k: v for k, v in sd.items()}, "arch": model.arch}
    atomic_write(out, lambda f: torch.save(obj, f))
    return out


def weights_sha256(module: torch.nn.Module) -> str:
    """A hash of every tensor of a module's state dict (keys sorted)."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
