"""Whether a file can be a Keras weights file, from its name and first bytes (no TensorFlow)."""
import json
import os

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def weights_file_problem(path: str) -> str | None:
    """Why an existing file cannot be a weights file for ``Model.load_weights``, or None: its
    name must end as Keras requires (.weights.h5, .h5, .hdf5, .keras, .weights.json) and its
    first bytes must be those of that format (HDF5 signature, at 0 or a power of two from
    512; zip for .keras; a JSON object for .weights.json). Only the name and a few bytes are
    read: a file of the right format for another architecture fails when it is loaded."""
    name = os.path.basename(path)
    try:
        with open(path, "rb") as fh:
            if name.endswith(".keras"):
                return None if fh.read(4) == b"PK\x03\x04" else "not a zip archive"
            if name.endswith(".weights.json"):
                try:
                    return None if isinstance(json.load(fh), dict) else "not a JSON object"
                except ValueError:
                    return "not JSON"
            if not name.endswith((".h5", ".hdf5")):
                return "its name ends in none of .weights.h5, .h5, .hdf5, .keras, .weights.json"
            size, offset = os.fstat(fh.fileno()).st_size, 0
            while offset + len(HDF5_SIGNATURE) <= size:
                fh.seek(offset)
                if fh.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                    return None
                offset = 512 if offset == 0 else offset * 2
            return "no HDF5 signature"
    except OSError as err:
        return f"cannot be read: {err.strerror or err}"
