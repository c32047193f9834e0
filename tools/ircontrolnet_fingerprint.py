"""Print the content fingerprint, wrapper and network size of IRControlNet files, for filling
``KNOWN_FINGERPRINTS`` in diffbir_modules/ircontrolnet/loading.py (the pack identifies versions by it).

    .venv/bin/python -m tools.ircontrolnet_fingerprint weights/v2.pth weights/DiffBIR_v2.1.pt ...
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(paths: list[str]) -> None:
    from devkit import comfy_runtime

    comfy_runtime.prepare_imports()
    from diffbir_modules import ircontrolnet as irc

    for path in paths:
        sd, wrapper = irc.extract_state_dict(irc.read_checkpoint(path), source=path)
        version, reason = irc.identify_version(sd, wrapper)
        config = irc.config_from_state_dict(sd, source=path)
        print(f"{path}\n  fingerprint {irc.fingerprint(sd)}\n  {wrapper}; {config.describe()}; "
              f"{len(sd)} tensors\n  version: {version or 'unknown'} ({reason})")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
