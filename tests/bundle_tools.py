"""Take a bundle archive apart and put it back together (for tests that alter bundles)."""
import io
import zipfile


def members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def rezip(parts: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for n, blob in parts.items():
            zf.writestr(n, blob)
    return buf.getvalue()
