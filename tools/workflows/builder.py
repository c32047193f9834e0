"""Builds UI-format ComfyUI workflows (what users load, share and drop into the web UI) from short
Python descriptions, using the real node definitions (``/object_info`` format) for widget order and
defaults. Hand-written UI JSON drifts from the node definitions; generated JSON cannot.

A description is a list of ``Node(key, class_type, **inputs)``: an input is either a widget value or
a link ``(other_key, output_index)``; widgets left out take their defaults. ``models=[...]`` on a node
adds the web UI's ``properties.models`` metadata (name, url, directory) so the frontend can offer
missing downloads.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

SEED_WIDGETS = {"seed", "noise_seed"}
NODE_WIDTH = 340
COLUMN = 400  # x distance between the columns of nodes (one column per link depth)
GAP = 60  # y distance between the nodes of a column
NODE_TITLE = 30  # the web UI draws a node's title bar above its position
GROUP_TITLE = 44  # room for a group's title (font size 24) above its first node
GROUP_PAD = 20  # group border around its nodes: COLUMN - NODE_WIDTH = 60 leaves 20 px between groups
# Room for the image these nodes show: the web UI draws it inside the node, and a node too short for it
# grows over the node below (a portrait photo in a 340 px wide node is about 450 px tall).
IMAGE_PREVIEW = {"LoadImage": 460, "PreviewImage": 380, "SaveImage": 380}


@dataclass
class Node:
    key: str
    class_type: str
    inputs: dict = field(default_factory=dict)
    title: str | None = None
    models: list[dict] | None = None
    color: str | None = None

    def __init__(self, key, class_type, title=None, models=None, color=None, **inputs):
        self.key, self.class_type, self.title, self.models, self.color = key, class_type, title, models, color
        self.inputs = inputs


def note(key: str, text: str, title: str = "Read me") -> Node:
    return Node(key, "MarkdownNote", title=title, text=text)


def _widget_specs(info: dict) -> list[tuple[str, object, dict]]:
    out = []
    order = info.get("input_order", {})
    for group in ("required", "optional"):
        spec = info["input"].get(group, {})
        for name in order.get(group, list(spec)):
            kind = spec[name][0]
            options = spec[name][1] if len(spec[name]) > 1 else {}
            # forceInput: a socket only, the web UI makes no widget (and stores no value) for it
            if (isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")) \
                    and not options.get("forceInput"):
                out.append((name, kind, options))
    return out


def _default(kind, options):
    if "default" in options:
        return options["default"]
    if isinstance(kind, list):
        return kind[0] if kind else None
    if kind == "COMBO":
        values = options.get("options") or []
        return values[0] if values else None
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind)


def build(nodes: list[Node], object_info: dict, extra: dict | None = None,
          stages: dict[str, list[str]] | None = None) -> dict:
    """Returns the UI-format workflow dict for ``nodes``. Without ``stages`` the nodes stand in columns by
    link depth; with ``stages`` (``{group title: [node keys]}`` in order, every node in one) each stage
    is a column inside a titled group."""
    if stages is not None:
        placed = [key for keys in stages.values() for key in keys]
        missing, unknown = {n.key for n in nodes} - set(placed), set(placed) - {n.key for n in nodes}
        if missing or unknown or len(placed) != len(set(placed)):
            raise KeyError(f"stages must name every node once: missing {sorted(missing)}, unknown {sorted(unknown)}")
        stage_of = {key: index for index, keys in enumerate(stages.values()) for key in keys}
    ids = {node.key: index + 1 for index, node in enumerate(nodes)}
    by_key = {node.key: node for node in nodes}
    links = []
    depth = {}

    def node_depth(key):
        if key not in depth:
            sources = [v[0] for v in by_key[key].inputs.values() if _is_link(v)]
            depth[key] = 0 if not sources else 1 + max(node_depth(s) for s in sources)
        return depth[key]

    out_nodes = []
    outputs_of = {node.key: {} for node in nodes}  # key -> {slot: [link ids]}
    for node in nodes:
        for name, value in node.inputs.items():
            if _is_link(value):
                link_id = len(links) + 1
                source, slot = value
                source_type = object_info[by_key[source].class_type]["output"][slot]
                links.append([link_id, ids[source], slot, ids[node.key], name, source_type])
                outputs_of[source].setdefault(slot, []).append(link_id)

    column_y = {}
    for order, node in enumerate(nodes):
        info = object_info.get(node.class_type)
        node_inputs, widgets = [], []
        if node.class_type == "MarkdownNote":
            widgets = [node.inputs["text"]]
            size = [NODE_WIDTH, 80 + 22 * (len(node.inputs["text"]) // 40)]  # ~40 characters a line
        else:
            if info is None:
                raise KeyError(f"unknown node type {node.class_type!r} (not in object_info)")
            widget_specs = _widget_specs(info)
            widget_names = {name for name, _, _ in widget_specs}
            unknown = set(node.inputs) - widget_names - _link_input_names(info)
            if unknown:
                raise KeyError(f"{node.class_type} has no input(s) {sorted(unknown)}")
            for name, kind, options in widget_specs:
                value = node.inputs.get(name)
                if _is_link(value):
                    widgets.append(_default(kind, options))
                else:
                    widgets.append(_default(kind, options) if value is None else value)
                if name in SEED_WIDGETS or options.get("control_after_generate"):
                    widgets.append("fixed")
            for name, value in node.inputs.items():
                if _is_link(value):
                    link_id = next(link[0] for link in links if link[3] == ids[node.key] and link[4] == name)
                    entry = {"name": name, "type": links[link_id - 1][5], "link": link_id}
                    if name in widget_names:
                        entry["widget"] = {"name": name}
                    node_inputs.append(entry)
            # the web UI draws sockets (inputs beside outputs) first, then one row per widget
            rows = max(len(node_inputs), len(info["output"])) + len(widgets)
            size = [NODE_WIDTH, 60 + 26 * rows + IMAGE_PREVIEW.get(node.class_type, 0)]
        outputs = []
        if info is not None and node.class_type != "MarkdownNote":
            names = info.get("output_name") or info["output"]
            for slot, (output_type, output_name) in enumerate(zip(info["output"], names)):
                outputs.append({"name": output_name, "type": output_type,
                                "links": outputs_of[node.key].get(slot, []), "slot_index": slot})
        col = node_depth(node.key) if stages is None else stage_of[node.key]
        y = column_y.get(col, 60 if stages is None else 60 + GROUP_TITLE + NODE_TITLE)
        column_y[col] = y + size[1] + GAP
        properties = {"Node name for S&R": node.class_type}
        if node.models:
            properties["models"] = node.models
        entry = {"id": ids[node.key], "type": node.class_type, "pos": [40 + col * COLUMN, y], "size": size,
                 "flags": {}, "order": order, "mode": 0, "inputs": node_inputs, "outputs": outputs,
                 "properties": properties, "widgets_values": widgets}
        if node.title:
            entry["title"] = node.title
        if node.color:
            entry["color"] = node.color
        out_nodes.append(entry)

    for link in links:  # UI links name the target slot by index
        target = out_nodes[link[3] - 1]
        link[4] = next(i for i, entry in enumerate(target["inputs"]) if entry["link"] == link[0])
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "comfyui-diffbir/" + "/".join(n.key for n in nodes))),
        "revision": 0, "last_node_id": len(nodes), "last_link_id": len(links),
        "nodes": out_nodes, "links": links, "groups": _groups(stages, out_nodes, ids), "config": {},
        "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}, **(extra or {})}, "version": 0.4,
    }


def _groups(stages: dict[str, list[str]] | None, out_nodes: list[dict], ids: dict) -> list[dict]:
    """One titled group around each stage's column of nodes (LiteGraph's group format)."""
    groups = []
    for index, (title, keys) in enumerate((stages or {}).items()):
        members = [out_nodes[ids[key] - 1] for key in keys]
        top = min(n["pos"][1] for n in members) - NODE_TITLE - GROUP_TITLE
        bottom = max(n["pos"][1] + n["size"][1] for n in members) + GROUP_PAD
        left = members[0]["pos"][0] - GROUP_PAD
        groups.append({"id": index + 1, "title": title, "color": "#3f789e", "font_size": 24, "flags": {},
                       "bounding": [left, top, NODE_WIDTH + 2 * GROUP_PAD, bottom - top]})
    return groups


def _is_link(value) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _link_input_names(info: dict) -> set:
    names = set()
    for group in ("required", "optional"):
        names |= set(info["input"].get(group, {}))
    return names


def dumps(workflow: dict) -> str:
    return json.dumps(workflow, indent=2) + "\n"


def live_object_info() -> dict:
    """The node definitions of a headless ComfyUI with this pack (``/object_info``)."""
    from scripts import comfy_headless

    with comfy_headless.ComfyServer(comfy_headless.make_base_directory(comfy_headless.scratch_base())) as server:
        return server.object_info()


def write(workflows: dict, out_dir) -> None:
    """Writes ``{title: workflow}`` as ``<out_dir>/<title>.json``."""
    from pathlib import Path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for title, workflow in workflows.items():
        path = out / f"{title}.json"
        path.write_text(dumps(workflow))
        print(f"wrote {path}")
