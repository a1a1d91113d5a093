"""Read transformer weights from disk, strictly.

Accepted layouts: one `.safetensors` file; a sharded checkpoint with a `*.safetensors.index.json`;
a directory of `name-0000i-of-0000n.safetensors` shards without an index (original Wan layout);
`.pt`/`.pth` only through `torch.load(weights_only=True)` (memory-mapped).

A Wan transformer is a diffusers `transformer/` folder, an original Wan folder (its `config.json`
has `dim`, `num_heads`...; Wan2.2 leaves `text_dim` out, read then off the weights), or one
`.safetensors` file (ComfyUI-style, `model.diffusion_model.` prefix): its config from a
`config.json` beside it, else off the shapes (`models.wan_keys.wan_config_from_shapes`).
`read_header` lists any of them as {key: (dtype, shape)} without reading tensor data.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

from pusa_batch.errors import CheckpointError
from pusa_batch.models.wan import MergedWeights, PusaWanTransformer, WanConfig
from pusa_batch.models.wan_keys import (
    is_wan_format,
    strip_prefix,
    wan_config_from_shapes,
    wan_config_to_diffusers,
    wan_to_diffusers,
)

_SHARD = re.compile(r"^(?P<stem>.+)-(?P<i>\d+)-of-(?P<n>\d+)\.safetensors$")
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_SHOW = 10


def _shown(keys: list[str]) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:_SHOW]) + (f" ... ({len(keys)} in all)" if len(keys) > _SHOW else "")


def weight_files(path: str | Path) -> list[Path]:
    """The safetensors files that make up the checkpoint at `path` (a file, index or directory)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory; check the weights path")
    if path.is_file():
        return _index_files(path) if path.name.endswith(".index.json") else [path]
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if len(indexes) == 1:
        return _index_files(indexes[0])
    files = sorted(path.glob("*.safetensors"))
    shards = [f for f in files if _SHARD.match(f.name)]
    if shards:
        return _complete_shards(path, shards)
    if len(files) == 1 and not indexes:
        return files
    found = ", ".join(f.name for f in files + indexes) or "no .safetensors files"
    raise CheckpointError(
        f"{path}: cannot tell which weights to read ({found}); point at one file or an index"
    )


def _index_files(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{index}: not a safetensors index with a weight_map ({exc})"
        ) from exc
    files = [index.parent / name for name in sorted(set(weight_map.values()))]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{index}: shard(s) listed but absent: {_shown(missing)}")
    return files


def _complete_shards(folder: Path, shards: list[Path]) -> list[Path]:
    groups = {(m["stem"], m["n"]) for m in (_SHARD.match(f.name) for f in shards)}
    if len(groups) != 1:
        raise CheckpointError(f"{folder}: shards of several checkpoints are mixed here")
    stem, n = groups.pop()
    width = len(n)
    expected = [f"{stem}-{i:0{width}d}-of-{n}.safetensors" for i in range(1, int(n) + 1)]
    missing = [name for name in expected if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"{folder}: missing shard(s) {_shown(missing)}; download them again")
    return [folder / name for name in expected]


def read_state_dict(
    path: str | Path, *, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint in their stored dtype; safetensors go straight to `device`."""
    path = Path(path)
    if path.is_file() and path.suffix in _TORCH_SUFFIXES:
        return {k: v.to(device) for k, v in read_torch_tensors(path).items()}
    out: dict[str, torch.Tensor] = {}
    for file in weight_files(path):
        try:
            part = load_file(str(file), device=str(torch.device(device)))
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise CheckpointError(f"{file}: unreadable safetensors file ({exc})") from exc
        clash = sorted(set(part) & set(out))
        if clash:
            raise CheckpointError(f"{file}: key(s) also found in another shard: {_shown(clash)}")
        out.update(part)
    return out


def read_torch_tensors(path: Path, *, mmap: bool = True) -> dict[str, torch.Tensor]:
    """A `.pt`/`.pth` dictionary of tensors through `torch.load(weights_only=True)`.

    Memory-mapped when the file is in torch's zip format (tensor bytes are read only when used);
    an old-format file is read whole.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except RuntimeError as exc:
        if mmap and "mmap" in str(exc):  # legacy (non-zip) serialization cannot be mapped
            return read_torch_tensors(path, mmap=False)
        raise CheckpointError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({exc}); only plain "
            "tensor dictionaries are accepted, convert it to safetensors"
        ) from exc
    except Exception as exc:
        raise CheckpointError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({exc}); only plain "
            "tensor dictionaries are accepted, convert it to safetensors"
        ) from exc
    for wrapper in ("state_dict", "module"):
        if isinstance(obj, dict) and set(obj) == {wrapper}:
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a dictionary of tensors")
    return obj


_DTYPE_CODES = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float64: "F64",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.int64: "I64",
    torch.int32: "I32",
}


def read_header(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{key: (safetensors dtype code, shape)} of a checkpoint, its tensor data never read:
    safetensors headers (every shard, a truncated file refused), or a `.pt`/`.pth` memory-mapped
    through `torch.load(weights_only=True, mmap=True)` (the pickle is read, the tensors are not)."""
    path = Path(path)
    if path.is_file() and path.suffix in _TORCH_SUFFIXES:
        return {
            k: (_DTYPE_CODES.get(v.dtype, str(v.dtype).removeprefix("torch.")), tuple(v.shape))
            for k, v in read_torch_tensors(path).items()
        }
    entries: dict[str, tuple[str, tuple[int, ...]]] = {}
    for file in weight_files(path):
        header = read_safetensors_header(file)
        header.pop("__metadata__", None)
        clash = sorted(set(header) & set(entries))
        if clash:
            raise CheckpointError(f"{file}: key(s) also found in another shard: {_shown(clash)}")
        with file.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
        end = 8 + size + max((info["data_offsets"][1] for info in header.values()), default=0)
        if file.stat().st_size < end:
            raise CheckpointError(
                f"{file}: truncated ({file.stat().st_size} bytes, the header needs {end}); "
                "download it again"
            )
        entries.update((k, (v["dtype"], tuple(v["shape"]))) for k, v in header.items())
    return entries


def read_safetensors_header(file: str | Path) -> dict:
    file = Path(file)
    with file.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise CheckpointError(f"{file}: too short to be a safetensors file")
        (size,) = struct.unpack("<Q", raw)
        if size > 100_000_000 or size > file.stat().st_size:
            raise CheckpointError(f"{file}: not a safetensors file (bad header length)")
        try:
            return json.loads(fh.read(size))
        except ValueError as exc:
            raise CheckpointError(f"{file}: corrupt safetensors header ({exc})") from exc


def file_identity(path: str | Path) -> str:
    """A cheap content fingerprint: sizes, safetensors headers and the first MiB of each file."""
    digest = hashlib.sha256()
    path = Path(path)
    files = [path] if path.suffix in _TORCH_SUFFIXES else weight_files(path)
    if path.is_dir() and (path / "config.json").is_file():
        files = [path / "config.json", *files]
    for file in files:
        digest.update(f"{file.name}:{file.stat().st_size}".encode())
        with file.open("rb") as fh:
            digest.update(fh.read(1 << 20))
    return digest.hexdigest()[:16]


def check_keys(
    expected: Mapping[str, torch.Size], got: Mapping[str, torch.Tensor], source: str
) -> None:
    """Raise CheckpointError naming missing, unexpected and mis-shaped keys."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [
        f"{k} {tuple(got[k].shape)} (model wants {tuple(expected[k])})"
        for k in expected
        if k in got and tuple(got[k].shape) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_shown(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_shown(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {_shown(shapes)}")
    if problems:
        raise CheckpointError(
            f"{source}: weights do not match the transformer config: " + "; ".join(problems)
        )


def load_fp32_strictly(
    module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str
) -> torch.nn.Module:
    """`state` into `module` (built on the meta device) as fp32, keys checked first; eval mode."""
    check_keys({k: v.shape for k, v in module.state_dict().items()}, state, source)
    module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    return module.eval()


def read_transformer_config(path: Path) -> WanConfig:
    """The config of a transformer folder (diffusers or original Wan `config.json`) or of one
    `.safetensors` file (a `config.json` beside it, else read off its shapes)."""
    path = Path(path)
    config_path = path / "config.json" if path.is_dir() else path.parent / "config.json"
    if path.is_file() and not _is_wan_config(config_path):
        shapes = {k: s for k, (_, s) in strip_prefix(read_header(path)).items()}
        raw = wan_config_from_shapes(shapes, source=str(path))
        return WanConfig.from_dict(wan_config_to_diffusers(raw, source=str(path)), source=str(path))
    try:
        raw = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"{config_path}: a transformer directory needs a readable config.json ({exc})"
        ) from exc
    if "num_attention_heads" not in raw and "dim" in raw:
        if "text_dim" not in raw:  # Wan's WanModel leaves it out of config.json (ignore_for_config)
            raw = {**raw, "text_dim": _text_dim(path)}
        raw = wan_config_to_diffusers(raw, source=str(config_path))
    return WanConfig.from_dict(raw, source=str(config_path))


def _is_wan_config(path: Path) -> bool:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and ("dim" in raw or "num_attention_heads" in raw)


def _text_dim(path: Path) -> int:
    """The text embedding's input width, from the weights' headers (4096 if not found)."""
    try:
        entries = strip_prefix(read_header(path))
    except CheckpointError:
        return 4096
    shape = entries.get("text_embedding.0.weight", (None, (0, 4096)))[1]
    return int(shape[1])


def load_wan_transformer(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attention: str = "sdpa",
) -> PusaWanTransformer:
    """A diffusers `transformer/` dir, an original Wan dir (config.json + shards) or one
    `.safetensors` DiT file (original names, any `model.diffusion_model.` prefix), strictly.

    Weights are read onto `device`, then cast to `dtype` with norms, modulation tables and the
    time embedder kept in fp32 (as diffusers does). `attention` is "sdpa" or "flash".
    """
    folder = Path(path)
    if not folder.is_dir() and not (folder.is_file() and folder.suffix == ".safetensors"):
        raise CheckpointError(
            f"{folder}: expected a directory holding config.json and weights, or one "
            ".safetensors DiT file"
        )
    config = read_transformer_config(folder)
    state_dict = read_state_dict(folder, device=device)  # no host copy when loading to a GPU
    state_dict = strip_prefix(state_dict)
    if is_wan_format(state_dict):
        state_dict = wan_to_diffusers(state_dict, source=str(folder))
    with torch.device("meta"):
        model = PusaWanTransformer(config, attention=attention)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    check_keys(expected, state_dict, str(folder))
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.set_dtype(dtype).to(device).eval().requires_grad_(False)
    model.merged_weights = MergedWeights(base=file_identity(folder))
    return model
