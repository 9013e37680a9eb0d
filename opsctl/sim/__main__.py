"""`python -m opsctl.sim --model M --port P`: the simulator without the rest of the CLI.

The local deployer and e2e tests start pods this way; flags are those of `opsctl sim serve`.
"""

import typer

from opsctl.commands.sim import serve


def main() -> None:
    typer.run(serve)


if __name__ == "__main__":
    main()
