"""hpt: Hierarchical PreTraining (Base -> Source -> Target self-supervised pretraining).

In Python: hpt.pretrain(), hpt.evaluate(), hpt.compare(), hpt.load_backbone() and hpt.export() (hpt.api; a
walk-through in docs/api.md). They are imported at first use, so that `import hpt` stays cheap (no torch).
hpt.pretrain is also the package of the pretraining code; called, it is hpt.api.pretrain.
"""

__version__ = "0.1.0"

_API = ("evaluate", "compare", "load_backbone", "export")


def __getattr__(name: str) -> object:
    if name in _API:
        from hpt import api

        return getattr(api, name)
    if name == "pretrain":  # the package, callable as hpt.api.pretrain (hpt/pretrain/__init__.py)
        import hpt.pretrain as package

        return package
    raise AttributeError(f"module 'hpt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API, "pretrain"])
