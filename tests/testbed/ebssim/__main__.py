"""`python -m ebssim --store DIR --port N --moto URL` (run from tests/testbed)."""

import argparse
import logging
import sys
from pathlib import Path

from .server import serve


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="ebssim", description="EBS data-plane simulator in front of moto")
    ap.add_argument("--store", required=True, type=Path, help="image store directory (XFS with reflink, ideally)")
    ap.add_argument("--port", type=int, default=0, help="listen port on --host (0: pick one)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--moto", required=True, help="moto server URL, e.g. http://127.0.0.1:5000")
    ap.add_argument("--reflink", choices=("auto", "always", "never"), default="auto",
                    help="cp --reflink mode for snapshot and restore copies")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s.%(msecs)03d %(levelname)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    serve(args.store, args.port, args.moto, host=args.host, reflink=args.reflink)
    return 0


if __name__ == "__main__":
    sys.exit(main())
