"""`iipa shards verify` and `iipa shards stats`: check a shards folder end to end, and summarise it.

Verify reads every tar once, sequentially: every `.jpg` member must decode as RGB, every `ok`
row's offset and size must point at exactly its member's bytes with the recorded `sha1` and
dimensions, the tar must hold exactly the `ok` rows (plus a `.json` each), no key may appear
twice, and manifest.json must agree with the slices. Problems are values naming the shard.
"""
from __future__ import annotations

import io
import json
import tarfile
from concurrent.futures import ThreadPoolExecutor
from hashlib import sha1
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from shards.console import UserError, progress
from shards.build.resize import image_error
from shards.schema import OK, SchemaError, read_table


def _manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    if not path.exists():
        raise UserError(f"{folder}: not a shards folder (no manifest.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from exc


def _check_member(name: str, data: bytes, row: dict | None) -> list[str]:
    """Problems of one .jpg member against its row."""
    if row is None:
        return [f"{name}: in the tar but no ok row names it"]
    problems = []
    if sha1(data).hexdigest() != row["sha1"]:
        problems.append(f"{name}: sha1 differs from the row's")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        if img.mode != "RGB" or img.format != "JPEG":
            problems.append(f"{name}: {img.format} {img.mode}, expected an RGB JPEG")
        if img.size != (row["width"], row["height"]):
            problems.append(f"{name}: {img.size[0]}x{img.size[1]}, the row says {row['width']}x{row['height']}")
    except (OSError, ValueError, SyntaxError) as exc:
        problems.append(f"{name}: does not decode ({image_error(exc)})")
    return problems


def _check_offsets(raw: bytes, ok: dict[str, dict], tar_name: str) -> list[str]:
    problems = []
    for key, row in ok.items():
        if row["shard"] != tar_name:
            problems.append(f"{key}: row names shard {row['shard']}")
        elif row["offset"] is None or row["offset"] < 0 or row["offset"] + (row["size"] or 0) > len(raw):
            problems.append(f"{key}: offset {row['offset']} + size {row['size']} outside the tar")
        elif sha1(raw[row["offset"]:row["offset"] + row["size"]]).hexdigest() != row["sha1"]:
            problems.append(f"{key}: the bytes at offset {row['offset']} are not its image")
    return problems


def verify_shard(slice_path: Path) -> dict:
    """Check one shard (tar + Parquet slice); return {shard, rows, ok, keys, problems}."""
    tar_path = slice_path.with_suffix(".tar")
    problems: list[str] = []
    try:
        rows = read_table(slice_path, "images").to_pylist()
    except SchemaError as exc:
        return {"shard": tar_path.name, "rows": 0, "ok": 0, "keys": [], "problems": [f"slice unreadable: {exc}"]}
    ok = {r["key"]: r for r in rows if r["status"] == OK}
    if not tar_path.exists():
        return {"shard": tar_path.name, "rows": len(rows), "ok": len(ok), "keys": [r["key"] for r in rows],
                "problems": ["tar missing"]}
    raw = tar_path.read_bytes()
    seen: dict[str, set] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                seen.setdefault(key, set()).add(ext)
                data = tar.extractfile(member).read()
                if ext == "jpg":
                    problems += _check_member(member.name, data, ok.get(key))
                elif ext == "json":
                    json.loads(data)
    except (tarfile.TarError, json.JSONDecodeError, EOFError, OSError) as exc:
        problems.append(f"tar unreadable: {type(exc).__name__}: {exc}"[:200])
    missing = [k for k in ok if "jpg" not in seen.get(k, ())]
    if missing:
        problems.append(f"{len(missing)} ok row(s) have no image in the tar, e.g. {missing[0]}")
    problems += [f"{k}: members {sorted(e)}, expected jpg and json" for k, e in seen.items() if e != {"jpg", "json"}]
    problems += _check_offsets(raw, ok, tar_path.name)
    return {"shard": tar_path.name, "rows": len(rows), "ok": len(ok), "keys": [r["key"] for r in rows],
            "problems": problems}


def _check_manifest(manifest: dict, reports: list[dict], folder: Path) -> list[str]:
    problems = []
    listed = {s["tar"]: s for s in manifest.get("shards", [])}
    found = {r["shard"]: r for r in reports}
    for name in sorted(set(listed) - set(found)):  # no slice was found for it: say which file is gone
        slice_name = Path(name).with_suffix(".parquet").name
        if (folder / name).exists():
            problems.append(f"{name}: its Parquet slice {slice_name} is missing (the tar is there)")
        else:
            problems.append(f"manifest lists {name}, but neither it nor its slice {slice_name} is in the folder")
    for tar in sorted(p.name for p in folder.glob("*.tar") if not p.name.startswith(".")):
        if tar not in listed and tar not in found:
            problems.append(f"{tar}: a tar with no Parquet slice beside it, not in the manifest")
    for name in sorted(set(found) - set(listed)):
        problems.append(f"{name} is not in the manifest")
    for name in sorted(set(listed) & set(found)):
        entry, report = listed[name], found[name]
        if (entry.get("rows"), entry.get("ok")) != (report["rows"], report["ok"]):
            problems.append(f"{name}: manifest says {entry.get('rows')} rows / {entry.get('ok')} ok, "
                            f"the slice has {report['rows']} / {report['ok']}")
        if (folder / name).exists() and entry.get("bytes") != (folder / name).stat().st_size:
            problems.append(f"{name}: manifest says {entry.get('bytes')} bytes, the tar has {(folder / name).stat().st_size}")
    if manifest.get("rows") != sum(r["rows"] for r in reports) or manifest.get("ok") != sum(r["ok"] for r in reports):
        problems.append(f"manifest totals {manifest.get('rows')} rows / {manifest.get('ok')} ok differ from the slices")
    return problems


def verify_shards(shards_dir: str | Path, threads: int = 2) -> dict:
    """Check a whole shards folder; return {ok, shards, rows, problems: {shard: [...]}}."""
    folder = Path(shards_dir)
    manifest = _manifest(folder)
    slices = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
    with ThreadPoolExecutor(threads) as pool:  # Pillow and hashing release the GIL
        reports = list(progress(pool.map(verify_shard, slices), total=len(slices), desc="verify", unit="shard"))
    problems = {r["shard"]: r["problems"] for r in reports if r["problems"]}
    counts: dict[str, int] = {}
    for report in reports:
        for key in report["keys"]:
            counts[key] = counts.get(key, 0) + 1
    twice = sorted(k for k, n in counts.items() if n > 1)
    if twice:
        problems.setdefault("(folder)", []).append(f"{len(twice)} key(s) in more than one row, e.g. {twice[0]}")
    manifest_problems = _check_manifest(manifest, reports, folder)
    if manifest_problems:
        problems.setdefault("manifest.json", []).extend(manifest_problems)
    return {"ok": not problems, "shards": len(reports), "rows": sum(r["rows"] for r in reports),
            "images": sum(r["ok"] for r in reports), "problems": problems}


def _quantiles(column: pa.ChunkedArray) -> dict:
    if column.null_count == len(column):
        return {}
    q = pc.quantile(column, q=[0.0, 0.5, 1.0]).to_pylist()
    return {"min": q[0], "median": q[1], "max": q[2], "mean": round(pc.mean(column).as_py(), 2)}


def shard_stats(shards_dir: str | Path) -> dict:
    """Counts by status, users, image sizes and bytes of a shards folder."""
    folder = Path(shards_dir)
    manifest = _manifest(folder)
    table = read_table(folder, "images")
    ok = table.filter(pc.equal(table.column("status"), OK))
    status = {c["values"]: c["counts"] for c in pc.value_counts(table.column("status")).to_pylist()}
    return {
        "shards": len(manifest.get("shards", [])),
        "rows": table.num_rows,
        "ok": ok.num_rows,
        "status": dict(sorted(status.items(), key=lambda kv: -kv[1])),
        "users": len(pc.unique(table.column("user_id"))),
        "users_with_images": len(pc.unique(ok.column("user_id"))),
        "tar_bytes": sum((folder / s["tar"]).stat().st_size for s in manifest.get("shards", [])
                         if (folder / s["tar"]).exists()),
        "image_bytes": _quantiles(ok.column("size")) | {"total": int(pc.sum(ok.column("size")).as_py() or 0)},
        "width": _quantiles(ok.column("width")),
        "height": _quantiles(ok.column("height")),
        "orig_width": _quantiles(ok.column("orig_width")),
        "orig_height": _quantiles(ok.column("orig_height")),
    }
