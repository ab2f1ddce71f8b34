"""Reading checkpoint files safely and finding the ResNet backbone inside them.

Handles torchvision/timm state dicts, ``{"state_dict"|"model": ...}`` wrappers, MoCo v1/v2 ``.pth.tar``,
OpenSelfSup/HPT raw and extracted checkpoints, DDP ``module.`` prefixes, safetensors files and hpt's
own resume state. Pickles are only ever read with ``weights_only=True``: a file that needs code is refused.
"""

from __future__ import annotations

import pickle
import pickletools
import re
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hpt.errors import HptError
from hpt.models.resnet import _LAYOUTS, ARCHS

FORMATS = ("torchvision", "moco", "openselfsup", "safetensors", "hpt-state")

# Prefixes tried (in this order of preference) when several hold a complete backbone.
_KNOWN_PREFIXES = (
    "",
    "module.",
    "backbone.",
    "module.backbone.",
    "encoder_q.0.",
    "module.encoder_q.0.",
    "encoder_q.",
    "module.encoder_q.",
    "encoder.",
    "module.encoder.",
)
# Prefixes of momentum/key encoders: set aside when an online encoder is present.
_MOMENTUM_RE = re.compile(r"(^|\.)(encoder_k|momentum\w*|target\w*|teacher\w*|key_encoder|ema\w*)(\.|$)")
_WRAPPER_KEYS = ("state_dict", "model", "module")


@dataclass(frozen=True)
class BackboneSpec:
    """The ResNet architecture a state dict describes."""

    arch: str
    small_stem: bool
    width: int
    in_chans: int = 3

    def __str__(self) -> str:
        chans = f", in_chans={self.in_chans}" if self.in_chans != 3 else ""
        return f"{self.arch} (small_stem={self.small_stem}, width={self.width}{chans})"


def _is_safetensors(path: Path) -> bool:
    """Sniff the safetensors layout: 8-byte little-endian header length, then a JSON object."""
    if path.suffix == ".safetensors":
        return True
    try:
        with path.open("rb") as f:
            head = f.read(9)
        size = path.stat().st_size
    except OSError:
        return False
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= size - 8 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise HptError(f"cannot read safetensors file {path}: {e}; the file is corrupt or truncated, re-copy it") from e
    return dict(state), dict(meta)


RESAVE_HINT = "re-save the weights as safetensors or a plain state_dict with torch.save(model.state_dict())"
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of a torch.save file in the pre-1.6 format
_STRING_OPS = ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING")


def _pickle_globals(path: Path) -> list[str] | None:
    """The globals named by a file that is exactly one complete pickle, read opcode by opcode (nothing is run).

    None when the file is not one: a zip (torch.save), a pre-1.6 torch.save file, or truncated or other bytes.
    """
    names: list[str] = []
    strings: list[str | None] = []  # string values pushed, for STACK_GLOBAL (module and name come from the stack)
    memo: dict[int, str | None] = {}
    try:
        with path.open("rb") as f:
            if f.read(4) == b"PK\x03\x04":
                return None
            f.seek(0)
            for op, arg, _ in pickletools.genops(f):
                if op.name in _STRING_OPS:
                    strings.append(str(arg))
                elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                    strings.append(memo.get(int(arg)))
                elif op.name == "MEMOIZE":
                    memo[len(memo)] = strings[-1] if strings else None
                elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                    memo[int(arg)] = strings[-1] if strings else None
                elif op.name == "GLOBAL":
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL":
                    module, name = (strings[-2:] if len(strings) >= 2 else [None, None])
                    names.append(f"{module}.{name}" if module and name else "an object of unknown type")
                elif op.name in ("LONG1", "LONG4") and arg == _TORCH_LEGACY_MAGIC:
                    return None
            if f.read(1):  # bytes after the pickle: not a plain pickle file
                return None
    except Exception:  # noqa: BLE001 - any malformed opcode stream means "not one complete pickle"
        return None
    return list(dict.fromkeys(names))


def unreadable_pickle(path: Path, error: BaseException) -> str | None:
    """Why torch.load(weights_only=True) refused a file that is a well-formed pickle, as a clause to follow the
    path ("is a pickle that needs code to load (...)..." or "is a plain Python pickle, ..."); None when the file
    is not a well-formed pickle (then it is corrupt or truncated). torch's own advice is never passed on."""
    message = str(error)
    names = list(dict.fromkeys(re.findall(r"GLOBAL ([\w.]+)", message)))
    if not names and ("allowlisted" in message or "must be imported" in message):  # an allowed class, used oddly
        names = re.findall(r"got <class '([\w.]+)'>|``([\w.]+)``", message)
        names = [a or b for a, b in names] or ["objects torch does not load by default"]
    if not names:
        found = _pickle_globals(path)
        if found is None:
            return None
        if not found:
            return "is a plain Python pickle (pickle.dump), not a PyTorch checkpoint"
        names = found
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"is a pickle that needs code to load ({shown}) - hpt never executes pickled code"


def torch_load_safely(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """torch.load with weights_only=True, without torch's warning about pickle protocols it reads anyway."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return torch.load(path, map_location=map_location, weights_only=True)


def read_state_dict(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Read a checkpoint file without running any code; return (loaded mapping, string metadata).

    ``.safetensors`` (or a file with the safetensors layout) is read with safetensors and its header metadata;
    anything else with ``torch.load(weights_only=True)``, the metadata then being the top-level scalar
    entries (e.g. ``epoch``, ``arch``, ``author``). The mapping is returned as loaded (it may be nested).
    """
    p = Path(path)
    if not p.exists():
        raise HptError(f"checkpoint file not found: {p}; check the path")
    if p.is_dir():
        raise HptError(f"{p} is a directory, not a checkpoint file; pass the .pth/.pt/.safetensors file inside it")
    if p.stat().st_size == 0:
        raise HptError(f"checkpoint file {p} is empty; re-copy or re-save it")
    if _is_safetensors(p):
        return _read_safetensors(p)
    try:
        obj = torch_load_safely(p)
    except Exception as e:  # noqa: BLE001 - arbitrary bytes can fail anywhere in the zip/pickle readers
        refused = unreadable_pickle(p, e)
        if refused is not None:
            raise HptError(f"{p} {refused}; {RESAVE_HINT}") from None
        if isinstance(e, pickle.UnpicklingError):
            lines = [line for line in str(e).splitlines() if line.strip() and "torch.load" not in line]
            reason = lines[-1].strip()[:200] if lines else "UnpicklingError"
        else:  # its first sentence: torch's further advice does not apply to a damaged file
            text = f"{type(e).__name__}: {e}" if str(e).strip() else type(e).__name__
            reason = " ".join(text.split()).split(". ")[0][:200]
        raise HptError(
            f"cannot read checkpoint {p}: the file is corrupt, truncated or not a PyTorch file ({reason}); re-copy it"
        ) from None
    if not isinstance(obj, Mapping):
        raise HptError(f"{p} holds a {type(obj).__name__}, not a state dict; save model.state_dict() instead")
    meta = {str(k): str(v) for k, v in obj.items() if isinstance(v, (str, int, float, bool))}
    return dict(obj), meta


def _tensors(obj: Mapping[Any, Any]) -> dict[str, Tensor]:
    return {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}


def _levels(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The mapping and the ``{"state_dict"|"model"|"module": ...}`` wrappers nested inside it, outermost first."""
    levels = [obj]
    for _ in range(4):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        levels.append(inner)
        obj = inner
    return levels


def _candidate_prefixes(keys: set[str]) -> list[str]:
    """Prefixes P with both P+'conv1.weight' and P+'layer1.0.conv1.weight' present."""
    found = {k[: -len("conv1.weight")] for k in keys if k.endswith("conv1.weight")}
    cands = [p for p in found if p + "conv1.weight" in keys and p + "layer1.0.conv1.weight" in keys]
    rank = {p: i for i, p in enumerate(_KNOWN_PREFIXES)}
    return sorted(cands, key=lambda p: (rank.get(p, len(rank)), len(p), p))


def _strip(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _same(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def _choose_prefix(state: Mapping[str, Tensor], where: str) -> str:
    cands = _candidate_prefixes(set(state))
    if not cands:
        sample = ", ".join(list(state)[:8]) or "(no tensors)"
        raise HptError(
            f"no ResNet backbone found in {where}: no key prefix P has both P+'conv1.weight' and "
            f"P+'layer1.0.conv1.weight' (first keys: {sample}); pass a ResNet checkpoint"
        )
    online = [p for p in cands if not _MOMENTUM_RE.search(p)] or cands
    first = _strip(state, online[0])
    others = [p for p in online[1:] if not _same(_backbone_part(_strip(state, p)), _backbone_part(first))]
    if others:
        listed = ", ".join(repr(p) for p in online)
        raise HptError(
            f"{where} holds several different ResNet backbones (key prefixes {listed}); "
            "extract the one you want into its own state dict"
        )
    return online[0]


def _is_head_key(key: str) -> bool:
    return key.startswith(("fc.", "head.", "heads."))


def _backbone_part(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in state.items() if not _is_head_key(k)}


def _format_for(prefix: str, wrapper: Mapping[str, Any]) -> str:
    bare = prefix.removeprefix("module.")
    if bare.startswith(("backbone.", "encoder_q.0.")) or wrapper.get("author") == "OpenSelfSup":
        return "openselfsup"
    if bare.startswith("encoder_q."):
        return "moco"
    return "torchvision"


def extract_backbone(obj: Mapping[str, Any], where: str = "the checkpoint") -> tuple[dict[str, Tensor], str, list[str]]:
    """Find the ResNet backbone in a loaded checkpoint.

    Returns (backbone state dict with torchvision key names and no ``fc.*``, format name, ignored keys).
    Ignored keys are the file's keys not taken: ``fc.*``/head keys, momentum encoder, queue, etc.
    A checkpoint holding several *different* online backbones is an error, never a silent pick.
    """
    if not isinstance(obj, Mapping):
        raise HptError(f"{where} holds a {type(obj).__name__}, not a state dict")
    if "hpt_state" in obj:
        model = obj.get("model")
        if not isinstance(model, Mapping):
            raise HptError(f"{where} is an hpt resume state without a 'model' entry; it is incomplete, re-create it")
        state = _tensors(model)
        prefix, fmt = "backbone.", "hpt-state"
        if prefix + "conv1.weight" not in state:
            raise HptError(f"{where} is an hpt resume state whose model has no 'backbone.*' weights; it is not a ResNet run")
    else:
        levels = _levels(obj)
        # The first level (outermost first) whose tensors hold a backbone; else report the largest.
        tensor_levels = [_tensors(level) for level in levels]
        state = next((t for t in tensor_levels if _candidate_prefixes(set(t))), max(tensor_levels, key=len))
        prefix = _choose_prefix(state, where)
        fmt = _format_for(prefix, obj)
    stripped = _strip(state, prefix)
    backbone = _backbone_part(stripped)
    ignored = [k for k in state if not k.startswith(prefix) or _is_head_key(k[len(prefix) :])]
    return backbone, fmt, ignored


_BLOCK_RE = re.compile(r"^layer([1-4])\.(\d+)\.")


def infer_spec(state: Mapping[str, Tensor]) -> BackboneSpec:
    """Infer arch, stem and width from torchvision-named keys and shapes; HptError if not a known ResNet."""
    conv1 = state.get("conv1.weight")
    if conv1 is None or conv1.dim() != 4 or conv1.shape[2] != conv1.shape[3] or conv1.shape[2] not in (3, 7):
        shape = None if conv1 is None else tuple(conv1.shape)
        raise HptError(f"not a recognised ResNet: conv1.weight is {shape}, expected (width, 3, 7, 7) or (width, 3, 3, 3)")
    width = int(conv1.shape[0])
    bn1 = state.get("bn1.weight")
    if bn1 is not None and tuple(bn1.shape) != (width,):
        raise HptError(f"not a recognised ResNet: bn1.weight is {tuple(bn1.shape)} but conv1 has {width} channels")
    blocks: dict[int, set[int]] = {1: set(), 2: set(), 3: set(), 4: set()}
    for key in state:
        m = _BLOCK_RE.match(key)
        if m:
            blocks[int(m.group(1))].add(int(m.group(2)))
    depths = tuple(len(blocks[i]) for i in (1, 2, 3, 4))
    kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    arch = next((a for a, layout in _LAYOUTS.items() if layout == (kind, depths)), None)
    if arch is None:
        kept = next((k for k in range(1, 4) if all(depths[:k]) and not any(depths[k:])), 0)
        if kept and any(layout[0] == kind and layout[1][:kept] == depths[:kept] for layout in _LAYOUTS.values()):
            raise HptError(
                f"this backbone stops after layer{kept} (a truncated export, `hpt export --truncate`); hpt's "
                "commands need a full backbone: export it without --truncate, or load it in Python with "
                "hpt.models.truncate.load_truncated"
            )
        raise HptError(
            f"not a recognised ResNet: {kind} blocks with depths {list(depths)}; hpt supports {', '.join(ARCHS)} "
            "(basic [2,2,2,2], basic [3,4,6,3], bottleneck [3,4,6,3])"
        )
    return BackboneSpec(arch=arch, small_stem=conv1.shape[2] == 3, width=width, in_chans=int(conv1.shape[1]))
