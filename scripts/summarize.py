"""Write summary.csv, summary.md and summary.png for a finished sweep.

    python scripts/summarize.py outputs/train/multiruns/<time>
"""

import argparse
import logging

from rnnlab.errors import report_errors
from rnnlab.summarize import summarize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a multirun directory holding one sub-directory per job")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with report_errors():  # one line and exit status 1 for a directory that is not a sweep
        summarize(args.sweep_dir)


if __name__ == "__main__":
    main()
