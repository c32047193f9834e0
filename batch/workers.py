"""Workers: each holds ONE in-process ComfyUI with the workflow loaded once (scripts/comfy_inprocess.py)
and restores items one at a time. ``LocalPool`` runs one in this process; ``RayPool`` runs one Ray
actor per GPU (CPU actors when the cluster has none) and keeps at most a few items in flight per
actor, so memory stays flat whatever the size of the input."""

from __future__ import annotations

import copy
import io
import os
import tempfile
import time
import uuid
from collections import deque
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

from .sources import Item


class WorkerLost(Exception):
    """The worker process died (or its node left the cluster) while it held the item."""


class RestoreWorker:
    """One ComfyUI in this process. ``workflow``: a UI-format workflow with one LoadImage and one
    SaveImage; ``settings``: upscale / steps / cfg / min_short_side overrides (None: the workflow's)."""

    def __init__(self, workflow: dict, settings: dict, models_dir: str | None, cpu: bool = True,
                 threads: int | None = None):
        import torch

        from scripts import comfy_inprocess
        from scripts.restore import patch_prompt

        if threads:
            torch.set_num_threads(threads)
        self.comfy = comfy_inprocess
        self.patch_prompt = patch_prompt
        self.settings = settings
        base = Path(tempfile.mkdtemp(prefix="diffbir-batch-worker-"))
        state = comfy_inprocess.start(base, Path(models_dir) if models_dir else None, cpu=cpu)
        self.input_dir = Path(state["base"]) / "input"
        self.template = comfy_headless_prompt(workflow, comfy_inprocess.object_info())
        savers = [k for k, node in self.template.items() if node["class_type"] == "SaveImage"]
        loaders = [k for k, node in self.template.items() if node["class_type"] == "LoadImage"]
        if len(savers) != 1 or len(loaders) != 1:
            raise ValueError(f"batch restoration needs a workflow with exactly one LoadImage and one SaveImage node; "
                             f"this one has {len(loaders)} and {len(savers)}")
        # The image SaveImage would write: computed and returned instead, so this process writes no files.
        self.image_node, self.image_slot = self.template[savers[0]]["inputs"]["images"]
        self.executor = comfy_inprocess.new_executor()  # one executor: the loaders' outputs stay cached
        self.label = f"{os.uname().nodename}:{os.getpid()}"

    def ready(self) -> str:
        return self.label

    def restore(self, name: str, data: bytes, seed: int) -> dict:
        """{"png": bytes} or {"error": message}; never raises for a bad item."""
        import numpy as np
        import torch
        from PIL import Image

        started = time.monotonic()
        file = self.input_dir / f"batch-{uuid.uuid4().hex}{PurePosixPath(name).suffix.lower() or '.png'}"
        try:
            file.write_bytes(data)
            options = SimpleNamespace(seed=seed, **self.settings)
            prompt = self.patch_prompt(copy.deepcopy(self.template), file.name, "batch", options)
            result = self.comfy.run_prompt(prompt, outputs=[self.image_node], executor=self.executor)
            images = result[self.image_node][self.image_slot]
            if images.shape[0] != 1:
                raise ValueError(f"the workflow made {images.shape[0]} images from one input; batch writes one")
            pixels = (images[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            buffer = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
            return {"png": buffer.getvalue(), "seconds": time.monotonic() - started, "worker": self.label}
        except Exception as error:  # the item failed, not the worker: report it and carry on
            message = f"{type(error).__name__}: {error}".replace(str(file), name)  # the input's name, not ours
            return {"error": message, "seconds": time.monotonic() - started,
                    "worker": self.label}
        finally:
            file.unlink(missing_ok=True)


def comfy_headless_prompt(workflow: dict, object_info: dict) -> dict:
    from scripts import comfy_headless

    return comfy_headless.workflow_to_prompt(workflow, object_info)


class LocalPool:
    """One worker in this process: items run one at a time, as they are submitted."""

    def __init__(self, worker_kwargs: dict):
        self.worker = RestoreWorker(**worker_kwargs)
        self.queue: deque = deque()
        self.size = 1

    def has_room(self) -> bool:
        return not self.queue

    def in_flight(self) -> int:
        return len(self.queue)

    def submit(self, item: Item, seed: int) -> None:
        self.queue.append((item, seed))

    def wait(self) -> list[tuple[Item, dict | Exception]]:
        item, seed = self.queue.popleft()
        return [(item, self.worker.restore(item.name, item.data, seed))]

    def close(self) -> None:
        pass


class RayPool:
    """Ray actors, one per GPU (``num_gpus=1`` each), or ``workers`` CPU actors sharing the cluster's
    CPUs when it has no GPU. Each actor has at most ``per_actor`` items in flight: one running, one
    waiting, so it never idles between items and the driver never holds more than that."""

    def __init__(self, worker_kwargs: dict, address: str | None = None, workers: int | None = None,
                 per_actor: int = 2, max_restarts: int = 3):
        import ray

        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address or None)
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        if workers is not None and workers > (gpus or cpus):
            raise ValueError(f"--workers {workers}: the Ray cluster has {gpus} GPU(s) and {cpus} CPU(s); a worker "
                             f"takes one GPU (one CPU or more without GPU), so at most {gpus or cpus} can start")
        if gpus:
            count = workers or gpus
            options, kwargs = {"num_gpus": 1, "num_cpus": 1}, {**worker_kwargs, "cpu": False}
        else:
            count = workers or 1
            threads = cpus // count
            options, kwargs = {"num_cpus": threads}, {**worker_kwargs, "cpu": True, "threads": threads}
        # A killed actor restarts (reloading its models); the items it held are requeued by the driver.
        actor_class = ray.remote(max_restarts=max_restarts, max_task_retries=0)(RestoreWorker)
        self.actors = [actor_class.options(**options).remote(**kwargs) for _ in range(count)]
        self.labels = ray.get([actor.ready.remote() for actor in self.actors])  # fails early on a bad setup
        self.size = len(self.actors)
        self.per_actor = per_actor
        self.busy = {i: 0 for i in range(self.size)}
        self.pending: dict = {}  # ObjectRef -> (actor index, item, seed)
        self.checking: dict = {}  # ObjectRef of a ready() probe -> actor index, after a worker was lost

    def _usable(self) -> list[int]:
        return [i for i in self.busy if i not in self.checking.values() and self.busy[i] < self.per_actor]

    def has_room(self) -> bool:
        return bool(self._usable())

    def in_flight(self) -> int:
        return len(self.pending) + len(self.checking)

    def submit(self, item: Item, seed: int) -> None:
        index = min(self._usable(), key=lambda i: self.busy[i])
        ref = self.actors[index].restore.remote(item.name, item.data, seed)
        self.busy[index] += 1
        self.pending[ref] = (index, item, seed)

    def wait(self) -> list[tuple[Item, dict | Exception]]:
        ray = self.ray
        refs = list(self.pending) + list(self.checking)
        if not self.pending and not self.checking:
            return []
        ready, _ = ray.wait(refs, num_returns=1)
        done = []
        for ref in ready:
            if ref in self.checking:  # a probe: the actor is back (restarted) or gone for good
                index = self.checking.pop(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.RayActorError:
                    self.busy.pop(index, None)
                    if not self.busy:
                        raise RuntimeError("every Ray worker died; rerun the command to resume") from None
                continue
            index, item, seed = self.pending.pop(ref)
            if index in self.busy:
                self.busy[index] -= 1
            try:
                done.append((item, ray.get(ref)))
            except ray.exceptions.RayActorError as error:
                done.append((item, WorkerLost(str(error).splitlines()[0])))
                if index in self.busy and index not in self.checking.values():
                    self.checking[self.actors[index].ready.remote()] = index
            except ray.exceptions.RayTaskError as error:  # raised outside restore()'s own handling
                done.append((item, {"error": str(error).splitlines()[0]}))
        return done

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
