"""Print the requirements of the server image: Tripwire's dependencies and server extras, no torch.

The scheduler and the dashboard never import torch (only the collector does, inside
trainers), so the image skips its few hundred megabytes. Used by the Dockerfile::

    python scripts/server_requirements.py > requirements.txt            # no torch
    python scripts/server_requirements.py --with-torch > requirements.txt
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

EXTRAS = ("postgres", "alerts", "dashboard")
"""The optional extras a server needs: the PostgreSQL driver, the scheduler, the dashboard."""

TRAINER_ONLY = {"torch"}
"""Dependencies only the in-trainer collector imports."""


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()


def server_requirements(pyproject: Path, *, with_torch: bool = False) -> list[str]:
    """The core dependencies plus the server extras, from ``pyproject.toml``."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    wanted = list(project["dependencies"])
    for extra in EXTRAS:
        wanted += project["optional-dependencies"][extra]
    skip = set() if with_torch else TRAINER_ONLY
    return [r for r in dict.fromkeys(wanted) if _name(r) not in skip]


def main(argv: list[str]) -> None:
    root = Path(__file__).resolve().parent.parent
    print(
        "\n".join(server_requirements(root / "pyproject.toml", with_torch="--with-torch" in argv))
    )


if __name__ == "__main__":
    main(sys.argv[1:])
