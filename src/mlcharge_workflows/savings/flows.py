"""Old import path (before the engine-neutral ``common`` layer); see :data:`mlcharge_workflows.savings.MOVED`."""

from typing import Any

from mlcharge_workflows.savings import moved


def __getattr__(name: str) -> Any:
    return moved(name, __name__)
