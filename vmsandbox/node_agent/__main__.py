"""``vmsandbox-agent``: the node agent's command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vmsandbox.node_agent.config import ConfigError, load_config
from vmsandbox.node_agent.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vmsandbox-agent", description="Runs this node's VMSandboxes (see the README for every option)."
    )
    parser.add_argument(
        "--config", type=Path, help="YAML file of options; VMSANDBOX_AGENT_* variables override it"
    )
    parser.add_argument(
        "--check-config", action="store_true", help="validate the configuration, print it, exit"
    )
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"vmsandbox-agent: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(config.model_dump_json(by_alias=True, indent=2))
        return 0
    setup_logging(config.node_name, config.log_level)
    from vmsandbox.node_agent.agent import Agent

    try:
        agent = Agent(config)
    except ConfigError as exc:
        print(f"vmsandbox-agent: {exc}", file=sys.stderr)
        return 2
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
