"""The ``tta-perception`` command line: one module per subcommand, see ``main.COMMANDS``."""
