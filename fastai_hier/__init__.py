__version__ = "0.1.0"

import warnings
# fastai's layers.py calls `torch.jit.script` when imported, which torch 2.14 deprecates: not ours to fix, and every command printed it
warnings.filterwarnings('ignore', message=r'`torch.jit.script` is deprecated', category=FutureWarning)
