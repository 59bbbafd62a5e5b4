"""Readers for the official on-disk formats: CIFAR python pickles (folder or ``.tar.gz``), IDX files,
SVHN's MATLAB files, and the tensor files (``.npz``/``.pt``) of the ``tensors`` dataset.

Readers return numpy arrays (images uint8 ``[N, C, H, W]``, labels int64 ``[N]``) and turn every
malformed file into a one-line :class:`~kdlab.errors.UserError` that names the file and the fix.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import tarfile
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdlab.errors import UserError, first_line
from kdlab.runs import open_regular, read_regular

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

REFETCH = "delete it and fetch it again"


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """Python 3 writes ``bytes`` into protocol-2 pickles as ``_codecs.encode(text, 'latin1')``.

    Only that codec is honoured, so the allowed callable cannot be steered anywhere else.
    """
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"codec {encoding!r} is not allowed")
    return text.encode("latin1")


def _bounded_reconstruct(limit: int):
    """numpy's ``_reconstruct`` for plain arrays no larger than ``limit`` elements: numpy pickles
    always call it with shape ``(0,)`` and fill the array from the file's bytes afterwards."""

    def reconstruct(subtype: type, shape: object, dtype: object) -> np.ndarray:
        if subtype is not np.ndarray or not isinstance(shape, tuple) or math.prod(map(int, shape)) > limit:
            raise pickle.UnpicklingError(f"an array of shape {str(shape)[:40]} cannot come from this file")
        return _reconstruct(subtype, shape, dtype)

    return reconstruct


def _bytes(*args: object) -> bytes:
    """``bytes()`` and ``bytes(bytes-like)`` only: ``bytes(2_000_000_000)`` would allocate 2 GB from a
    file of a few dozen bytes."""
    if len(args) > 1 or (args and not isinstance(args[0], (bytes, bytearray))):
        raise pickle.UnpicklingError("bytes() may only copy bytes in a CIFAR file")
    return bytes(*args)


# Everything a CIFAR pickle needs: numpy arrays (written by numpy 1.x or 2.x) and bytes. Module names
# arrive unmapped (Python 2's ``__builtin__``), because find_class is overridden. A callable that
# allocates is bounded by the size of the file (``_CifarUnpickler.find_class``).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
    ("__builtin__", "bytes"): _bytes,
    ("builtins", "bytes"): _bytes,
}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in ``_ALLOWED_GLOBALS``: a payload never runs,
    and no allocation exceeds the file's size."""

    def __init__(self, data: bytes, source: str) -> None:
        # The official files are Python-2 pickles; "bytes" keeps their str keys as b'data', b'labels'.
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.source = source
        self.size = len(data)

    def find_class(self, module: str, name: str) -> object:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise UserError(
                f"refusing to unpickle {module}.{name} from {self.source}: "
                "CIFAR files only hold numpy arrays and lists"
            )
        return _bounded_reconstruct(self.size) if allowed is _reconstruct else allowed


def load_cifar_pickle(data: bytes, source: str) -> dict[bytes, object]:
    """Unpickle one CIFAR file (its bytes) safely; ``source`` names it in errors."""
    try:
        loaded = _CifarUnpickler(data, source).load()
    except UserError:
        raise
    except Exception as error:  # any parse failure means a damaged file
        raise UserError(f"{source} is truncated or corrupt ({type(error).__name__}): {REFETCH}") from None
    if not isinstance(loaded, dict):
        raise UserError(f"{source} is not a CIFAR batch (holds a {type(loaded).__name__}): {REFETCH}")
    return loaded


@dataclass
class ArraySplits:
    """Both splits as numpy arrays: images uint8 ``[N, C, H, W]`` contiguous, labels int64 ``[N]``."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


@dataclass(frozen=True)
class CifarFormat:
    """Where the arrays live in one of the official CIFAR python archives."""

    folder: str  # the extracted folder, also the member prefix inside the archive
    archive: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes
    names_key: bytes
    num_classes: int

    @property
    def members(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file, self.meta_file)


CIFAR10_FORMAT = CifarFormat(
    folder="cifar-10-batches-py",
    archive="cifar-10-python.tar.gz",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch",
    meta_file="batches.meta",
    label_key=b"labels",
    names_key=b"label_names",
    num_classes=10,
)
CIFAR100_FORMAT = CifarFormat(
    folder="cifar-100-python",
    archive="cifar-100-python.tar.gz",
    train_files=("train",),
    test_file="test",
    meta_file="meta",
    label_key=b"fine_labels",
    names_key=b"fine_label_names",
    num_classes=100,
)


def _read_files(location: Path, prefix: str, names: Sequence[str]) -> dict[str, bytes]:
    """The bytes of each file in ``names``, from a folder or from a ``.tar.gz`` holding ``prefix/NAME``.

    The archive is streamed once in order (no extraction, no backward seeks in the gzip stream).
    """
    if location.is_dir():
        return {name: read_regular(location / name) for name in names}
    wanted = {f"{prefix}/{name}": name for name in names}
    found: dict[str, bytes] = {}
    try:
        with open_regular(location) as handle, tarfile.open(fileobj=handle, mode="r:*") as archive:
            for member in archive:
                name = wanted.get(member.name.removeprefix("./"))
                if name is not None and member.isfile():
                    found[name] = archive.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise UserError(f"{location} is truncated or corrupt ({error}): {REFETCH}") from None
    missing = [member for member, name in wanted.items() if name not in found]
    if missing:
        raise UserError(f"{location} lacks {', '.join(missing)}: {REFETCH}")
    return found


def read_cifar(location: Path, fmt: CifarFormat) -> tuple[ArraySplits, list[str]]:
    """Read a CIFAR folder or archive: the train/test arrays and the class names from the meta file.

    Each data row of 3072 bytes is the 32x32 R plane, then G, then B, each row-major, so a reshape to
    ``[N, 3, 32, 32]`` gives channel-first images without moving pixels.
    """
    raw = _read_files(location, fmt.folder, fmt.members)
    sources = {name: f"{location}/{name}" if location.is_dir() else f"{location}:{name}" for name in raw}
    batches = {name: load_cifar_pickle(data, sources[name]) for name, data in raw.items()}

    def split(names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for name in names:
            batch = batches[name]
            try:
                data = np.asarray(batch.get(b"data"))
                label = np.asarray(batch.get(fmt.label_key, []))  # no dtype: a float label is not cast
            except (ValueError, TypeError, OverflowError):
                data, label = np.zeros((0,)), np.zeros((0,))
            if (
                data.dtype != np.uint8
                or data.ndim != 2
                or data.shape[1] != 3072
                or label.ndim != 1
                or len(label) != len(data)
            ):
                raise UserError(
                    f"{sources[name]} is not a CIFAR batch (data {data.dtype} {list(data.shape)}, "
                    f"labels {list(label.shape)}; expected uint8 [N, 3072] and N labels): {REFETCH}"
                )
            if label.size:  # an empty list reads as float64: no label to check
                whole_labels(
                    label, f"{sources[name]} ({fmt.label_key.decode()})", f"0..{fmt.num_classes - 1}"
                )
            images.append(data.reshape(-1, 3, 32, 32))
            labels.append(label.astype(np.int64))
        return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)

    names = batches[fmt.meta_file].get(fmt.names_key, [])
    names = names if isinstance(names, (list, tuple)) else []
    if len(names) != fmt.num_classes:
        raise UserError(
            f"{sources[fmt.meta_file]} names {len(names)} classes ({fmt.names_key.decode()}), but {fmt.folder} "
            f"has {fmt.num_classes}: {REFETCH}"
        )
    class_names = [name.decode(errors="replace") if isinstance(name, bytes) else str(name) for name in names]
    return ArraySplits(*split(fmt.train_files), *split((fmt.test_file,))), class_names


# IDX: 2 zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, then each dimension
# as a big-endian uint32, then the values.
_IDX_UBYTE = 0x08
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _decompress(path: Path, ndim: int) -> tuple[bytes, bool]:
    """The IDX file's content and whether it is complete (a cut gzip stream still yields its prefix).

    A ``.gz`` file is inflated only as far as its header says the content goes (plus one byte, to
    see trailing data), so a small file cannot expand into gigabytes.
    """
    raw = read_regular(path)
    if path.suffix != ".gz":
        return raw, True
    stream = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        content = stream.decompress(raw, 4 + 4 * ndim)
        dims = _idx_dims(content, ndim)
        if dims is not None:  # deflate expands at most ~1032x, which also caps a header that lies
            wanted = min(4 + 4 * ndim + math.prod(dims) + 1, len(raw) * 1100) - len(content)
            if wanted > 0:  # (0 would mean: no limit)
                content += stream.decompress(stream.unconsumed_tail, wanted)
    except zlib.error as error:
        raise UserError(f"{path} is truncated or corrupt ({error}): {REFETCH}") from None
    return content, stream.eof


def _idx_dims(content: bytes, ndim: int) -> tuple[int, ...] | None:
    """The ``ndim`` dimensions in an IDX header, or None when ``content`` is shorter than the header."""
    offset = 4 + 4 * ndim
    if len(content) < offset:
        return None
    return tuple(int(d) for d in np.frombuffer(content[4:offset], dtype=">u4"))


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (``.gz`` or plain) with ``ndim`` dimensions, e.g. ``[N, 28, 28]``."""
    content, complete = _decompress(path, ndim)
    offset = 4 + 4 * ndim
    magic_ok = content[:4] == bytes((0, 0, _IDX_UBYTE, ndim))
    if not magic_ok and len(content) >= 4:
        raise UserError(f"{path} is corrupt (not an IDX file of bytes with {ndim} dimensions): {REFETCH}")
    dims = _idx_dims(content, ndim)
    size = offset + math.prod(dims) if dims is not None else None  # Python ints: no overflow
    expected = f"{size} bytes" if size is not None else f"an IDX header of {offset} bytes"
    if not complete or size is None or len(content) != size:
        cut = " before the gzip stream ended" if not complete else ""
        raise UserError(
            f"{path} is truncated or corrupt (expected {expected}, got {len(content)}{cut}): {REFETCH}"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=offset).reshape(dims).copy()


def find_idx_files(folder: Path) -> list[Path] | None:
    """The four IDX files of a (Fashion-)MNIST folder, plain preferred over ``.gz``; None if any is missing."""
    found = []
    for stem in IDX_FILES:
        path = next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found


def read_idx_folder(folder: Path) -> ArraySplits:
    """Read the four IDX files of a (Fashion-)MNIST folder: images become ``[N, 1, 28, 28]``."""
    paths = find_idx_files(folder)
    if paths is None:
        raise UserError(f"{folder} lacks the IDX files {', '.join(IDX_FILES)} (.gz or plain)")
    train_images, train_labels, test_images, test_labels = (
        read_idx(path, ndim) for path, ndim in zip(paths, (3, 1, 3, 1), strict=True)
    )
    for images, labels, path in (
        (train_images, train_labels, paths[1]),
        (test_images, test_labels, paths[3]),
    ):
        image_path = paths[0] if path is paths[1] else paths[2]
        if images.shape[1:] != (28, 28):
            raise UserError(
                f"{image_path} holds images of {images.shape[1]}x{images.shape[2]} pixels, not (Fashion-)MNIST's "
                f"28x28: {REFETCH}"
            )
        if len(images) != len(labels):
            raise UserError(f"{path} holds {len(labels)} labels for {len(images)} images: {REFETCH}")
    return ArraySplits(
        train_images[:, None],
        train_labels.astype(np.int64),
        test_images[:, None],
        test_labels.astype(np.int64),
    )


# --- SVHN: the official MATLAB files ------------------------------------------------------------------

SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One official SVHN file (``X`` uint8 ``[32, 32, 3, N]``, ``y`` ``[N, 1]`` in 1..10 where 10 is
    the digit 0) as images uint8 ``[N, 3, 32, 32]`` and labels int64 ``[N]`` in 0..9 (the digit)."""
    from scipy.io import loadmat

    try:
        with open_regular(path) as handle:
            mat = loadmat(handle, variable_names=["X", "y"])
    except Exception as error:  # scipy raises several types for a damaged or foreign file
        raise UserError(
            f"cannot read {path} as an SVHN .mat file ({first_line(error, 120)}): {REFETCH}"
        ) from None
    images, labels = mat.get("X"), mat.get("y")
    if (
        not isinstance(images, np.ndarray)
        or not isinstance(labels, np.ndarray)
        or images.ndim != 4
        or images.shape[:3] != (32, 32, 3)
        or labels.size != images.shape[3]
        or labels.ndim > 2
    ):
        raise UserError(f"{path} does not hold SVHN's X [32, 32, 3, N] and y [N, 1]: {REFETCH}")
    # Pixels are bytes; floats (NaN among them) or wider integers would be cast silently into garbage.
    if images.dtype != np.uint8:
        raise UserError(f"{path} holds X of {images.dtype} values, but SVHN's pixels are uint8: {REFETCH}")
    labels = labels.reshape(-1)
    whole_labels(labels, f"y of {path}", "1..10 (10 is the digit 0)", REFETCH)  # stored as doubles
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        sample = int(((labels < 1) | (labels > 10)).argmax())
        raise UserError(
            f"y of {path} holds the label {labels[sample]:g} (sample {sample}), outside SVHN's 1..10: {REFETCH}"
        )
    return np.ascontiguousarray(images.transpose(3, 2, 0, 1)), labels.astype(np.int64) % 10


# --- tensor files: a dataset of the user's own arrays (the `tensors` dataset) --------------------------

TENSOR_SUFFIXES = (".npz", ".pt")
TENSOR_KEYS = ("x", "y", "classes")  # x and y required; classes optional (the class names, K of them)
_DEFLATE_MAX_RATIO = 1100  # deflate expands at most ~1032x: a member claiming more lies about its size
_MAX_LABEL = 2**31 - 1
_TENSOR_FIX = "save x [N, ...] and integer y [N] (and optionally classes) with np.savez or torch.save"


@dataclass
class TensorFile:
    """One split of the ``tensors`` dataset, checked: ``x`` uint8 ``[N, C, H, W]`` (images), float32 or
    int64 ``[N, ...]``; ``y`` int64 ``[N]`` (>= 0); ``classes`` the class names the file lists, if any."""

    x: np.ndarray
    y: np.ndarray
    classes: list[str] | None


def memory_bytes() -> int | None:
    """This machine's physical memory (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def _check_keys(keys: Sequence[str], path: Path) -> None:
    unknown = sorted(set(keys) - set(TENSOR_KEYS))
    missing = [key for key in ("x", "y") if key not in keys]
    if unknown or missing:
        problem = (
            f"lacks {' and '.join(missing)}" if missing else f"holds unknown keys {', '.join(unknown)[:80]}"
        )
        raise UserError(
            f"{path} {problem} (it holds {', '.join(sorted(keys))[:80] or 'nothing'}): a tensor file holds x, y "
            f"and optionally classes; {_TENSOR_FIX}"
        )


def _npz_headers(path: Path) -> None:
    """Check every member of a ``.npz`` before numpy reads it: plain ``.npy`` arrays (no objects) whose
    headers agree with the sizes the archive records, which fit in memory. numpy allocates what a header
    claims before it reads the data, so a header claiming 10^12 elements is refused here."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            names = [info.filename for info in infos]
            if len(set(names)) != len(names) or not all(name.endswith(".npy") for name in names):
                raise UserError(f"{path} is not an archive of .npy arrays: {_TENSOR_FIX}")
            _check_keys([name.removesuffix(".npy") for name in names], path)
            total = 0
            for info in infos:
                key = info.filename.removesuffix(".npy")
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                    else:
                        raise ValueError(f".npy format version {version[0]}.{version[1]} of {key}")
                    header = member.tell()
                if dtype.hasobject:
                    raise UserError(
                        f"{path}: {key} is an array of Python objects, which kdlab never unpickles: save x and y "
                        "as numeric arrays (classes as strings)"
                    )
                size = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
                deflated = info.compress_type != zipfile.ZIP_STORED
                if header + size != info.file_size or (
                    deflated and info.file_size > _DEFLATE_MAX_RATIO * max(info.compress_size, 1)
                ):
                    raise UserError(
                        f"{path} is truncated or corrupt ({key} claims {dtype} {list(shape)}, {size} bytes, but "
                        f"the archive holds {max(info.file_size - header, 0)}): save it again with np.savez"
                    )
                total += size
    except UserError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, zlib.error) as error:
        raise UserError(
            f"{path} is not a readable .npz archive ({first_line(error, 100)}): save it again with np.savez"
        ) from None
    memory = memory_bytes()
    if memory is not None and total > memory:
        raise UserError(
            f"{path} holds arrays of {total / 1e9:.3g} GB, more than this machine's memory "
            f"({memory / 1e9:.3g} GB): use a subset of the data"
        )


def _read_npz(path: Path) -> dict[str, object]:
    _npz_headers(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise UserError(
            f"{path} is truncated or corrupt ({first_line(error, 100)}): save it again with np.savez"
        ) from None


def _read_pt(path: Path) -> dict[str, object]:
    """A ``.pt`` file read with ``torch.load(weights_only=True)``: a dict of tensors (``classes`` a list
    of strings). torch refuses a storage whose recorded size disagrees with the file before it
    allocates; a tensor whose strides repeat its storage (an expanded view) is refused here, since
    copying it would allocate what its shape claims."""
    import torch

    from kdlab.runs import unreadable_reason

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged or unsafe file
        raise UserError(f"cannot read {path} ({unreadable_reason(path, error)}): {_TENSOR_FIX}") from None
    if not isinstance(loaded, dict) or not all(isinstance(key, str) for key in loaded):
        raise UserError(f"{path} holds a {type(loaded).__name__}, not a dict of tensors: {_TENSOR_FIX}")
    _check_keys(list(loaded), path)
    arrays: dict[str, object] = {}
    for key, value in loaded.items():
        if key == "classes" and isinstance(value, (list, tuple)):
            arrays[key] = value
            continue
        if not isinstance(value, torch.Tensor) or value.layout != torch.strided or value.is_quantized:
            raise UserError(f"{path}: {key} is a {type(value).__name__}, not a dense tensor: {_TENSOR_FIX}")
        if value.numel() * value.element_size() > value.untyped_storage().nbytes():
            raise UserError(
                f"{path}: {key} {list(value.shape)} repeats its data (an expanded view of "
                f"{value.untyped_storage().nbytes()} bytes): save {key}.contiguous()"
            )
        if value.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
            value = value.float()
        try:
            arrays[key] = value.detach().contiguous().numpy()
        except (TypeError, RuntimeError):
            raise UserError(
                f"{path}: {key} holds {value.dtype} values, which kdlab cannot read: {_TENSOR_FIX}"
            ) from None
    return arrays


def _first_bad(mask: np.ndarray) -> int:
    """The first sample (row of ``mask`` [N, ...]) where ``mask`` is true."""
    return int(mask.reshape(len(mask), -1).any(axis=1).argmax())


def _standard_inputs(x: object, path: Path) -> np.ndarray:
    """``x`` as uint8 ``[N, C, H, W]`` images (kept), float32 (float and bool arrays) or int64 (other
    integers: token ids and the like), with a one-line UserError for what no model can take."""
    if not isinstance(x, np.ndarray) or x.ndim < 2:
        shape = list(x.shape) if isinstance(x, np.ndarray) else type(x).__name__
        raise UserError(
            f"x of {path} is {shape}, not [N, ...] with sample i in x[i]: reshape one feature per sample to "
            "[N, 1]"
        )
    if math.prod(x.shape[1:]) == 0:
        raise UserError(
            f"x of {path} has samples of shape {list(x.shape[1:])}: each sample needs at least one value"
        )
    kind = x.dtype.kind
    if kind == "u" and x.dtype.itemsize == 1 and x.ndim == 4:
        return np.ascontiguousarray(x)  # images: normalised on the device as the built-in datasets are
    if kind in "iu":
        if x.size and kind == "u" and x.max() > np.iinfo(np.int64).max:
            raise UserError(f"x of {path} holds integers beyond int64: kdlab reads integer x as int64 ids")
        return x.astype(np.int64, copy=False)
    if kind in "fb":
        with np.errstate(over="ignore"):
            x = x.astype(np.float32, copy=False)
        bad = ~np.isfinite(x)
        if bad.any():
            raise UserError(
                f"x of {path} holds NaN, inf or values beyond float32's range ({int(bad.sum())} value(s), the "
                f"first in sample {_first_bad(bad)}): clean or drop those samples"
            )
        return x
    raise UserError(f"x of {path} holds {x.dtype} values: kdlab reads float, integer or bool arrays")


def whole_labels(y: np.ndarray, what: str, valid: str = "0..K-1", fix: str = "") -> None:
    """A UserError unless ``y`` holds integers, or floats that are whole numbers (MATLAB stores labels
    as doubles): a label of 1.5, NaN or a string is a damaged file, never rounded. ``what`` names the
    array in the message, ``valid`` the labels it should hold, ``fix`` what to do (appended)."""
    kind, then = y.dtype.kind, f"; {fix}" if fix else ""
    if kind == "f":
        finite = np.isfinite(y)
        whole = finite & (np.floor(y, where=finite, out=np.zeros_like(y)) == y)
        if not whole.all():
            sample = int((~whole).reshape(-1).argmax())
            raise UserError(
                f"{what} holds {float(y.reshape(-1)[sample])!r} (sample {sample}), not a class number: labels "
                f"are integers {valid}{then}"
            )
    elif kind not in "iub":
        raise UserError(f"{what} holds {y.dtype} values, not integer class labels {valid}{then}")


def _standard_labels(y: object, path: Path) -> np.ndarray:
    """``y`` as int64 ``[N]`` labels >= 0 (integers, or floats that are whole numbers)."""
    if not isinstance(y, np.ndarray) or y.ndim != 1:
        shape = list(y.shape) if isinstance(y, np.ndarray) else type(y).__name__
        raise UserError(f"y of {path} is {shape}, not [N]: y holds one integer class label per sample")
    whole_labels(y, f"y of {path}")
    if y.size and y.min() < 0:
        sample = int(y.argmin())
        raise UserError(
            f"y of {path} holds the negative label {y[sample]} (sample {sample}): labels are 0..K-1"
        )
    if y.size and y.max() > _MAX_LABEL:
        raise UserError(f"y of {path} holds the label {y.max()}: labels are 0..K-1 for K classes")
    return y.astype(np.int64, copy=False)


def _class_names(value: object, path: Path) -> list[str]:
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "US":
        names = [item.decode(errors="replace") if isinstance(item, bytes) else str(item) for item in value]
    elif isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        names = list(value)
    else:
        raise UserError(f"classes of {path} is not a list of class names (strings): {_TENSOR_FIX}")
    if len(names) < 2:
        raise UserError(f"classes of {path} names {len(names)} class(es): a classifier needs at least 2")
    return names


def read_tensor_file(path: Path) -> TensorFile:
    """One ``.npz`` (``np.load(allow_pickle=False)``) or ``.pt`` (``torch.load(weights_only=True)``)
    split of the ``tensors`` dataset, checked as a hostile file would be; every problem is a one-line
    UserError naming the file."""
    arrays = _read_npz(path) if path.suffix == ".npz" else _read_pt(path)
    x = _standard_inputs(arrays["x"], path)
    y = _standard_labels(arrays["y"], path)
    if len(x) != len(y):
        raise UserError(
            f"{path} holds {len(x)} samples in x but {len(y)} labels in y: give one label per sample"
        )
    if len(x) == 0:
        raise UserError(f"{path} holds no samples (x is {list(x.shape)}): every split needs at least one")
    classes = _class_names(arrays["classes"], path) if "classes" in arrays else None
    return TensorFile(x, y, classes)
