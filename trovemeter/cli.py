"""The `trovemeter` command. Each subcommand lives in its own module exposing
``add_arguments(parser)`` and ``run(args) -> int``; modules are imported only when used,
so `trovemeter topics` does not pay for Faust's import time."""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "topics": ("trovemeter.topics_command", "create trovemeter's Kafka topics"),
    "schemas": ("trovemeter.schemas_command", "print or check the Avro schemas"),
    "simulate": ("trovemeter.simulate_command", "publish simulated Trove notifications to RabbitMQ"),
    "shovel": ("connectors.shovel_command", "RabbitMQ notifications -> Kafka (Avro)"),
    "worker": ("streams.worker_command", "run the Faust worker (pairing, state, usage)"),
    "bill": ("trovemeter.bill_command", "price trove.usage into invoice lines (CSV/JSON)"),
    "tail": ("trovemeter.tail_command", "print a topic's records decoded, as JSON lines"),
    "demo": ("trovemeter.demo_command", "shovel + worker + simulator, live view, expected-vs-actual summary"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="trovemeter", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = argv[0] if argv and not argv[0].startswith("-") else None
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(sub_parser)
            sub_parser.set_defaults(handler=module.run)
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
