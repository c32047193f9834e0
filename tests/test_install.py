"""Installing like a user: the pack works whatever folder name it is cloned under (spaces, dashes,
"-main" from a zip download) and from any working directory; its packaging metadata is what the Comfy
Registry and ComfyUI-Manager read; no code builds paths from the working directory."""

import ast
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib
from PIL import Image

from scripts import comfy_headless

REPO = Path(__file__).resolve().parent.parent
PACK_SOURCES = [REPO / "__init__.py", *sorted((REPO / "nodes").glob("*.py")),
                *sorted((REPO / "diffbir_modules").glob("*.py"))]


def copy_pack(dest: Path) -> Path:
    """A plain copy of the pack's files (what `git clone` or a zip download gives), not a link."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\n")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file() and not source.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def offline_workflow() -> dict:
    """A UI-format workflow as the web UI saves it: the preset loader (with the web UI's model metadata,
    properties.models) feeding a text preview."""
    return {
        "last_node_id": 2, "last_link_id": 1, "version": 0.4,
        "nodes": [
            {"id": 1, "type": "DiffBIRPresetLoader", "pos": [0, 0], "size": [320, 300], "mode": 0, "order": 0,
             "inputs": [], "widgets_values": ["v2.1", "sr", True],
             "outputs": [{"name": "settings", "type": "STRING", "links": [1], "slot_index": 10}],
             "properties": {"Node name for S&R": "DiffBIRPresetLoader", "models": [
                 {"name": "sd2.1-base-zsnr-laionaes5.ckpt", "directory": "checkpoints",
                  "url": "https://huggingface.co/lxq007/DiffBIR-v2/resolve/main/sd2.1-base-zsnr-laionaes5.ckpt"},
                 {"name": "DiffBIR_v2.1.pt", "directory": "diffbir",
                  "url": "https://huggingface.co/lxq007/DiffBIR-v2/resolve/main/DiffBIR_v2.1.pt"}]}},
            {"id": 2, "type": "PreviewAny", "pos": [400, 0], "size": [300, 200], "mode": 0, "order": 1,
             "inputs": [{"name": "source", "type": "*", "link": 1}], "outputs": [], "properties": {},
             "widgets_values": []},
        ],
        "links": [[1, 1, 10, 2, 0, "STRING"]],
    }


@pytest.mark.server
def test_pack_loads_under_any_folder_name_and_working_directory(tmp_path):
    base = tmp_path / "ComfyUI base"
    for sub in ("custom_nodes", "input", "output", "temp", "user", "models"):
        (base / sub).mkdir(parents=True)
    copy_pack(base / "custom_nodes" / "ComfyUI DiffBIR-main")
    elsewhere = tmp_path / "some other dir"
    elsewhere.mkdir()
    with comfy_headless.ComfyServer(base, env={"DIFFBIR_NO_DOWNLOAD": "1"}, cwd=elsewhere) as server:
        info = server.object_info()
        ours = {k: v for k, v in info.items() if k.startswith("DiffBIR")}
        assert {"DiffBIRPresetLoader", "DiffBIRSynthesizeDegradation", "DiffBIRColorFix"} <= set(ours), \
            f"pack nodes missing from object_info:\n{server.log(6000)}"
        assert all(v["python_module"] == "custom_nodes.ComfyUI DiffBIR-main" for v in ours.values())
        pack_lines = [line for line in server.log(200000).splitlines() if "ComfyUI DiffBIR-main" in line]
        assert pack_lines and not any("IMPORT FAILED" in line or "Cannot import" in line for line in pack_lines)

        # a pack node runs
        prompt = {
            "img": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1,
                                                           "color": 0x336699}},
            "deg": {"class_type": "DiffBIRSynthesizeDegradation", "inputs": {
                "image": ["img", 0], "pipeline": "codeformer", "seed": 1, "intensity": 1.0, "scale": 0.0,
                "low_resolution_output": False, "jpeg_codec": "auto", "usm_sharpen": True}},
            "save": {"class_type": "SaveImage", "inputs": {"images": ["deg", 0], "filename_prefix": "deg"}},
        }
        paths = server.output_images(server.run(prompt, timeout=300), "save")
        assert len(paths) == 1 and Image.open(paths[0]).size == (64, 48)

        # offline, a shared workflow whose weights are missing is refused naming each file, URL and folder
        workflow_prompt = comfy_headless.workflow_to_prompt(offline_workflow(), info)
        with pytest.raises(comfy_headless.PromptRejected) as failed:
            server.run(workflow_prompt, timeout=300)
    message = json.loads(str(failed.value).split(": ", 1)[1])["node_errors"]["1"]["errors"][0]["details"]
    print(message)
    assert "model files are missing" in message and "DIFFBIR_NO_DOWNLOAD=1" in message
    for name, folder, url in [
        ("sd2.1-base-zsnr-laionaes5.ckpt", "checkpoints", "lxq007/DiffBIR-v2/resolve/main/sd2.1-base-zsnr"),
        ("DiffBIR_v2.1.pt", "diffbir", "lxq007/DiffBIR-v2/resolve/main/DiffBIR_v2.1.pt"),
        ("realesrgan_s4_swinir_100k.pth", "upscale_models", "lxq007/DiffBIR-v2/resolve/main/realesrgan_s4"),
    ]:
        assert name in message and url in message
        assert str(base / "models" / folder) in message


def test_no_path_from_the_working_directory():
    """The pack's code never reads the working directory: every path comes from folder_paths or __file__."""
    offenders = []
    for path in PACK_SOURCES:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("getcwd", "getcwdb", "chdir", "cwd"):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.attr}")
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                    "open", "Path", "load_torch_file", "exists", "isfile", "isdir", "listdir"):
                for arg in node.args[:1]:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: relative path {arg.value!r}")
    assert not offenders, "paths built from the working directory:\n" + "\n".join(offenders)


def test_registry_and_manager_metadata():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    p, comfy = project["project"], project["tool"]["comfy"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*(?:[-_.][A-Za-z0-9]+)*", p["name"]) and len(p["name"]) < 100
    assert re.fullmatch(r"\d+\.\d+\.\d+", p["version"])
    assert p["description"] and p["license"] == {"file": "LICENSE"} and (REPO / "LICENSE").is_file()
    assert "Apache License" in (REPO / "LICENSE").read_text()[:200]
    assert p["urls"]["Repository"].startswith("https://github.com/")
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert comfy["Icon"].startswith("https://") and Path(comfy["Icon"]).suffix in (".png", ".svg", ".jpg", ".gif")
    requirements = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    requirements = [r for r in requirements if r]
    names = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}
    assert not names & {"torch", "torchvision", "torchaudio", "opencv-python", "opencv-contrib-python",
                        "opencv-python-headless"}, "requirements.txt must not pin torch or pull OpenCV 5"
    assert {n.lower() for n in p["dependencies"]} == {r.lower() for r in requirements}, \
        "pyproject dependencies and requirements.txt differ"
    icon = REPO / "docs" / Path(comfy["Icon"]).name
    assert icon.is_file(), f"the icon {comfy['Icon']} should be committed as {icon.relative_to(REPO)}"


def test_registry_archive_leaves_out_what_users_do_not_run():
    """`.comfyignore` (gitignore syntax, matched here by git itself): the registry archive holds the pack,
    its workflows, README and user docs, and none of the tests, tools, CI or docs images."""
    tracked = set(subprocess.run(["git", "ls-files", "-c"], cwd=REPO, capture_output=True, text=True,
                                 check=True).stdout.splitlines())
    ignored = set(subprocess.run(["git", "ls-files", "-c", "-i", "--exclude-from=.comfyignore"], cwd=REPO,
                                 capture_output=True, text=True, check=True).stdout.splitlines())
    shipped = tracked - ignored
    needed = {str(p.relative_to(REPO)) for p in PACK_SOURCES} | {"LICENSE", "README.md", "pyproject.toml",
                                                                   "requirements.txt", "docs/icon.svg"}
    needed |= {str(p.relative_to(REPO)) for p in (REPO / "example_workflows").iterdir()}
    assert needed <= shipped, f"left out of the archive: {sorted(needed - shipped)}"
    assert not [f for f in shipped if f.split("/")[0] in ("tests", "tools", "devkit", ".ci")], "tests or tools shipped"
    assert not [f for f in shipped if f.startswith("docs/") and not f.endswith((".md", ".svg"))]
    # The archive is the code, text and thumbnails: 1.20 MB uncompressed, measured on comfy-cli's own
    # archive (`comfy node pack`: 105 files, 0.52 MB zipped; the tests alone are 8.5 MB); 2 MB leaves
    # room for growth and fails if a data folder slips in.
    assert sum((REPO / f).stat().st_size for f in shipped if (REPO / f).is_file()) < 2_000_000
