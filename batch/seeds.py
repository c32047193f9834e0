"""Per-item seeds: derived from the run's seed and the item's name, so any item restores alone
with the noise it had in the whole run, whatever the order, worker or retry."""

import hashlib

SEED_BITS = 48  # well inside ComfyUI's seed range and exact in JSON numbers


def item_seed(run_seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{run_seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - SEED_BITS)
