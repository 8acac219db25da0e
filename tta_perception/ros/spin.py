"""What every node shares: declaring read-only parameters, publishing a status, the ``main`` that
spins one node until shutdown (a refusal, ``runtime.errors.ConfigError``, is one line and exit 2),
and ``-h``/``--help``: the node's parameters, topics and services, printed without rclpy.init."""
from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

# ConfigError: the nodes' refusals (one home: runtime.errors), imported from here by the nodes
from ..runtime.errors import ConfigError, one_line  # noqa: F401


def ignore_further_signals() -> None:
    """Shutdown has begun (Ctrl-C, launch, timeout): further SIGINT/SIGTERM (a second Ctrl-C, timeout's
    signal on top of the user's) must not interrupt the clean-up halfway, which would print a
    traceback and leave threads for the C++ runtime to abort. Clean-up waits are bounded; SIGKILL
    still ends a process that hangs."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def spin_node(make_node: Callable[[], Any], name: str, args: Optional[list[str]] = None,
              finish: Callable[[Any], None] = lambda node: None,
              help_text: Optional[Callable[[], str]] = None) -> int:
    """``rclpy.init``, build and spin the node, and on shutdown (Ctrl-C, launch) call ``finish(node)``.

    A ``ConfigError`` while building is one line on stderr and exit status 2 (no traceback wall).
    ``-h``/``--help`` among the user's own arguments prints ``help_text()`` and returns 0 before
    rclpy is initialised (no context, no node, no DDS participant).
    """
    if help_text is not None and help_requested(sys.argv if args is None else args):
        return print_help(help_text())
    import rclpy
    from rclpy.executors import ExternalShutdownException

    refused = init_rclpy(name, args)
    if refused is not None:
        return refused
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
        ignore_further_signals()
        if node is not None:
            finish(node)
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


def init_rclpy(name: str, args: Optional[list[str]] = None) -> Optional[int]:
    """``rclpy.init(args=args)``; None when it started, else 2 after one line on stderr: arguments
    that rcl cannot parse (``--ros-args -p bad``) would otherwise end in a traceback."""
    import rclpy
    from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

    try:
        rclpy.init(args=args)
    except _rclpy.RCLError as err:
        # "failed to initialize rcl: Couldn't parse ... '-p bad'. Error: Expected lexeme ..., at <file>"
        reason = one_line(err).split(". Error:")[0].split(", at /")[0]
        print(f"[{name}] bad arguments: {reason} (see {name} --help)", file=sys.stderr)
        return 2
    return None


def declare_parameters(node: Any, table: dict[str, tuple[Any, str, dict[str, Any]]]) -> dict[str, Any]:
    """Declare ``name -> (default, description, extra)`` read-only with their ranges
    (``extra['int_range'|'float_range'] = (lo, hi)``) and return the values in force; a parameter
    declared by type only and not set is left out (the caller decides what that means)."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
    from rclpy.exceptions import ParameterUninitializedException

    for name, (default, desc, extra) in table.items():
        d = ParameterDescriptor(name=name, description=desc, read_only=True)
        if "int_range" in extra:
            lo, hi = extra["int_range"]
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
        if "float_range" in extra:
            lo, hi = extra["float_range"]
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
        node.declare_parameter(name, default, d)
    values = {}
    for name in table:
        try:
            values[name] = node.get_parameter(name).value
        except ParameterUninitializedException:
            pass
    return values


def publish_status(node: Any, publisher: Any, status: Any) -> None:
    """Publish one ``DiagnosticStatus`` as a stamped ``DiagnosticArray`` on ``/diagnostics``."""
    from diagnostic_msgs.msg import DiagnosticArray

    arr = DiagnosticArray()
    arr.header.stamp = node.get_clock().now().to_msg()
    arr.status = [status]
    publisher.publish(arr)


# ---------------------------------------------------------------------------------------------- help
HELP_FLAGS = ("-h", "--help")


def user_args(argv: Sequence[str]) -> list[str]:
    """The user's own arguments of ``argv`` (``argv[0]``, the program, left out): everything outside
    ``--ros-args ... [--]`` blocks, as rcl splits them (so ``-p name:=--help`` is a ROS value)."""
    mine, in_ros = [], False
    for arg in list(argv)[1:]:
        if arg == "--ros-args":
            in_ros = True
        elif in_ros and arg == "--":
            in_ros = False
        elif not in_ros:
            mine.append(arg)
    return mine


def help_requested(argv: Sequence[str]) -> bool:
    """``-h`` or ``--help`` among the user's own arguments of ``argv`` (see ``user_args``)."""
    return any(arg in HELP_FLAGS for arg in user_args(argv))


@dataclass(frozen=True)
class ParamHelp:
    """One parameter as ``--help`` shows it."""
    name: str
    type: str  # str, bool, int, float, int_array, str_array (as runtime.params.Spec)
    default: Any  # None: unset (a typed parameter without a default)
    when: str  # when a new value takes effect, e.g. "live" or "startup, read-only"
    description: str
    allowed: str = ""  # "One of: a, b." / "Range: lo..hi."


def _is_type_only(default: Any) -> bool:
    """A parameter declared by type only (``rclpy.parameter.Parameter.Type.STRING_ARRAY``): unset."""
    import enum

    return isinstance(default, enum.Enum)


def _type_of(default: Any) -> str:
    if _is_type_only(default):
        return {"STRING": "str", "BOOL": "bool", "INTEGER": "int", "DOUBLE": "float", "INTEGER_ARRAY": "int_array",
                "STRING_ARRAY": "str_array"}.get(default.name, default.name.lower())
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    if isinstance(default, str):
        return "str"
    if isinstance(default, (list, tuple)):
        return "int_array" if default and all(isinstance(v, int) for v in default) else "str_array"
    return type(default).__name__


def table_help(table: dict[str, tuple[Any, str, dict[str, Any]]]) -> list[ParamHelp]:
    """The rows of a ``declare_parameters`` table (all read-only, read at start-up)."""
    rows = []
    for name, (default, desc, extra) in table.items():
        allowed = ""
        for key in ("int_range", "float_range"):
            if key in extra:
                lo, hi = extra[key]
                allowed = f"Range: {lo}..{hi}."
        rows.append(ParamHelp(name, _type_of(default), None if _is_type_only(default) else default,
                              "startup, read-only",
                              desc, allowed))
    return rows


def _value(v: Any) -> str:
    if v is None:
        return "unset"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, str):
        return repr(v)
    return str(v)


def format_help(executable: str, description: str, params: Iterable[ParamHelp], *, when_legend: str = "",
                sections: Sequence[tuple[str, Sequence[str]]] = (), width: int = 100) -> str:
    """``--help`` of a node: usage, description, every parameter (type, default, when it takes effect,
    description), then ``sections`` (title, lines): topics and services."""
    lines = [f"usage: ros2 run tta_perception {executable} [--ros-args -p name:=value ... -r from:=to]",
             f"       {executable} [--ros-args --params-file FILE ...]", ""]
    lines += textwrap.wrap(" ".join(description.split()), width, break_on_hyphens=False)
    lines += ["", "parameters (-p name:=value, or a --params-file):"]
    if when_legend:
        lines += textwrap.wrap(" ".join(when_legend.split()), width, initial_indent="  ",
                               subsequent_indent="  ", break_on_hyphens=False)
    for p in params:
        lines.append(f"  {p.name} ({p.type}, default {_value(p.default)}) [{p.when}]")
        text = p.description + (" " + p.allowed if p.allowed else "")
        lines += textwrap.wrap(" ".join(text.split()), width, initial_indent="      ",
                               subsequent_indent="      ", break_on_hyphens=False)
    for title, items in sections:
        lines += ["", f"{title}:"] + [f"  {item}" for item in items]
    return "\n".join(lines)


def describe(doc: Optional[str]) -> str:
    """A module docstring's first paragraph, without reST markup: a node's description for --help."""
    first = (doc or "").strip().split("\n\n")[0]
    return " ".join(first.replace("``", "").split())


def print_help(text: str) -> int:
    """Print ``text`` on stdout; 0 (the exit status of ``--help``), also when a pager or ``head``
    closed the pipe early (no BrokenPipeError traceback)."""
    import os

    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Python's advice: point stdout at devnull so the flush at exit does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
