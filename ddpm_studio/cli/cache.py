"""``ddpm-studio cache list|clear``: the decoded-dataset cache that training maps instead of decoding again."""

from __future__ import annotations

from ddpm_studio.core.data.cache import cache_dir, clear_cache, list_cache_entries
from ddpm_studio.core.training.memory import format_bytes


def run(args) -> int:
    if args.action == "clear":
        count, size = clear_cache()
        print(f"Removed {count} cached dataset{'s' if count != 1 else ''} ({format_bytes(size)}) from {cache_dir()}.")
        return 0
    entries = list_cache_entries()
    print(f"Dataset cache: {cache_dir()}")
    for entry in entries:
        print(f"  {entry.path.name}  {format_bytes(entry.size_bytes):>9}  {entry.description}")
    if not entries:
        print("  (empty)")
    else:
        total = format_bytes(sum(entry.size_bytes for entry in entries))
        print(f"{len(entries)} entr{'ies' if len(entries) != 1 else 'y'}, {total}.")
    return 0
