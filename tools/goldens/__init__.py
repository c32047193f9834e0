"""Golden fixture makers: run the official DiffBIR code beside ours (see official.py)."""
