"""WebDataset shards: brace patterns, scanning, seeded streams, resume, rank splits, loaders, errors."""

from __future__ import annotations

import io
import itertools
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hpt.data.wdsindex as wdsindex
from hpt.data import (
    WdsDataset,
    channel_stats,
    expand_braces,
    make_eval_loader,
    make_loader,
    open_any,
    open_dataset,
    open_stream,
    parse_data_spec,
)
from hpt.errors import HptError

SIZES = (5, 7, 4)  # samples per shard: 16 in all


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPT_CACHE", str(tmp_path / "cache"))


def png(n: int, size: tuple[int, int] = (6, 5), mode: str = "L") -> bytes:
    """An image (PIL size: width, height) whose pixels (0,0) and (0,1) encode n."""
    arr = np.zeros((size[1], size[0]), np.uint8)
    arr[0, 0], arr[0, 1] = n % 256, n // 256
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, "PNG")
    return buf.getvalue()


def add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_shards(folder: Path, sizes: tuple[int, ...] = SIZES, labelled: bool = True,
                 special: dict[int, bytes] | None = None) -> str:
    """Shards shard-000.tar, ... of samples part<s>/<n>.png (+ .cls = n % 3, + an ignored .json); returns the
    wds pattern. special replaces the image bytes of sample n."""
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for s, count in enumerate(sizes):
        with tarfile.open(folder / f"shard-{s:03d}.tar", "w") as tf:
            for _ in range(count):
                key = f"part{s}/{n:05d}"
                add(tf, f"{key}.png", (special or {}).get(n, png(n)))
                if labelled:
                    add(tf, f"{key}.cls", f"{n % 3}\n".encode())
                add(tf, f"{key}.json", b"{}")
                n += 1
    return f"wds:{folder}/shard-{{000..{len(sizes) - 1:03d}}}.tar"


def ids(images: torch.Tensor) -> list[int]:
    return (images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()).tolist()


def take(stream: object, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(itertools.islice(stream, k))  # type: ignore[call-overload]


def test_expand_braces() -> None:
    assert expand_braces("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert expand_braces("{a,b}{1..2}") == ["a1", "a2", "b1", "b2"]
    assert expand_braces("x{9..11}{y,{z,w}}") == ["x9y", "x9z", "x9w", "x10y", "x10z", "x10w", "x11y", "x11z", "x11w"]
    assert expand_braces("{}-{a}-{1..2}") == ["{}-{a}-1", "{}-{a}-2"]
    assert expand_braces("s{3..1}") == ["s3", "s2", "s1"]
    with pytest.raises(HptError, match="unclosed"):
        expand_braces("s{1..2")


def test_open_and_iterate_once(tmp_path: Path) -> None:
    spec = write_shards(tmp_path / "d")
    ds = open_stream(spec)
    assert isinstance(ds, WdsDataset) and isinstance(open_any(spec), WdsDataset)
    assert (len(ds), ds.num_channels, ds.image_size, ds.num_classes, ds.multilabel) == (16, 1, (5, 6), 3, False)
    assert ds.labels is not None and ds.labels.tolist() == [n % 3 for n in range(16)]
    batches = list(ds.iterate_once(5))
    assert [len(x) for x, _ in batches] == [5, 5, 5, 1]
    assert [i for x, _ in batches for i in ids(x)] == list(range(16))
    assert torch.cat([y for _, y in batches]).tolist() == [n % 3 for n in range(16)]
    assert batches[0][0].dtype == torch.uint8 and batches[0][1].dtype == torch.int64
    assert len(open_stream(f"wds:{tmp_path / 'd'}")) == 16  # a folder of shards
    assert parse_data_spec(str(tmp_path / "d" / "shard-000.tar")).kind == "wds"
    with pytest.raises(HptError, match="stream of shards"):
        open_dataset(spec)


def test_options_select_samples(tmp_path: Path) -> None:
    spec = write_shards(tmp_path / "d")
    ds = open_stream(f"{spec}?classes=2,0&grayscale=false&size=4")
    assert len(ds) == 11 and ds.num_classes == 2 and ds.num_channels == 3 and ds.image_size == (4, 4)
    assert parse_data_spec(ds.spec.describe()) == ds.spec and "{000..002}" in ds.spec.describe()
    x, y = next(ds.iterate_once(16))
    assert x.shape == (11, 3, 4, 4) and y.tolist() == [0 if n % 3 == 2 else 1 for n in range(16) if n % 3 != 1]
    assert len(open_stream(f"{spec}?count=6&seed=1")) == 6
    for bad, pattern in (("split=val", "split=val does not apply to wds"), ("skip_corrupt=true", "skip_corrupt")):
        with pytest.raises(HptError, match=pattern):
            open_stream(f"{spec}?{bad}")


def test_stream_epochs_are_seeded_permutations(tmp_path: Path) -> None:
    ds = open_stream(write_shards(tmp_path / "d"))
    first = take(ds.stream(4, seed=3, shuffle_buffer=4), 8)  # exactly two epochs of 16 samples
    for epoch in range(2):
        seen = [i for x, _ in first[4 * epoch:4 * epoch + 4] for i in ids(x)]
        assert sorted(seen) == list(range(16))
    again = take(ds.stream(4, seed=3, shuffle_buffer=4), 8)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    other = take(ds.stream(4, seed=4, shuffle_buffer=4), 8)
    assert [ids(x) for x, _ in other] != [ids(x) for x, _ in first]
    for x, y in first:
        assert y.tolist() == [i % 3 for i in ids(x)]
    # without a buffer the samples come shard by shard, shards in the seeded order
    plain = [i for x, _ in take(ds.stream(8, seed=3, shuffle_buffer=0), 2) for i in ids(x)]
    starts = np.concatenate(([0], np.cumsum(SIZES)))
    order = np.random.default_rng(3).permutation(3)
    assert plain == [i for s in order for i in range(starts[s], starts[s + 1])]


def test_start_step_equals_the_tail(tmp_path: Path) -> None:
    ds = open_stream(write_shards(tmp_path / "d"))
    full = take(ds.stream(3, seed=5, shuffle_buffer=6), 14)  # batches straddle epoch ends (16 % 3 != 0)
    for start in (1, 5, 6, 11):
        resumed = take(ds.stream(3, seed=5, shuffle_buffer=6, start_step=start), 14 - start)
        assert [ids(x) for x, _ in resumed] == [ids(x) for x, _ in full[start:]]


def test_ranks_read_disjoint_shards(tmp_path: Path) -> None:
    ds = open_stream(write_shards(tmp_path / "d", sizes=(3, 4, 2, 5)))
    starts = np.concatenate(([0], np.cumsum((3, 4, 2, 5))))
    for world in (2, 3, 4):
        for epoch in range(3):
            plans = [ds.stream_plan(2, seed=7, rank=r, world_size=world, shuffle_buffer=3) for r in range(world)]
            parts = [set(p.epoch_samples(epoch).tolist()) for p in plans]
            assert sum(len(p) for p in parts) == 14 and set().union(*parts) == set(range(14))
            for r, plan in enumerate(plans):
                assert parts[r] == {i for s in plan.shards(epoch) for i in range(starts[s], starts[s + 1])}
        rank1 = take(ds.stream(2, seed=7, rank=1, world_size=world, shuffle_buffer=3), 2)
        expected = ds.stream_plan(2, seed=7, rank=1, world_size=world, shuffle_buffer=3)
        assert [ids(x) for x, _ in rank1] == [expected.batch(0).tolist(), expected.batch(1).tolist()]
    with pytest.raises(HptError, match="4 shards cannot be shared by 5 processes"):
        next(ds.stream(2, seed=0, rank=0, world_size=5))


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_loaders_with_workers_match_the_stream(tmp_path: Path) -> None:
    ds = open_stream(write_shards(tmp_path / "d"))
    ds.shuffle_buffer = 5
    expected = take(ds.stream(4, seed=2, start_step=3, rank=1, world_size=2, shuffle_buffer=5), 7)
    loader = make_loader(ds, 4, seed=2, start_step=3, rank=1, world_size=2, workers=2)
    got = take(loader, 7)
    assert [ids(x) for x, _ in got] == [ids(x) for x, _ in expected]
    assert [y.tolist() for _, y in got] == [y.tolist() for _, y in expected]
    once = list(make_eval_loader(ds, 5, workers=2))
    assert [i for x, _ in once for i in ids(x)] == list(range(16))
    mean, std = channel_stats(ds, cache_dir=tmp_path / "stats")
    assert len(mean) == 1 and 0 < mean[0] < 1 and std[0] > 0


def test_unlabelled_shards(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ds = open_stream(write_shards(tmp_path / "u", labelled=False))
    assert ds.labels is None and ds.num_classes is None
    _, y = next(ds.stream(4, seed=0))
    assert y.tolist() == [-1] * 4
    folder = tmp_path / "mixed"
    write_shards(folder, sizes=(2,))
    with tarfile.open(folder / "shard-001.tar", "w") as tf:
        add(tf, "extra.png", png(99))
    assert open_stream(f"wds:{folder}/shard-{{000,001}}.tar").labels is None
    assert "have no .cls label" in caplog.text


def test_shard_index_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = write_shards(tmp_path / "d")
    open_stream(spec)
    calls: list[Path] = []
    real = wdsindex.scan_shard
    monkeypatch.setattr(wdsindex, "scan_shard", lambda shard: calls.append(shard) or real(shard))
    assert len(open_stream(spec)) == 16 and calls == []
    write_shards(tmp_path / "d", sizes=(5, 7, 6))  # rewritten shards are scanned again
    assert len(open_stream(spec)) == 18 and len(calls) == 3


def test_missing_and_damaged_shards(tmp_path: Path) -> None:
    spec = write_shards(tmp_path / "d")
    with pytest.raises(HptError, match=r"2 of the 5 shards of .* do not exist: .*shard-003.tar, .*shard-004.tar"):
        open_stream(spec.replace("002", "004"))
    with pytest.raises(HptError, match="holds no .tar shards"):
        open_stream(f"wds:{tmp_path}")
    shard = tmp_path / "d" / "shard-001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[:3000])  # cut inside the shard
    with pytest.raises(HptError, match=r"shard .*shard-001.tar is damaged near sample 'part1/00005' \(unexpected end of data\)"):
        open_stream(spec)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        second = tf.getmembers()[3].offset  # the header of the second sample's image
    broken = bytearray(data)
    broken[second:second + 100] = b"x" * 100
    shard.write_bytes(bytes(broken))
    with pytest.raises(HptError, match=rf"shard-001.tar is damaged after sample 'part1/00005' \(a tar header at "
                                       rf"byte {second} cannot be read\)"):
        open_stream(spec)
    with tarfile.open(shard, "w:gz") as tf:
        add(tf, "a.png", png(1))
    with pytest.raises(HptError, match="cannot read shard .*shard-001.tar as an uncompressed tar"):
        open_stream(spec)


def test_bad_samples_name_key_and_shard(tmp_path: Path) -> None:
    ds = open_stream(write_shards(tmp_path / "a", special={6: b"not an image"}))
    with pytest.raises(HptError, match=r"cannot decode sample 'part1/00006' in shard .*shard-001.tar"):
        list(ds.iterate_once(4))
    ds = open_stream(write_shards(tmp_path / "b", special={9: png(9, size=(7, 5))}))
    with pytest.raises(HptError, match=r"sample 'part1/00009' in shard .*shard-001.tar is 7x5, but the first "
                                       r"sample \('part0/00000' in .*shard-000.tar\) is 6x5; pass size=N"):
        list(ds.iterate_once(4))
    assert len(list(open_stream(write_shards(tmp_path / "b2", special={9: png(9, (7, 5))}) + "?size=6")
                    .iterate_once(16))) == 1
    folder = tmp_path / "c"
    folder.mkdir()
    with tarfile.open(folder / "s.tar", "w") as tf:
        add(tf, "k1.png", png(1))
        add(tf, "k2.cls", b"1")
    with pytest.raises(HptError, match=r"sample 'k2' in shard .*s.tar has no .png, .jpg or .jpeg image \(it has .cls\)"):
        open_stream(f"wds:{folder / 's.tar'}")
    with tarfile.open(folder / "s.tar", "w") as tf:
        add(tf, "k1.png", png(1))
        add(tf, "k1.cls", b"cat")
    with pytest.raises(HptError, match=r"sample 'k1' in shard .*s.tar: k1.cls holds 'cat', not an integer"):
        open_stream(f"wds:{folder / 's.tar'}")
