"""The run loop: stream items from the source, skip the ones the manifest says are done, keep the
pool busy with a bounded number in flight, write each output atomically and record it. A worker
lost mid-item costs that item only: it goes back to the queue for another worker."""

from __future__ import annotations

import os
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from . import sources
from .manifest import Manifest, file_sha256, sha256
from .seeds import item_seed
from .workers import WorkerLost

MAX_WORKER_LOSSES = 3  # an item that took down this many workers is reported as failed, not retried forever


@dataclass
class Summary:
    restored: int = 0
    skipped: int = 0
    failed: dict = field(default_factory=dict)  # name -> error
    requeued: int = 0
    videos: list = field(default_factory=list)  # encoded video files


def write_atomically(path: Path, data: bytes) -> None:
    """Written under a temporary name in the same folder, then renamed: a reader (or a rerun) sees
    the whole file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)


def run(input_path: Path, output_dir: Path, pool, run_seed: int,
        on_result: Callable | None = None, log: Callable = print) -> Summary:
    input_path, output_dir = Path(input_path), Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(output_dir)
    summary = Summary()
    stream = sources.items(input_path)
    requeued: deque = deque()
    losses: Counter = Counter()
    checksums: dict = {}  # name -> input checksum, for the items in flight

    def next_item():
        if requeued:
            return requeued.popleft()
        for item in stream:
            checksum = sha256(item.data)
            if manifest.is_done(item.name, checksum, output_dir):
                summary.skipped += 1
                continue
            checksums[item.name] = checksum
            return item
        return None

    try:
        while True:
            while pool.has_room():
                item = next_item()
                if item is None:
                    break
                other = manifest.output_owner(item.output, item.name)
                error = (f"its output {item.output} is already {other}'s; rename one of the two inputs"
                         if other is not None else None)
                if ".." in PurePosixPath(item.output).parts:  # an archive member such as ../../x.png
                    error = "its path leads outside the output folder (..); not restored"
                if error is not None:
                    summary.failed[item.name] = error
                    manifest.record(item.name, input_sha256=checksums.pop(item.name), status="failed", error=error)
                    log(f"  FAILED {item.name}: {error}")
                    continue
                seed = item_seed(run_seed, item.seed_name)
                manifest.record(item.name, input_sha256=checksums[item.name], seed=seed, output=item.output,
                                status="running", error=None)
                manifest.add_attempt(item.name)
                pool.submit(item, seed)
            if pool.in_flight() == 0:
                break
            for item, result in pool.wait():
                if isinstance(result, WorkerLost):
                    losses[item.name] += 1
                    if losses[item.name] < MAX_WORKER_LOSSES:
                        summary.requeued += 1
                        requeued.append(item)
                        log(f"  requeued {item.name}: worker lost ({result})")
                        continue
                    result = {"error": f"{MAX_WORKER_LOSSES} workers died while restoring it (last: {result})"}
                if "error" in result:
                    summary.failed[item.name] = result["error"]
                    manifest.record(item.name, status="failed", error=result["error"],
                                    seconds=result.get("seconds"), worker=result.get("worker"))
                    log(f"  FAILED {item.name}: {result['error']}")
                else:
                    write_atomically(output_dir / item.output, result["png"])
                    manifest.record(item.name, status="done", error=None, output_sha256=sha256(result["png"]),
                                    seconds=result["seconds"], worker=result["worker"])
                    summary.restored += 1
                    log(f"  {item.name} -> {item.output} ({result['seconds']:.1f} s, {result['worker']})")
                checksums.pop(item.name, None)
                if on_result is not None:
                    on_result(item, result)
        if sources.kind_of(input_path) == "video":
            _finish_video(input_path, output_dir, manifest, summary, log)
    finally:
        manifest.close()
    return summary


def _finish_video(video: Path, output_dir: Path, manifest: Manifest, summary: Summary, log: Callable) -> None:
    """Encodes the restored frames once every frame is done (again only if a frame changed)."""
    from . import video as video_io

    prefix = f"{video.name}/"
    frames = [row for row in manifest.rows() if row["name"].startswith(prefix)]
    if not frames or any(row["status"] != "done" for row in frames):
        log(f"  {video.name}: not encoded, {sum(r['status'] != 'done' for r in frames)} frame(s) not restored")
        return
    target = output_dir / video.name
    frames_checksum = sha256("".join(row["output_sha256"] for row in frames).encode())
    [previous] = manifest.rows_named(video.name) or [None]
    if (previous and previous["input_sha256"] == frames_checksum
            and file_sha256(target) == previous["output_sha256"]):
        return
    video_io.encode(video, output_dir / video_io.frames_folder(video), target)
    manifest.record(video.name, input_sha256=frames_checksum, output=video.name, output_sha256=file_sha256(target),
                    status="done", error=None)
    summary.videos.append(target)
    log(f"  {video.name}: {len(frames)} frames encoded -> {target}")
