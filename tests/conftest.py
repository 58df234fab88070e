"Shared fixtures: fastai's data folder seeded with the PETS sample, so `untar_data(URLs.PETS)` finds it offline"
import os, sys, tempfile
from pathlib import Path
import pytest
sys.path.insert(0, str(Path(__file__).resolve().parents[1]/'scripts'))
from pets_sample import seed_fastai_home

def _seed_fastai_home():
    "Point `FASTAI_HOME` at a folder of links to the sample, unless it already has PETS (as `scripts/test.sh` makes it)"
    home = os.environ.get('FASTAI_HOME')
    if home and (Path(home)/'data'/'oxford-iiit-pet'/'images').exists(): return
    home = tempfile.mkdtemp(prefix='fastai_home_')
    try: seed_fastai_home(home)
    except SystemExit as e: pytest.exit(str(e), returncode=2)
    os.environ['FASTAI_HOME'] = home

_seed_fastai_home()

from fastai.vision.all import *
from fastai_hier.all import *

@pytest.fixture(scope='session')
def dls():
    "The PETS sample at 64 px, labelled with the breed"
    return pets_dls(untar_data(URLs.PETS)/'images', size=64, bs=32)

@pytest.fixture(scope='session')
def hier(dls): return pets_hierarchy(dls.vocab)

def small_learner(dls, hier, **kwargs):
    "A resnet18 from scratch (nothing can be downloaded here) with the hierarchical loss and metrics"
    set_seed(0)
    kwargs.setdefault('loss_func', HierarchicalLoss(hier, level_weights={'breed': 0.7, 'species': 0.3}))
    return vision_learner(dls, resnet18, pretrained=False,
                          metrics=[accuracy, LevelAccuracy(hier, 'species'), MistakeSeverity(hier)], **kwargs)
