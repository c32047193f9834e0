"""A real ComfyUI runtime inside the current process.

``start()`` imports ComfyUI from the tree scripts/setup.sh prepared (or COMFYUI_PATH), with a
``--base-directory`` whose custom_nodes/ links this pack, then loads the built-in and custom nodes
exactly as ``main.py`` does. ``run_prompt()`` validates an API-format graph and executes it with
ComfyUI's own ``PromptExecutor``. ``pack_module()`` reaches the pack's modules as ComfyUI loaded
them (one copy only: ComfyUI names a custom node package by its path).

Used by the tests (devkit/comfy_runtime.py) and by the batch workers (batch/workers.py), which keep
one executor per process so the workflow's models load once.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
import uuid
from pathlib import Path

from . import comfy_headless

_state: dict = {}


def prepare_imports(argv: list[str] | None = None) -> None:
    """Makes ComfyUI importable with ``argv`` (default: just --cpu) as its command line. ComfyUI
    parses its arguments once, at the first import of comfy.cli_args; later calls do nothing."""
    if "comfy.cli_args" in sys.modules:
        return
    root = comfy_headless.comfyui_root()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # ComfyUI is not an installed package: its tree is the import root
    saved_argv = sys.argv
    sys.argv = ["comfyui-in-process", *(argv or ["--cpu"])]
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.cli_args  # noqa: F401
    finally:
        sys.argv = saved_argv


def start(base_directory: Path, models_dir: Path | None = None, cpu: bool = True,
          extra_args: list[str] | None = None) -> dict:
    """Starts the runtime once. ``cpu=False`` lets ComfyUI's model management pick the device (a GPU
    where there is one); ``extra_args`` are more ComfyUI command-line options (e.g. --fp16-unet)."""
    if _state:
        return _state
    if "comfy.cli_args" in sys.modules:
        raise RuntimeError("ComfyUI was imported before comfy_inprocess.start(); start the runtime first")
    root = comfy_headless.comfyui_root()
    base = comfy_headless.make_base_directory(base_directory, models_dir)
    prepare_imports([*(["--cpu"] if cpu else []), "--base-directory", str(base), "--disable-all-custom-nodes",
                     "--whitelist-custom-nodes", comfy_headless.PACK_LINK_NAME, *(extra_args or [])])
    # Order matters, as in main.py: ComfyUI's utils package before nodes.py puts comfy/ (with its
    # utils.py) first on sys.path, and the server module before the extra nodes.
    importlib.import_module("utils.extra_config")
    importlib.import_module("server")
    nodes = importlib.import_module("nodes")

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    pack_path = str(base / "custom_nodes" / comfy_headless.PACK_LINK_NAME)
    module_name = pack_path.replace(".", "_x_")
    if module_name not in sys.modules:
        raise RuntimeError(f"ComfyUI did not load the pack from {pack_path}; see the log above")
    _state.update(base=base, root=root, pack=sys.modules[module_name], pack_name=module_name, nodes=nodes)
    logging.getLogger().setLevel(logging.INFO)
    return _state


def pack_module(dotted: str = ""):
    """The pack's module ``dotted`` (e.g. "diffbir_modules.color_fix") as ComfyUI loaded it."""
    name = _state["pack_name"] + ("." + dotted if dotted else "")
    return importlib.import_module(name)


def object_info() -> dict:
    """The node definitions a UI-format workflow needs to become a prompt (the ``input`` and
    ``input_order`` fields of ``/object_info``), from the loaded nodes, without a server."""
    info = {}
    for name, cls in _state["nodes"].NODE_CLASS_MAPPINGS.items():
        if hasattr(cls, "GET_NODE_INFO_V1"):  # V3 node: ComfyUI builds the V1 description itself
            info[name] = cls.GET_NODE_INFO_V1()
        else:
            inputs = cls.INPUT_TYPES()
            info[name] = {"input": inputs, "input_order": {group: list(spec) for group, spec in inputs.items()}}
    return info


class _ServerStandIn:
    """What PromptExecutor needs of the server: ids and a message sink."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


class PromptError(RuntimeError):
    pass


def new_executor():
    """A ComfyUI ``PromptExecutor`` with the server's default (classic) cache. Reused for several
    prompts it keeps the outputs of nodes whose inputs did not change, the model loaders above all,
    as the server does; a fresh one per prompt keeps nothing."""
    import execution

    compat = pack_module("diffbir_modules.comfy_compat")
    return execution.PromptExecutor(_ServerStandIn(), cache_type=execution.CacheType.CLASSIC,
                                    cache_args=compat.executor_cache_args())


def run_prompt(prompt: dict, outputs: list[str] | None = None, executor=None) -> dict:
    """Validates and executes an API-format prompt in process with ComfyUI's own validation and
    PromptExecutor. ``outputs``: the node ids to execute and return (any node, not only output
    nodes; default: the graph's output nodes). ``executor``: one from ``new_executor`` to reuse
    (default: a fresh one that keeps nothing). Returns {node_id: list of output values}. Raises
    PromptError with ComfyUI's own message on failure."""
    import execution

    prompt_id = uuid.uuid4().hex
    if outputs is None:
        valid, error, targets, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        if not valid:
            raise PromptError(f"invalid prompt: {error} {node_errors}")
    else:
        targets = [str(node_id) for node_id in outputs]
        validated = {}
        for node_id in targets:
            ok, reasons, _ = asyncio.run(execution.validate_inputs(prompt_id, prompt, node_id, validated))
            if not ok:
                raise PromptError(f"invalid prompt at node {node_id}: {reasons}")
    compat = pack_module("diffbir_modules.comfy_compat")
    executor = executor or new_executor()
    executor.execute(prompt, prompt_id, {}, targets)
    if not executor.success:
        for event, data in executor.status_messages:
            if event == "execution_error":
                raise PromptError(f"{data['node_type']} (node {data['node_id']}): {data['exception_type']}: "
                                  f"{data['exception_message']}")
            if event == "execution_interrupted":
                raise PromptError(f"interrupted at {data['node_type']} (node {data['node_id']})")
        raise PromptError(f"prompt failed: {executor.status_messages}")
    results = {}
    for node_id in targets:
        entry = compat.cached_outputs(executor.caches.outputs, node_id)
        if entry is not None:
            results[node_id] = [value[0] if isinstance(value, list) and len(value) == 1 else value
                                for value in entry.outputs]
    return results
