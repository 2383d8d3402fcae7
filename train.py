"""Hydra entry point: ``python train.py experiment=quickstart`` (see conf/ and README.md)."""
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONF = Path(__file__).resolve().parent / "conf"


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")
def main(cfg: DictConfig) -> None:
    from shiftquant.errors import ShiftQuantError
    from shiftquant.train.console import append_to_log_files, discard_unused_run_dir, route_lightning_logs
    from shiftquant.train.run import report, train

    route_lightning_logs()
    try:
        results = train(cfg)
    except ShiftQuantError as exc:
        print(f"error: {exc}", file=sys.stderr)
        discard_unused_run_dir(Path(cfg.paths.output_dir))
        sys.exit(2)
    table = report(results)
    print(table)
    append_to_log_files(table)


def check_overrides() -> None:
    """A mistyped override key fails here with a suggestion, before Hydra's own advice."""
    from shiftquant.errors import ShiftQuantError
    from shiftquant.train.config import check_command_line

    try:
        check_command_line(sys.argv[1:], CONF)
    except ShiftQuantError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def cli() -> None:
    check_overrides()
    main()


if __name__ == "__main__":
    cli()
