"""Compute the frozen EfficientNet-Lite0 features of all of Tiny ImageNet once (resumable), for the deep-taxonomy study.

    nice -n 10 python scripts/extract_tiny_imagenet.py --out /work/features/tiny_imagenet [--data DIR] [--threads 1]

Writes `OUT/train` and `OUT/valid` (`load_features` reads them): per image, the body's output average-pooled (1280,
float32), max-pooled (1280, float32), and the inputs of its last two stages, `model.blocks.5` (112x8x8) and
`model.blocks.6` (192x4x4), in float16; at 128 px, normalised as the weights expect (mean = std = 0.5). Killed, it
loses at most the chunk it was computing: run the same command again to finish.
"""
import argparse, torch
from pathlib import Path
from fastai.vision.all import vision_learner
from fastai_hier.data.backbone import lite0_pretrained
from fastai_hier.data.tiny_imagenet import tiny_imagenet_path, tiny_imagenet_dls, extract_features

BLOCKS = ['model.blocks.5', 'model.blocks.6']

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', type=Path, required=True, help='folder of the features')
    p.add_argument('--data', type=Path, default=None, help="where to unpack the images; default: fastai's data folder")
    p.add_argument('--archive', type=Path, default=None, help='the archive; default: tiny_imagenet_archive()')
    p.add_argument('--size', type=int, default=128)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--chunk', type=int, default=2048)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    dls = tiny_imagenet_dls(tiny_imagenet_path(args.archive, args.data), size=args.size, bs=64, num_workers=0)
    body = vision_learner(dls, **lite0_pretrained()).model[0]
    for split,dl in (('valid', dls.valid), ('train', dls.train)):
        extract_features(body, dl, args.out/split, blocks=BLOCKS, pool=['avg', 'max'], chunk=args.chunk,
                         log=args.out/'extract.log')
