"""The run's manifest: one row per input item (name, input checksum, seed, output, output checksum,
status, error, attempts) in an SQLite file next to the outputs. SQLite commits are atomic, so a
run killed at any moment leaves a manifest that says exactly what is done."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

FILE_NAME = "diffbir-manifest.sqlite"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str | None:
    try:
        return sha256(Path(path).read_bytes())
    except FileNotFoundError:
        return None


class Manifest:
    def __init__(self, output_dir: Path):
        self.path = Path(output_dir) / FILE_NAME
        self.db = sqlite3.connect(self.path)
        self.db.execute("""CREATE TABLE IF NOT EXISTS items (
            name TEXT PRIMARY KEY, input_sha256 TEXT, seed INTEGER, output TEXT, output_sha256 TEXT,
            status TEXT, error TEXT, attempts INTEGER DEFAULT 0, seconds REAL, worker TEXT, updated REAL)""")
        self.db.execute("CREATE INDEX IF NOT EXISTS items_output ON items (output)")
        self.db.commit()

    def is_done(self, name: str, input_sha: str, output_dir: Path) -> bool:
        """Done = restored from these very input bytes, and the output file is still there, unchanged."""
        row = self.db.execute("SELECT input_sha256, output, output_sha256 FROM items WHERE name=? AND status='done'",
                              (name,)).fetchone()
        return (row is not None and row[0] == input_sha
                and file_sha256(Path(output_dir) / row[1]) == row[2])

    def output_owner(self, output: str, name: str) -> str | None:
        """Another input whose output is ``output`` (e.g. a.jpg and a.png both make a.png), if any."""
        row = self.db.execute("SELECT name FROM items WHERE output=? AND name!=?", (output, name)).fetchone()
        return row[0] if row else None

    def record(self, name: str, **fields) -> None:
        fields = {**fields, "updated": time.time()}
        columns = ", ".join(fields)
        updates = ", ".join(f"{c}=excluded.{c}" for c in fields)
        self.db.execute(f"INSERT INTO items (name, {columns}) VALUES (?, {', '.join('?' * len(fields))}) "
                        f"ON CONFLICT(name) DO UPDATE SET {updates}", (name, *fields.values()))
        self.db.commit()

    def add_attempt(self, name: str) -> None:
        self.db.execute("INSERT INTO items (name, attempts, status) VALUES (?, 1, 'running') "
                        "ON CONFLICT(name) DO UPDATE SET attempts=attempts+1, status='running'", (name,))
        self.db.commit()

    def rows(self, status: str | None = None) -> list[dict]:
        query = "SELECT * FROM items" + (" WHERE status=?" if status else "") + " ORDER BY name"
        cursor = self.db.execute(query, (status,) if status else ())
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def rows_named(self, name: str) -> list[dict]:
        cursor = self.db.execute("SELECT * FROM items WHERE name=?", (name,))
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def close(self) -> None:
        self.db.close()
