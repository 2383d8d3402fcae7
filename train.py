"""Hydra entry point: ``python train.py experiment=quickstart`` (see conf/ and README.md)."""
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parent / "conf"), config_name="config")
def main(cfg: DictConfig) -> None:
    from shiftquant.errors import ShiftQuantError
    from shiftquant.train.run import report, train

    try:
        results = train(cfg)
    except ShiftQuantError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(report(results))


if __name__ == "__main__":
    main()
