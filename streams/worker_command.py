"""`trovemeter worker`: the same as `faust -A streams.app worker -l info`."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-l", "--loglevel", default="info")
    parser.add_argument("--web-port", type=int, help="overrides TROVEMETER_WEB_PORT")


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    if args.web_port:
        # Through the settings, not Faust's --web-port (which would also rewrite canonical_url).
        os.environ["TROVEMETER_WEB_PORT"] = str(args.web_port)
    from streams.app import app

    # Faust's command line (click) reads sys.argv: give it the `faust worker` arguments.
    sys.argv = ["trovemeter", "worker", "-l", args.loglevel]
    app.main()  # never returns
    return 0
