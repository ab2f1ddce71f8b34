"""Strict backbone loading, building from ``--base``, inspection, saving and export.

The public HPT code loaded checkpoints non-strictly, so a wrong key prefix silently left models random.
Here every backbone key must be present with the right shape; the only keys a file may hold beyond the
backbone are the ``fc``/projection-head, momentum-encoder and queue keys that
:func:`~hpt.models.formats.extract_backbone` sets aside (and lists in :class:`CheckpointInfo`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hpt.errors import HptError
from hpt.models.families import (
    arch_of,
    build_random,
    describe,
    family_of_checkpoint,
    load_family_checkpoint,
)
from hpt.models.formats import (
    BackboneSpec,
    _is_safetensors,
    extract_backbone,
    infer_spec,
    read_state_dict,
)
from hpt.models.named import NAMED_WEIGHTS, resolve_named
from hpt.models.resnet import ARCHS, ResNet, build_resnet
from hpt.models.strict import key_differences

_SHOW = 10  # keys listed per category in error messages


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
    spec: BackboneSpec | None  # a ResNet's; None for other families, or keys that are not a recognised ResNet
    num_params: int  # backbone parameters (no fc/head, no BN running statistics)
    backbone_keys: int
    ignored_keys: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    load_check: LoadCheck | None = None  # set by inspect_checkpoint
    architecture: str = ""  # a ViT's or ConvNeXt's architecture in words (a ResNet's is its spec)

    def describe(self) -> str:
        """A few human-readable lines (for ``hpt inspect``-style output)."""
        ignored = ", ".join(self.ignored_keys[:_SHOW]) + (" ..." if len(self.ignored_keys) > _SHOW else "")
        lines = [
            f"path:      {self.path}",
            f"format:    {self.format}",
            f"backbone:  {self.spec or self.architecture or 'not a recognised ResNet'}",
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


def _open(source: str | Path, cache_dir: Path | None = None, read: tuple[Any, dict[str, str]] | None = None
          ) -> tuple[dict[str, Tensor], CheckpointInfo]:
    """Read a file or named weights (or take what was read: `read`); return its ResNet state and description."""
    path = _resolve_source(source, cache_dir)
    obj, meta = read if read is not None else read_state_dict(path)
    state, fmt, ignored = extract_backbone(obj, where=str(path))
    if fmt != "hpt-state" and _is_safetensors(path):  # the container decides: any key layout inside
        fmt = "safetensors"
    try:
        spec: BackboneSpec | None = infer_spec(state)
    except HptError:
        spec = None
    info = CheckpointInfo(str(path), fmt, spec, _count_params(state), len(state), ignored, meta)
    return state, info


def _open_family(source: str | Path, path: Path, obj: Any, meta: dict[str, str], family: str,
                 num_heads: int | None = None) -> tuple[torch.nn.Module, CheckpointInfo]:
    """Build and strictly load a ViT or ConvNeXt checkpoint; return the model and its description."""
    named = NAMED_WEIGHTS.get(source) if isinstance(source, str) else None
    heads = num_heads if num_heads is not None else named.num_heads if named is not None else None
    model, layout, dropped = load_family_checkpoint(obj, family, meta, str(path), num_heads=heads)
    fmt = "safetensors" if _is_safetensors(path) else layout  # the container decides, as for ResNets
    state = model.state_dict()
    info = CheckpointInfo(str(path), fmt, None, _count_params(state), len(state), dropped, meta,
                          architecture=f"{arch_of(model)}: {describe(model)}")
    return model, info


def inspect_checkpoint(source: str | Path) -> CheckpointInfo:
    """Describe a checkpoint file or named weights (format, inferred architecture, key counts, loadability).

    Raises HptError if the file cannot be read or holds no ``conv1``/``layer1`` ResNet keys at all;
    ``spec`` is None when such keys exist but do not form a supported ResNet. ``load_check`` says whether the
    backbone loads strictly into the architecture detected (or, failing that, claimed by the metadata).
    """
    path = _resolve_source(source)
    obj, meta = read_state_dict(path)
    family = family_of_checkpoint(obj)
    if family == "resnet":
        state, info = _open(source, read=(obj, meta))
        info.load_check = check_loadable(state, info)
        return info
    try:
        _, info = _open_family(source, path, obj, meta, family)
    except HptError as err:
        return CheckpointInfo(str(path), family, None, 0, 0, [], meta, LoadCheck(None, False, problem=str(err)))
    info.load_check = LoadCheck(info.architecture, True)
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
        lines.append(f"arch:        {spec}")
    elif info.architecture:
        lines.append(f"arch:        {info.architecture}")
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
    chans = meta.get("in_chans", "")
    return BackboneSpec(str(arch), small_stem, int(width) if width.isdigit() else 64 if conv1 is None else conv1.shape[0],
                        int(chans) if chans.isdigit() else 3 if conv1 is None else int(conv1.shape[1]))


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
        model = build_resnet(target.arch, small_stem=target.small_stem, width=target.width, in_chans=target.in_chans)
    model_state = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    missing, unexpected, shapes = _check_strict(model_state, state)
    if not (missing or unexpected or shapes):
        return LoadCheck(str(target), True)
    found = [_short(title, items) for title, items in
             (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if items]
    return LoadCheck(str(target), False, missing, unexpected, shapes, ", ".join(found))


def _spec_of(model: ResNet) -> BackboneSpec:
    return BackboneSpec(model.arch, model.small_stem, model.width, model.in_chans)


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
    return key_differences(model_state, state)


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
    num_heads: int | None = None,
) -> tuple[torch.nn.Module, CheckpointInfo | None]:
    """Build the backbone for ``--base``: ``"random"``, a named weight, or a checkpoint file (any family).

    With weights, the architecture comes from the checkpoint; explicit ``arch``/``small_stem``/``width``
    must agree with it. The model has no classifier. ``num_heads``: a ViT's head count, which its weights do not
    hold (default: what an hpt file or the named weights record, else embed_dim // 64).
    """
    if base == "random":
        return build_random(arch or "resnet50", small_stem=bool(small_stem), width=width), None
    if base not in NAMED_WEIGHTS and not Path(base).exists():
        raise HptError(
            f"no such file or named weights: {base}; named weights are: {', '.join(NAMED_WEIGHTS)} "
            "(or pass 'random' for a randomly initialised model)"
        )
    path = _resolve_source(base, cache_dir)
    obj, meta = read_state_dict(path)
    family = family_of_checkpoint(obj)
    if family != "resnet":
        model, family_info = _open_family(base, path, obj, meta, family, num_heads)
        if small_stem or width is not None or (arch is not None and arch != arch_of(model)):
            raise HptError(f"the checkpoint {path} is a {family_info.architecture}, not the model asked for "
                           f"(arch={arch}, small_stem={small_stem}, width={width}); omit --arch, --small-stem and "
                           "--width to use the checkpoint's architecture")
        return model, family_info
    state, info = _open(base, cache_dir, read=(obj, meta))
    if info.spec is None:
        infer_spec(state)  # raises the HptError that says what is wrong
        raise AssertionError("unreachable")
    wanted = BackboneSpec(
        arch if arch is not None else info.spec.arch,
        small_stem if small_stem is not None else info.spec.small_stem,
        width if width is not None else info.spec.width,
        info.spec.in_chans,
    )
    if wanted != info.spec:
        raise HptError(
            f"the checkpoint {info.path} is a {info.spec} but the model asked for is {wanted}; "
            f"{_flag_hint(info.spec, wanted)}"
        )
    resnet = build_resnet(info.spec.arch, small_stem=info.spec.small_stem, width=info.spec.width,
                          in_chans=info.spec.in_chans)
    _load_state(resnet, state, info)
    return resnet, info
