"""JPEG decoding to a size x size uint8 image, on one core: hpt's decode against Pillow's older path and other libraries.

    python bench/jpeg_decoders.py [--images 128 --res 224 --folder DIR --json bench/results/cpu_jpeg_decoders.json]

Two sets of JPEGs (quality 90) made by bench/datapath.py from upscaled CIFAR-10 images, not photographs: "mid",
256-500 px a side (decoded in full: less than twice --res), and "large", 900-1400 px (libjpeg can decode them at
1/2 or 1/4 scale). Each file is read into memory first; every decoder turns its bytes into a --res x --res uint8
image. Decoders (the optional ones are measured where importable: pip install simplejpeg opencv-python-headless
PyTurboJPEG, the last with the system's libturbojpeg):
 - hpt: hpt.data.decode.decode (Pillow, draft scale, torch's uint8 resize where the CPU has AVX2);
 - pillow: Pillow with the draft scale and Pillow's BILINEAR resize (hpt's earlier path); pillow-full: no draft;
 - simplejpeg: decode_jpeg with min_width/min_height = --res (libjpeg-turbo's scale factors of 1/8 steps), then
   hpt's resize; simplejpeg-full: no scaling;
 - cv2: imdecode (IMREAD_REDUCED_COLOR_2/4 where both sides allow it) and cv2.resize INTER_AREA;
 - turbojpeg: PyTurboJPEG decode at the smallest of libjpeg-turbo's scale factors that keeps --res, then hpt's resize;
and "decode only" rates of each decoder's full decode. Each rate is the best of --repeats passes over a set, the
decoders taking turns, so that a busy machine hurts each alike. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL
import torch
from datapath import CIFAR_PLACES, make_images  # bench/datapath.py, beside this file
from PIL import Image

from hpt.data.decode import decode, fast_resize, resize

Decoder = Callable[[bytes], object]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=128, help="images per set")
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--folder", type=Path, default=None, help="where to make (or reuse) the images")
    p.add_argument("--cifar", type=Path, default=None)
    p.add_argument("--note", default="")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args()


def decoders(res: int) -> tuple[dict[str, Decoder], dict[str, Decoder], dict[str, str]]:
    """(decode + resize to res, decode only, why an optional decoder is missing) by name."""
    def to_res(pixels: np.ndarray) -> torch.Tensor:
        return resize(pixels[None], res)[0]

    def pillow(data: bytes, draft: bool = True) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as img:
            if draft:
                img.draft(None, (res, res))
            return np.asarray(img.convert("RGB").resize((res, res), Image.Resampling.BILINEAR))

    def pillow_only(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))

    full: dict[str, Decoder] = {
        "hpt": lambda data: decode(io.BytesIO(data), 3, res),
        "pillow": pillow,
        "pillow-full": lambda data: pillow(data, draft=False),
    }
    only: dict[str, Decoder] = {"pillow": pillow_only}
    missing: dict[str, str] = {}
    try:
        import simplejpeg

        full["simplejpeg"] = lambda data: to_res(simplejpeg.decode_jpeg(data, "RGB", min_height=res, min_width=res))
        full["simplejpeg-full"] = lambda data: to_res(simplejpeg.decode_jpeg(data, "RGB"))
        only["simplejpeg"] = lambda data: simplejpeg.decode_jpeg(data, "RGB")
    except ImportError as err:
        missing["simplejpeg"] = str(err)
    try:
        import cv2

        cv2.setNumThreads(1)

        def opencv(data: bytes) -> np.ndarray:
            raw = np.frombuffer(data, np.uint8)
            height, width = Image.open(io.BytesIO(data)).size[::-1]
            factor = next((f for f in (4, 2) if min(height, width) >= f * res), 1)
            flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}[factor]
            return cv2.resize(cv2.imdecode(raw, flag)[..., ::-1], (res, res), interpolation=cv2.INTER_AREA)

        full["cv2"] = opencv
        only["cv2"] = lambda data: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except ImportError as err:
        missing["cv2"] = str(err)
    try:
        from turbojpeg import TJPF_RGB, TurboJPEG

        jpeg = TurboJPEG()
        factors = sorted(jpeg.scaling_factors, key=lambda f: f[0] / f[1])

        def turbo(data: bytes) -> torch.Tensor:
            width, height, _, _ = jpeg.decode_header(data)
            factor = next(f for f in factors if min(width, height) * f[0] / f[1] >= res or f == (1, 1))
            return to_res(jpeg.decode(data, pixel_format=TJPF_RGB, scaling_factor=factor))

        full["turbojpeg"] = turbo
        only["turbojpeg"] = lambda data: jpeg.decode(data, pixel_format=TJPF_RGB)
    except (ImportError, OSError, RuntimeError) as err:
        missing["turbojpeg"] = f"{type(err).__name__}: {err}"
    return full, only, missing


def rates(named: dict[str, Decoder], files: list[bytes], repeats: int) -> dict[str, float]:
    """Images/s of each decoder: the best of `repeats` passes, decoders taking turns."""
    best = dict.fromkeys(named, 0.0)
    for _ in range(repeats):
        for name, run in named.items():
            start = time.perf_counter()
            for data in files:
                run(data)
            best[name] = max(best[name], len(files) / (time.perf_counter() - start))
    return {name: round(rate, 1) for name, rate in best.items()}


def agreement(named: dict[str, Decoder], files: list[bytes]) -> dict[str, float]:
    """Mean absolute difference (levels of 255) of each decoder's output from pillow-full's, over the first files."""
    out = {}
    for name, run in named.items():
        diffs = []
        for data in files[:16]:
            reference = named["pillow-full"](data).astype(np.int16)
            got = run(data)
            got = got.permute(1, 2, 0).numpy() if isinstance(got, torch.Tensor) and got.shape[0] == 3 else got
            diffs.append(np.abs(np.asarray(got, dtype=np.int16) - reference).mean())
        out[name] = round(float(np.mean(diffs)), 3)
    return out


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    cifar = args.cifar or next((p for p in CIFAR_PLACES if p.is_file()), CIFAR_PLACES[-1])
    full, only, missing = decoders(args.res)
    result: dict = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "note": args.note, "torch": torch.__version__, "pillow": PIL.__version__,
                    "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                    "resize": "torch uint8 (AVX2)" if fast_resize() else "pillow", "missing": missing, "sets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp)
        for name, sides in (("mid", (256, 500)), ("large", (900, 1400))):
            made = make_images(folder / name, ["jpeg"], args.images, cifar, sides=sides)["jpeg"]
            files = [p.read_bytes() for p in sorted(made.iterdir())]
            entry = {"decode_resize_img_s": rates(full, files, args.repeats),
                     "decode_only_img_s": rates(only, files, args.repeats),
                     "mean_abs_diff_from_pillow_full": agreement(full, files),
                     "mean_kib": round(sum(map(len, files)) / len(files) / 1024, 1)}
            result["sets"][name] = entry
            print(f"{name} ({sides[0]}-{sides[1]} px, {entry['mean_kib']} KiB):")
            for key in ("decode_resize_img_s", "decode_only_img_s", "mean_abs_diff_from_pillow_full"):
                print(f"  {key:32s} " + "  ".join(f"{k} {v}" for k, v in entry[key].items()))
    for name, why in missing.items():
        print(f"not measured: {name} ({why})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
