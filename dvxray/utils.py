"""Original ``utils.py`` location: ``str2bool`` (yes/true/t/y/1 and no/false/f/n/0), shared via common.cli."""

from common.cli import str2bool

__all__ = ["str2bool"]
