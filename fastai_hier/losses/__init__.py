"The losses: `HierarchicalLoss`, `HXELoss` and `SoftLabelsLoss` (Bertinetto et al.), `SmoothTopKLoss`"
from . import base, hierarchical, tree, topk, frame
from .base import *
from .hierarchical import *
from .tree import *
from .topk import *
from .frame import *
__all__ = base.__all__ + hierarchical.__all__ + tree.__all__ + topk.__all__ + frame.__all__

def __getattr__(name): # the names of the flat `losses.py` before 0.2, which old exported learners pickle
    from ..renames import old_name
    return old_name(name, __name__)
