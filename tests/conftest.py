"Shared fixtures: fastai's data folder seeded with the PETS sample, so `untar_data(URLs.PETS)` finds it offline"
import os, tempfile
from pathlib import Path
import pytest

SAMPLE = Path(__file__).resolve().parents[1].parent/'shared'/'data'/'oxford-iiit-pet'

def _seed_fastai_home():
    "Point `FASTAI_HOME` at a folder whose `data/oxford-iiit-pet` is the sample, unless it already has PETS"
    home = os.environ.get('FASTAI_HOME')
    if home and (Path(home)/'data'/'oxford-iiit-pet'/'images').exists(): return
    if not (SAMPLE/'images').exists(): pytest.exit(f"The PETS sample is missing: expected {SAMPLE}/images beside the repository.", returncode=2)
    home = Path(tempfile.mkdtemp(prefix='fastai_home_'))
    (home/'data').mkdir()
    (home/'data'/'oxford-iiit-pet').symlink_to(SAMPLE)
    os.environ['FASTAI_HOME'] = str(home)

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
    kwargs.setdefault('loss_func', HierarchicalLoss(hier, weights={'breed': 0.7, 'species': 0.3}))
    return vision_learner(dls, resnet18, pretrained=False,
                          metrics=[accuracy, LevelAccuracy(hier, 'species'), MistakeSeverity(hier)], **kwargs)
