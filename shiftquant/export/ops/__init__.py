"""The op set of a bundle: each op defined once, in the module of its family.

``get(name)`` gives an op's :class:`~.schema.OpDef`; ``REGISTRY`` holds them all. Adding an op is
one definition in its family's module (or a new module imported here) plus its test.
"""
from . import attention, conv, elementwise, io, movement, norm, pool, shift  # noqa: F401  (they register)
from .schema import REGISTRY, Field, OpDef, get

__all__ = ["REGISTRY", "Field", "OpDef", "get"]
