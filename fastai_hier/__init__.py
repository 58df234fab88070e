__version__ = "0.2.0"

import warnings
# fastai's layers.py calls `torch.jit.script` when imported, which torch 2.14 deprecates:
# not ours to fix, and every command printed it
warnings.filterwarnings('ignore', message=r'`torch.jit.script` is deprecated', category=FutureWarning)

from .renames import install_old_modules
install_old_modules() # the module names before 0.2 (`fastai_hier.hxe`...) still import: old exported learners load
