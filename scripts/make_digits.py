"""Regenerate src/mlplab/data/digits.npz, the digits data set that ships inside mlplab.

    pip install scikit-learn && python scripts/make_digits.py [--check]

The arrays are scikit-learn's ``load_digits()`` (the test set ``optdigits.tes`` of the UCI
"Optical Recognition of Handwritten Digits" data, E. Alpaydin and C. Kaynak, 1998), stored
losslessly as uint8: ``pixels`` (1797, 64) with values 0..16 and ``labels`` (1797,) with 0..9.
Licences: the data is the UCI repository's, under CC BY 4.0 (doi:10.24432/C50P49);
scikit-learn, which redistributes it, is BSD-3-Clause. See src/mlplab/data/DIGITS_LICENSE.txt.

The zip members get a fixed timestamp, so running the script again on the same scikit-learn
data writes the same bytes (a regenerated file that differs is a real change of data).
``--check`` writes nothing and exits 1 if the shipped arrays differ from scikit-learn's (the
arrays, not the bytes: another zlib may compress the same arrays differently).
"""

from __future__ import annotations

import argparse
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

TARGET = Path(__file__).resolve().parent.parent / "src" / "mlplab" / "data" / "digits.npz"


def arrays_from_sklearn() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = bunch.data.astype(np.uint8)
    labels = bunch.target.astype(np.uint8)
    # uint8 must hold scikit-learn's values exactly, or the shipped file would not be its data.
    if not (np.array_equal(pixels, bunch.data) and np.array_equal(labels, bunch.target)):
        raise SystemExit("scikit-learn's digits are not integers 0..255: refusing to write a lossy copy")
    if pixels.shape != (1797, 64) or labels.shape != (1797,) or pixels.max() != 16 or labels.max() != 9:
        raise SystemExit(f"unexpected digits data: pixels {pixels.shape}, labels {labels.shape}")
    return {"pixels": np.ascontiguousarray(pixels), "labels": np.ascontiguousarray(labels)}


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A compressed .npz that np.load reads, with fixed member timestamps (np.savez_compressed
    stamps the current time, so its output changes on every run)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1998, 7, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue(), compresslevel=9)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the shipped file, write nothing")
    parser.add_argument("--out", type=Path, default=TARGET, help=f"where to write (default {TARGET})")
    args = parser.parse_args(argv)
    arrays = arrays_from_sklearn()
    if args.check:
        same = args.out.is_file()
        if same:
            with np.load(args.out, allow_pickle=False) as shipped:
                same = sorted(shipped.files) == sorted(arrays) and all(
                    shipped[k].dtype == v.dtype and np.array_equal(shipped[k], v) for k, v in arrays.items())
        print(f"{args.out}: {'up to date' if same else 'DIFFERS from scikit-learn digits'}")
        return 0 if same else 1
    data = npz_bytes(arrays)
    partial = args.out.with_name(args.out.name + ".partial")
    partial.write_bytes(data)
    partial.replace(args.out)
    print(f"wrote {args.out} ({len(data):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
