"""``python -m apb.train --config-json cfg.json``: one training run, also under torchrun.

The JSON file holds :class:`apb.train.TrainConfig` fields (missing ones take their
defaults). Rank 0 prints the :class:`apb.train.TrainResult` as JSON on the last line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .config import TrainConfig
from .trainer import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m apb.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config-json", required=True, metavar="FILE",
                        help="JSON object of TrainConfig fields")
    parser.add_argument("--out-dir", help="override the config's out_dir")
    parser.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                        help="continue from out_dir/last.pt, or from CHECKPOINT")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"[rank {rank}] %(message)s" if "RANK" in os.environ else "%(message)s",
    )
    try:
        with open(args.config_json, encoding="utf-8") as f:
            values = json.load(f)
        if args.out_dir is not None:
            values["out_dir"] = args.out_dir
        if args.resume is not None:
            values["resume"] = args.resume
        config = TrainConfig.from_dict(values)
        result = train(config)
    except (OSError, ValueError, TypeError) as err:  # incl. JSON, config, checkpoint errors
        print(f"error: {err}", file=sys.stderr)
        return 2
    if rank == 0:
        print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
