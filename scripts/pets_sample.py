"""Seed a fastai home whose `data/oxford-iiit-pet/images` holds the PETS sample (10 images per breed), so that
`untar_data(URLs.PETS)` needs no download.

    python scripts/pets_sample.py HOME

The images are linked one by one into a folder of HOME's own, so that nothing (`lr_find`'s `models/`, say) is ever
written into the sample. They come from `../shared/data/oxford-iiit-pet/images` beside the repository; where that is
missing, from fastai's own PETS download (10 per breed, `pets_files(per_breed=10)`). Where neither can be had, one line
says what is missing, and the exit status is 1.
"""
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2]/'shared'/'data'/'oxford-iiit-pet'/'images'

def _images():
    "The sample's images: the shared ones, else 10 per breed of a PETS download"
    if SHARED.is_dir(): return sorted(SHARED.glob('*.jpg'))
    from fastai_hier.data.pets import pets_files, pets_path
    try: return list(pets_files(pets_path(), per_breed=10))
    except ConnectionError as e:
        raise SystemExit(f"The PETS sample is missing ({SHARED} does not exist), and {e} Put Oxford-IIIT Pet images "
                         f"in {SHARED} (10 per breed suffice), or set FASTAI_HOME to a fastai home with "
                         "data/oxford-iiit-pet/images.") from None

def seed_fastai_home(home) -> Path:
    "Link the sample's images into `home/data/oxford-iiit-pet/images`"
    dest = Path(home)/'data'/'oxford-iiit-pet'/'images'
    dest.mkdir(parents=True, exist_ok=True)
    for f in _images():
        if not (dest/f.name).exists(): (dest/f.name).symlink_to(f)
    return dest

if __name__ == '__main__': seed_fastai_home(sys.argv[1])
