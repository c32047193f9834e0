"""A pack that cannot import must say why in ComfyUI's log, naming the missing package and the fix,
never just leave its nodes out silently."""

import pytest

from scripts import comfy_headless


@pytest.mark.server
def test_missing_dependency_is_named_in_comfyui_log(tmp_path):
    # Hide one of the pack's requirements from the server's Python: a stand-in that fails to import
    # exactly as an absent package does. (ComfyUI's own upscale-model nodes lose it too; ComfyUI
    # reports that and carries on, which is what real users see.)
    stub = tmp_path / "hide" / "spandrel"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'spandrel'\", name='spandrel')\n")
    base = comfy_headless.make_base_directory(tmp_path / "base")
    with comfy_headless.ComfyServer(base, env={"PYTHONPATH": str(tmp_path / "hide")}) as server:
        info = server.object_info()
        log = server.log(200000)
    assert not any(name.startswith("DiffBIR") for name in info), "pack nodes appeared although it cannot import"
    pack_lines = [line for line in log.splitlines() if "Cannot import" in line and "comfyui-diffbir" in line]
    assert pack_lines, f"ComfyUI did not report the pack's import failure:\n{log[-4000:]}"
    message = pack_lines[0]
    print(message)
    assert "spandrel" in message and "pip install -r" in message and "requirements.txt" in message
    assert "(IMPORT FAILED)" in log and "comfyui-diffbir" in log.split("(IMPORT FAILED)")[1].splitlines()[0]
