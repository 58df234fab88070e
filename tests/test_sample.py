"The PETS sample is read, never written: fastai's data folder holds links to its images in a folder of its own"
import os, pytest
from pathlib import Path
from fastai.vision.all import untar_data, URLs
from pets_sample import SHARED

def test_data_folder_is_not_the_sample():
    images = untar_data(URLs.PETS)/'images'
    assert not images.is_symlink() and images.resolve() != SHARED.resolve(), images
    assert Path(os.environ['FASTAI_HOME']) in images.parents
    assert all(f.is_symlink() for f in images.glob('*.jpg'))

@pytest.mark.skipif(not SHARED.is_dir(), reason='the sample was built from a PETS download, not linked from ../shared')
def test_nothing_written_into_the_sample():
    assert sorted(p.suffix for p in SHARED.iterdir() if p.suffix != '.jpg') == [], [p for p in SHARED.iterdir()
                                                                                    if p.suffix != '.jpg']
