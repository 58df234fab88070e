"`Hierarchy`, a tree over your class names, with its constructors (`from_parents`, `from_df`, `from_dict`, `from_func`)"
from .tree import *
from . import build # the constructors, patched onto `Hierarchy`
__all__ = ['Hierarchy']
