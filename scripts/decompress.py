#!/usr/bin/env python3
"""Challenge entry point: restore every segment into OUTPUT_DIR under its dataset file name.

Standard library only. The zip holds this script, the archive (data.cvq), the static cvq
decoder compressed with xz (cvq.xz) and, when the archive needs them, the model weights.
"""
import lzma
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def unpack_decoder(binary, places):
    """Write the decoder into the first place where it can run: a temporary directory may be
    mounted noexec, the directory the zip was unpacked into is not."""
    for place in places:
        path = Path(place) / ".cvq-decoder"
        try:
            path.write_bytes(binary)
            path.chmod(0o700)
            subprocess.run([str(path), "--version"], check=True, capture_output=True)
            return path
        except (OSError, subprocess.CalledProcessError) as e:
            print(f"decompress.py: cannot run the decoder from {place}: {e}", file=sys.stderr)
            path.unlink(missing_ok=True)
    sys.exit("decompress.py: nowhere to run the decoder")


def main():
    output_dir = Path(os.environ.get("OUTPUT_DIR", HERE / "decompressed")).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    binary = lzma.decompress((HERE / "cvq.xz").read_bytes())
    with tempfile.TemporaryDirectory() as tmp:
        decoder = unpack_decoder(binary, [tmp, HERE])
        try:
            command = [str(decoder), "decompress", str(HERE / "data.cvq"), "-o", str(output_dir)]
            weights = HERE / "weights.safetensors"
            if weights.exists():
                command += ["--weights", str(weights)]
            status = subprocess.run(command).returncode
        finally:
            decoder.unlink(missing_ok=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
