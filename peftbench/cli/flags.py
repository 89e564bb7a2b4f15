"""Flag values the commands take as text: comma-separated lists, seeds, durations, shards, jobs. A bad value is a
UsageError that names the flag and shows a valid one."""

from __future__ import annotations

import re

from peftbench.errors import UsageError

SEED_LIMIT = 2**32   # seeds are 0 <= s < 2**32: what numpy's seeding (through lm-eval's scoring) accepts


def comma_list(value: str, flag: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise UsageError(f"{flag} is empty; give a comma-separated list.")
    return items


def whole_numbers(value: str, flag: str) -> list[int]:
    out = []
    for item in comma_list(value, flag):
        try:
            out.append(int(item))
        except ValueError:
            raise UsageError(f"{flag} {value!r}: {item!r} is not a whole number.") from None
    return out


def seeds(value: str) -> list[int]:
    try:
        out = [int(v) for v in comma_list(value, "--seeds")]
    except ValueError:
        raise UsageError(f"--seeds {value!r}: seeds must be integers, comma-separated (e.g. --seeds 0,1,2).") from None
    if len(set(out)) != len(out):
        raise UsageError(f"--seeds {value!r} repeats a seed.")
    bad = [s for s in out if not 0 <= s < SEED_LIMIT]
    if bad:
        raise UsageError(f"--seeds {value!r}: seed {bad[0]} is out of range; a seed is a whole number from 0 to "
                         f"{SEED_LIMIT - 1} (2**32 - 1: the range numpy, which scoring seeds, accepts), "
                         "e.g. --seeds 0,1,2.")
    return out


def duration(value: str, flag: str) -> float:
    """Seconds from '540', '540s', '9m', '1h30m' or '1.5h'."""
    text = value.strip().lower()
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", text)
    if not text or parts is None or not any(parts.groups()):
        raise UsageError(f"{flag} {value!r}: not a duration; give seconds (540) or hours, minutes and seconds "
                         "(9m, 1h30m, 1.5h).")
    h, m, s = (float(g) if g else 0.0 for g in parts.groups())
    seconds = h * 3600 + m * 60 + s
    if seconds <= 0:
        raise UsageError(f"{flag} {value!r}: must be longer than 0 s.")
    return seconds


def shard(value: str) -> tuple[int, int]:
    """'K/N' (1-based, as people count: 1/2 and 2/2) -> (K - 1, N)."""
    try:
        k, n = (int(v) for v in value.split("/"))
    except ValueError:
        raise UsageError(f"--shard {value!r}: give K/N, this process's share of N (e.g. --shard 1/2 in one process "
                         "and --shard 2/2 in another).") from None
    if n < 1 or not 1 <= k <= n:
        raise UsageError(f"--shard {value!r}: K must be 1 to N (N >= 1).")
    return k - 1, n


def says_none(value: str) -> bool:
    """Whether a flag that takes a list or 'none' (--retention, --stack) was given 'none' (or nothing)."""
    return value.strip().lower() in ("none", "")


def jobs(value: str) -> int | str:
    """'auto' or a whole number of cells at once (>= 1)."""
    text = value.strip().lower()
    if text == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise UsageError(f"--jobs {value!r}: give a number of cells to run at once (1 or more, e.g. --jobs 4), "
                         "or auto.")
    return n
