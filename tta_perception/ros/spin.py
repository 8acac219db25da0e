"""What every node shares: the refusal error and the ``main`` that spins one node until shutdown."""
from __future__ import annotations

import sys
from typing import Any, Callable, Optional


class ConfigError(ValueError):
    """A configuration a node refuses; the message is one line meant for the user (names the parameter)."""


def spin_node(make_node: Callable[[], Any], name: str, args: Optional[list[str]] = None,
              finish: Callable[[Any], None] = lambda node: None) -> int:
    """``rclpy.init``, build and spin the node, and on shutdown (Ctrl-C, launch) call ``finish(node)``.

    A ``ConfigError`` while building is one line on stderr and exit status 2 (no traceback wall).
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=args)
    node = None
    try:
        node = make_node()
        rclpy.spin(node)
    except ConfigError as err:
        print(f"[{name}] refused: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            finish(node)
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
