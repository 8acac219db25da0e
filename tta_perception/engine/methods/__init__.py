"""Built-in methods, one file each; importing this package registers them."""
from . import cotta, dplot, eata, norm, rmt, sar, source, tent  # noqa: F401
