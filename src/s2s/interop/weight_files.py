"""The weight files of a Hugging Face model directory, read tensor by tensor.

    with open_weights(directory) as weights:      # model.safetensors, a sharded index,
        tensor = weights.get("shared.weight")     # or pytorch_model.bin

`.bin` files are read with `torch.load(weights_only=True)`: a file that needs code to unpickle
is refused and none of it runs. `.safetensors` files are read by `SafetensorsReader`, each
tensor straight into a buffer of its own.
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch

from s2s.checkpoint import CheckpointError

SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS, SAFETENSORS_INDEX, BIN, BIN_INDEX)


class HFDirectoryError(CheckpointError):
    """A Hugging Face directory that cannot be read as an s2s model."""


def json_object(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise HFDirectoryError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(values, dict):
        raise HFDirectoryError(f"{path}: not a JSON object")
    return values


class Weights:
    """Named tensors of a directory's weight files, read one at a time."""

    def __init__(self, files: dict[str, Path], readers: dict[Path, Any], where: str) -> None:
        self.files, self.readers, self.where = files, readers, where
        self.names = list(files)
        self.head = "lm_head.weight"

    def get(self, name: str) -> torch.Tensor:
        if name not in self.files:
            raise HFDirectoryError(
                f"{self.where}: missing weight {name!r} (the directory's config.json describes a"
                " model that has it: a damaged or partial download?)"
            )
        return self.readers[self.files[name]](name)


@contextmanager
def open_weights(directory: Path) -> Iterator[Weights]:
    """The directory's weights: one file, or the shards its index names (each tensor is
    found in the shard that holds it, as the shard's own header or state dict says)."""
    found = [name for name in WEIGHT_FILES if (directory / name).is_file()]
    if not found:
        raise HFDirectoryError(f"{directory}: no weights ({', '.join(WEIGHT_FILES)})")
    first = directory / found[0]
    shards = [first]
    if found[0].endswith(".index.json"):
        index = json_object(first).get("weight_map")
        if not isinstance(index, dict):
            raise HFDirectoryError(f"{first}: no 'weight_map' object")
        shards = [directory / str(shard) for shard in sorted(set(index.values()))]
    with ExitStack() as stack:
        readers: dict[Path, Any] = {}
        files: dict[str, Path] = {}
        for shard in shards:
            readers[shard], keys = _open_shard(shard, stack)
            files.update(dict.fromkeys(keys, shard))
        yield Weights(files, readers, str(first))


def _open_shard(path: Path, stack: ExitStack) -> tuple[Any, list[str]]:
    if not path.is_file():
        raise HFDirectoryError(f"{path}: weight shard not found")
    if path.suffix == ".safetensors":
        shard = stack.enter_context(SafetensorsReader(path))
        return shard.get, shard.names
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HFDirectoryError(
            f"{path}: refused: the file holds objects that are not plain tensors ({reason[:120]});"
            " s2s never unpickles code"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise HFDirectoryError(f"{path}: not a readable weights file ({err})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HFDirectoryError(f"{path}: not a state dict of tensors")
    return (lambda name: state[name].clone()), list(state)  # owned, not the file's mapping


class SafetensorsReader:
    """Tensors of a `.safetensors` file, each read straight into a buffer of its own.

    The format (8-byte little-endian header length, a JSON header of names, dtypes, shapes
    and byte offsets, then the raw data) is read here rather than through the `safetensors`
    library's `safe_open`, whose memory map keeps every page read in the process's resident
    memory until the file is closed: reading a 1 GB model that way peaks at twice its size,
    reading tensor by tensor peaks at its size (benchmarks/hf_load.py). Writing still uses the
    library.
    """

    DTYPES: ClassVar[dict[str, torch.dtype]] = {
        "F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
        "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
        "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
    }  # fmt: skip

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = path.open("rb")
        try:
            self.header, self.start = self._header()
        except (ValueError, KeyError, TypeError) as err:
            self.file.close()
            raise HFDirectoryError(f"{path}: not readable safetensors ({err})") from None
        self.names = list(self.header)

    def _header(self) -> tuple[dict[str, Any], int]:
        size = self.path.stat().st_size
        length = int.from_bytes(self.file.read(8), "little")
        if not 2 <= length <= size - 8:
            raise ValueError(f"header length {length} does not fit a {size}-byte file")
        header = json.loads(self.file.read(length))
        header.pop("__metadata__", None)
        for name, info in header.items():
            begin, end = info["data_offsets"]
            dtype = self.DTYPES[info["dtype"]]
            count = math.prod(info["shape"]) * dtype.itemsize
            if end - begin != count or not 0 <= begin <= end <= size - 8 - length:
                raise ValueError(f"tensor {name!r}: offsets {begin}-{end} do not fit its shape")
        return header, 8 + length

    def get(self, name: str) -> torch.Tensor:
        info = self.header[name]
        tensor = torch.empty(info["shape"], dtype=self.DTYPES[info["dtype"]])
        begin, end = info["data_offsets"]
        self.file.seek(self.start + begin)
        if end > begin:
            view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
            if self.file.readinto(view) != end - begin:
                raise HFDirectoryError(f"{self.path}: cut short inside tensor {name!r}")
        return tensor

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()
