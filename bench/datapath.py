"""The data path at training resolution: decode, augmentation and the whole MoCo-v2 step, by loader worker count.

    python bench/datapath.py [--images 512 --res 224 --formats jpeg,png,cache --workers 0,1,2 --batch 64
                              --step-formats jpeg,cache --step-batch 16 --steps 2 --warmup 1 --folder DIR
                              --json bench/results/cpu_datapath_224.json]

The images are upscaled CIFAR-10 images, not photographs. Each file is a mosaic of CIFAR-10 training images (the
real 32 x 32 photographs of --cifar, ../shared/data/cifar10_32.npz), each upscaled with PIL bicubic to a tile of
32-96 px, cut to a random width and height of 256-500 px, and written as JPEG (quality 90) and PNG; with
--formats dicom,tiff also as 16-bit gray DICOM and TIFF (levels x 257), which hpt reads as float32. Upscaled pixels
are smoother than a photograph's, so these files are smaller (the JSON gives bytes per pixel; photographs at
quality 90 take about 0.5-1) and decode somewhat faster than photographs of the same size: read the decode figures
as an upper bound for photographs. The format "cache" is the JPEG folder
decoded once at --res by `hpt data cache` (an npy folder).

Measured at --res px (the data spec's size=RES, the views' side RES):
 1. decode: images/s of the data set's get_batch, what each DataLoader worker runs, on one core in this process;
    then of hpt's loader with each --workers count (0: decoding in this process);
 2. augment: images/s of the two MoCo-v2 views (MocoAugment) of a ready uint8 batch, on one core and on all threads;
 3. step: bench/throughput.py's full step (`hpt pretrain`'s MoCo-v2 step: ResNet-50, torchvision stem, fp32, all
    threads) with each --workers count, and its compute limit (the encoders on ready tensors).
Results go to --json (bench/results/); nothing here is a test. The hpt that runs is the one on the import path, so
PYTHONPATH=OTHER/src measures another checkout's data path with the same images (formats it lacks are left out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image
from throughput import compute_limit, full_step  # bench/throughput.py, beside this file

from hpt.augment import AugmentConfig, MocoAugment
from hpt.data import batch_loader, channel_stats, open_dataset

REPO = Path(__file__).resolve().parents[1]
CIFAR_PLACES = (REPO / "shared/data/cifar10_32.npz", REPO.parent / "shared/data/cifar10_32.npz")
FILE_FORMATS = {"jpeg": ".jpg", "png": ".png", "dicom": ".dcm", "tiff": ".tif"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=512, help="images per format")
    p.add_argument("--res", type=int, default=224, help="training resolution: size= of the spec, side of the views")
    p.add_argument("--formats", default="jpeg,png,cache", help="of jpeg, png, dicom, tiff, cache")
    p.add_argument("--workers", default="0,1,2", help="loader worker counts to measure")
    p.add_argument("--batch", type=int, default=64, help="batch of the decode and augment measurements")
    p.add_argument("--step-formats", default="jpeg,cache", help="formats whose full step is measured ('' for none)")
    p.add_argument("--step-batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=2, help="measured steps of each full step (after --warmup)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--folder", type=Path, default=None, help="where to make (or reuse) the images; default a temp dir")
    p.add_argument("--cifar", type=Path, default=None, help="cifar10_32.npz (default: shared/data/)")
    p.add_argument("--note", default="", help="recorded in the JSON, e.g. 'quiet CPU'")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args()


# ----------------------------------------------------------------------------------------------
# the images


def mosaic(tiles: np.ndarray, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A width x height RGB image of CIFAR-10 images, each upscaled (bicubic) to a 32-96 px tile."""
    canvas = Image.new("RGB", (width, height))
    top = 0
    while top < height:
        side, left = int(rng.integers(32, 97)), 0
        while left < width:
            tile = Image.fromarray(tiles[int(rng.integers(len(tiles)))])
            canvas.paste(tile.resize((side, side), Image.Resampling.BICUBIC), (left, top))
            left += side
        top += side
    return canvas


def make_images(folder: Path, formats: list[str], count: int, cifar: Path,
                sides: tuple[int, int] = (256, 500)) -> dict[str, Path]:
    """folder/<format>/NNNNNN.<suffix> for each file format, each image `sides` px wide and high (made once: an
    existing complete folder is reused)."""
    wanted = [f for f in formats if f in FILE_FORMATS]
    todo = [f for f in wanted if len(list((folder / f).glob(f"*{FILE_FORMATS[f]}"))) != count]
    if todo:
        tiles = np.load(cifar)["train_images"]
        rng = np.random.default_rng(0)
        for fmt in todo:
            (folder / fmt).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            width, height = (int(v) for v in rng.integers(sides[0], sides[1] + 1, 2))
            image = mosaic(tiles, width, height, rng)
            for fmt in todo:
                write(image, folder / fmt / f"{i:06d}{FILE_FORMATS[fmt]}", fmt)
    return {fmt: folder / fmt for fmt in wanted}


def write(image: Image.Image, path: Path, fmt: str) -> None:
    if fmt == "jpeg":
        image.save(path, quality=90)
    elif fmt == "png":
        image.save(path)
    else:
        levels = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        if fmt == "tiff":
            import tifffile

            tifffile.imwrite(path, levels, photometric="minisblack")
        else:
            write_dicom(path, levels)


def write_dicom(path: Path, levels: np.ndarray) -> None:
    """A single-frame 16-bit MONOCHROME2 DICOM file (Explicit VR Little Endian), full-range window."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "OT", *levels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = levels.astype(np.uint16).tobytes()
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)


def specs(folders: dict[str, Path], formats: list[str], res: int, root: Path) -> dict[str, str]:
    """The data spec of each format; "cache" decodes the JPEG folder into an npy folder first (timed)."""
    out = {fmt: f"{'dicom' if fmt == 'dicom' else 'folder'}:{path}?size={res}" for fmt, path in folders.items()}
    if "cache" in formats:
        try:
            from hpt.data.cache import cache_images
        except ImportError:
            print("cache: this hpt has no hpt.data.cache; left out")
            return out
        start = time.perf_counter()
        written = cache_images(f"folder:{folders['jpeg']}", res, root / f"cache_{res}", workers=0)
        print(f"cache: {written.images} JPEGs decoded into {written.folder} in {time.perf_counter() - start:.1f} s "
              "(one core)")
        out["cache"] = written.spec
    return out


def describe_files(folder: Path) -> dict[str, float]:
    """Count, mean size, mean pixels and bytes per pixel of a folder's images."""
    paths = sorted(folder.iterdir())
    sizes = [p.stat().st_size for p in paths]
    pixels = [header_pixels(p) for p in paths]
    return {"files": len(sizes), "mean_kib": round(float(np.mean(sizes)) / 1024, 1),
            "mean_pixels": round(float(np.mean(pixels))), "bytes_per_pixel": round(sum(sizes) / sum(pixels), 3)}


def header_pixels(path: Path) -> int:
    if path.suffix == ".dcm":
        import pydicom

        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        return int(ds.Rows) * int(ds.Columns)
    with Image.open(path) as img:
        return img.size[0] * img.size[1]


# ----------------------------------------------------------------------------------------------
# the measurements


def index_batches(n: int, batch: int, count: int) -> list[list[int]]:
    return [[(b * batch + k) % n for k in range(batch)] for b in range(count)]


def decode_per_core(spec: str, batch: int) -> float:
    """Images/s of get_batch (what one loader worker runs) on one core, over every image once after one batch."""
    torch.set_num_threads(1)
    ds = open_dataset(spec)
    batches = index_batches(len(ds), batch, max(2, -(-len(ds) // batch) + 1))
    ds.get_batch(batches[0])
    start = time.perf_counter()
    for indices in batches[1:]:
        ds.get_batch(indices)
    return batch * (len(batches) - 1) / (time.perf_counter() - start)


def loader_rate(spec: str, batch: int, workers: int) -> float:
    """Images/s of hpt's loader with `workers` (0: in this process, one thread), after its first batch."""
    torch.set_num_threads(1)
    ds = open_dataset(spec)
    batches = index_batches(len(ds), batch, max(4, 2 * (-(-len(ds) // batch))))
    loader = iter(batch_loader(ds, batches, workers=workers))
    next(loader)
    start, seen = time.perf_counter(), 0
    for images, _ in loader:
        seen += images.shape[0]
    return seen / (time.perf_counter() - start)


def augment_rate(spec: str, res: int, batch: int, threads: int, reps: int = 3) -> float:
    """Images/s of two MoCo-v2 views of a ready uint8 batch (as each training step makes them)."""
    torch.set_num_threads(threads)
    ds = open_dataset(spec)
    images = ds.get_batch(list(range(min(batch, len(ds)))))[0]
    mean, std = channel_stats(ds)
    augment = MocoAugment(AugmentConfig(image_size=res), mean, std, res)
    augment(images), augment(images)
    start = time.perf_counter()
    for _ in range(reps):
        augment(images), augment(images)
    return images.shape[0] * reps / (time.perf_counter() - start)


def step_args(args: argparse.Namespace, workers: int) -> argparse.Namespace:
    """bench/throughput.py's settings for `hpt pretrain`'s ResNet-50 MoCo-v2 step at --res."""
    return argparse.Namespace(arch="resnet50", small_stem=False, width=64, res=args.res, batch=args.step_batch,
                              precision=args.precision, device=args.device, steps=args.steps, warmup=args.warmup,
                              workers=workers, compile=False, channels_last=False)


def main() -> None:
    args = parse_args()
    formats = [f for f in args.formats.split(",") if f]
    step_formats = [f for f in args.step_formats.split(",") if f]
    worker_counts = [int(w) for w in args.workers.split(",") if w]
    unknown = sorted(set(formats + step_formats) - set(FILE_FORMATS) - {"cache"})
    if unknown or not set(step_formats) <= set(formats) or ("cache" in formats and "jpeg" not in formats):
        raise SystemExit(f"formats are jpeg, png, dicom, tiff and cache (which needs jpeg); --step-formats must be "
                         f"among --formats (unknown: {unknown})")
    cifar = args.cifar or next((p for p in CIFAR_PLACES if p.is_file()), CIFAR_PLACES[-1])
    all_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HPT_CACHE"] = str(Path(tmp) / "hpt_cache")  # statistics and listings: cold, and not the user's
        folder = args.folder or Path(tmp) / "images"
        start = time.perf_counter()
        folders = make_images(folder, formats, args.images, cifar)
        print(f"images: {args.images} per format in {folder} ({time.perf_counter() - start:.0f} s)")
        spec_of = specs(folders, formats, args.res, Path(tmp))
        result: dict = {
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "note": args.note, "torch": torch.__version__, "pillow": PIL.__version__,
            "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "threads": all_threads, "resize": resize_kernel(),
            "files": {fmt: describe_files(path) for fmt, path in folders.items()},
            "decode_per_core_img_s": {}, "loader_img_s": {}, "augment_img_s": {}, "step_img_s": {},
        }
        for fmt, spec in spec_of.items():
            rate = decode_per_core(spec, args.batch)
            result["decode_per_core_img_s"][fmt] = round(rate, 1)
            result["loader_img_s"][fmt] = {str(w): round(loader_rate(spec, args.batch, w), 1) for w in worker_counts}
            print(f"decode  {fmt:6s} {rate:8.1f} img/s per core; loader by workers "
                  f"{result['loader_img_s'][fmt]}")
        first = spec_of["jpeg"] if "jpeg" in spec_of else next(iter(spec_of.values()))
        result["augment_img_s"] = {"one_core": round(augment_rate(first, args.res, args.batch, 1), 1),
                                   "all_threads": round(augment_rate(first, args.res, args.batch, all_threads), 1)}
        print(f"augment two views: {result['augment_img_s']} img/s")
        torch.set_num_threads(all_threads)
        if step_formats:
            limit = compute_limit(step_args(args, 0), torch.device(args.device))
            result["compute_limit_img_s"] = round(limit, 2)
            print(f"compute limit {limit:.2f} img/s (ResNet-50, {args.res} px, batch {args.step_batch})")
        for fmt in step_formats:
            if fmt not in spec_of:
                continue
            rates = {}
            for w in worker_counts:
                rates[str(w)] = round(full_step(step_args(args, w), spec_of[fmt], Path(tmp) / f"run_{fmt}_{w}"), 2)
            result["step_img_s"][fmt] = rates
            print(f"step    {fmt:6s} by workers {rates} img/s")
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def resize_kernel() -> str:
    """Which resize this hpt uses for 8-bit images."""
    try:
        from hpt.data.decode import fast_resize
    except ImportError:
        return "pillow"
    return "torch uint8 (AVX2)" if fast_resize() else "pillow"


if __name__ == "__main__":
    main()
