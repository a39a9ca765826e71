from collections.abc import Sequence

def scan(
    frames: Sequence[bytes], /
) -> tuple[int, list[int], list[tuple[int, int, int, int]], tuple[bytes, ...]]: ...
