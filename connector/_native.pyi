from collections.abc import Sequence

# buffers: a bytearray per column buffer; a validity bitmap is None when every row is present.
def scan(
    frames: Sequence[bytes], /
) -> tuple[int, list[int], list[tuple[int, int, int, int]], tuple[bytearray | None, ...]]: ...
