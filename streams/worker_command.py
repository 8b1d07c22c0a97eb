"""`trovemeter worker`: the same as `faust -A streams.app worker -l info`."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-l", "--loglevel", default="info")
    parser.add_argument("--web-port", type=int, help="overrides TROVEMETER_WEB_PORT")


def run(args: argparse.Namespace) -> int:
    import os

    if args.web_port:
        os.environ["TROVEMETER_WEB_PORT"] = str(args.web_port)
    from streams.app import app

    app.main(["worker", "-l", args.loglevel])
    return 0
