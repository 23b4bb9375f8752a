#!/usr/bin/env python3
"""Challenge entry point: restore every segment into OUTPUT_DIR under its dataset file name.

Standard library only. The zip holds this script, the archive (data.cvq), the static cvq
decoder compressed with xz (cvq.xz) and, when the archive needs them, the model weights.
"""
import lzma
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main():
    output_dir = Path(os.environ.get("OUTPUT_DIR", HERE / "decompressed"))
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        decoder = Path(tmp) / "cvq"
        decoder.write_bytes(lzma.decompress((HERE / "cvq.xz").read_bytes()))
        decoder.chmod(stat.S_IRWXU)
        command = [str(decoder), "decompress", str(HERE / "data.cvq"), "-o", str(output_dir)]
        weights = HERE / "weights.safetensors"
        if weights.exists():
            command += ["--weights", str(weights)]
        sys.exit(subprocess.run(command).returncode)


if __name__ == "__main__":
    main()
