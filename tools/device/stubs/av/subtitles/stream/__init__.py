"""Stand-in for PyAV on the GPU benchmark machine only (no video is used there): every attribute is a
placeholder class so ComfyUI's video modules import. Never on the test path."""


class _Placeholder:
    def __init__(self, *a, **k):
        raise RuntimeError("PyAV is not installed on this machine")


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return type(name, (_Placeholder,), {})
