"""Do the features of a network trained from a high starting temperature transfer better? A linear probe.

    python scripts/transfer_study.py --train-pct 10 --epochs 8 --bs 128 --out results/claims/transfer_pct10

The advice: starting with a high softmax temperature makes the net "learn more transferable feature". Each of the
configurations `ce`, `ce T=2`, `ce T=4` and `ce T=8` of `studies/claims.json` trains `fashion_cnn` from scratch with
the sweeps' own `train_run`, on Fashion-MNIST's six clothes only (the `Clothes` branch of its tree: T-shirt/top,
Trouser, Pullover, Dress, Coat, Shirt), `--train-pct` of their training images, stratified and chosen by the seed.
Its body (all but the output layer), frozen, then gives features of the four goods it never saw (Sandal, Sneaker,
Ankle boot, Bag): a logistic regression is fit on `--train-pct` of their training images and scored on their 4,000
official test images. A body that was never trained (`untrained body`) is probed too, as the floor. One row per
configuration and seed in `--out`/sweep.csv, appended as each run ends; a second call trains only what is missing.
"""
import argparse, time
from pathlib import Path
import pandas as pd, torch
from fastai.basics import set_seed
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from fastai_hier.hierarchy import Hierarchy
from fastai_hier.data.fashion_mnist import FASHION_MNIST_TREE, fashion_mnist, fashion_cnn, tensor_dls
from fastai_hier.cli import read_study, train_run, stratified_subset

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ['ce', 'ce T=2', 'ce T=4', 'ce T=8']
UNTRAINED = 'untrained body'
SOURCE, TARGET = 'Clothes', 'Goods' # trained on the first branch of the tree, probed on the second

def split(labels, test, branch, pct, seed):
    "Indices of `branch`'s classes: `pct`% of their training images (stratified, by `seed`), and their test images"
    test = set(test)
    train = [i for i,l in enumerate(labels) if l in branch and i not in test]
    return stratified_subset(labels, train, pct, seed), [i for i,l in enumerate(labels) if l in branch and i in test]

def features(body, x, bs=1024) -> torch.Tensor:
    "The frozen `body`'s features of the normalised images `x`"
    body.eval()
    with torch.no_grad(): return torch.cat([body(x[i:i+bs]) for i in range(0, len(x), bs)]).float()

def probe_accuracy(body, images, labels, train, test, mean, std) -> float:
    "Test accuracy of a logistic regression on `body`'s features, fit on the images at `train`"
    def _x(idx): return (images[idx][:, None].float()/255 - mean)/std # as the body was trained: by its training images
    f = {k: features(body, _x(idx)).numpy() for k,idx in (('train', train), ('test', test))}
    scale = StandardScaler().fit(f['train'])
    clf = LogisticRegression(max_iter=5000).fit(scale.transform(f['train']), [labels[i] for i in train])
    return clf.score(scale.transform(f['test']), [labels[i] for i in test])

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--train-pct', type=float, default=10)
    p.add_argument('--epochs', type=int, default=8)
    p.add_argument('--bs', type=int, default=128)
    p.add_argument('--lr', type=float, default=1e-2)
    p.add_argument('--seeds', default='0,1,2,3,4')
    p.add_argument('--out', type=Path, required=True)
    args = p.parse_args(argv)
    setup = dict(train_pct=args.train_pct, epochs=args.epochs, bs=args.bs, lr=args.lr)
    csv = args.out/'sweep.csv'
    done = pd.read_csv(csv) if csv.exists() else pd.DataFrame(columns=['config', 'seed', *setup])
    for k,v in setup.items():
        if (done[k].astype(float) != v).any():
            raise SystemExit(f"{csv} holds a study with another {k} ({done[k].iloc[0]} instead of {v}): give another "
                             "--out, or the same settings to resume it.")
    images, labels, test = fashion_mnist()
    hier = Hierarchy.from_dict(FASHION_MNIST_TREE[SOURCE], names=('class', 'group'))
    target = [c for g in FASHION_MNIST_TREE[TARGET].values() for c in g]
    cfgs = {c['config']: c for c in read_study(ROOT/'studies'/'claims.json')}
    todo = [(s, c) for s in map(int, args.seeds.split(',')) for c in [*CONFIGS, UNTRAINED]
            if not ((done.config == c) & (done.seed == s)).any()]
    print(f"{len(todo)} runs to do, {len(done)} already in {csv}")
    args.out.mkdir(parents=True, exist_ok=True)
    for s,c in todo:
        start = time.perf_counter()
        (t, v), (pt, pv) = split(labels, test, hier.vocab, args.train_pct, s), split(labels, test, target,
                                                                                     args.train_pct, s)
        # the images and labels of the clothes only: `tensor_dls` refuses labels outside the vocab
        keep = sorted([*t, *v])
        pos = {i: k for k,i in enumerate(keep)}
        dls = tensor_dls(images[keep], [labels[i] for i in keep], hier.vocab, [pos[i] for i in t],
                         [pos[i] for i in v], bs=args.bs)
        x = images[t][:, None].float()/255
        mean, std = x.mean(), x.std()
        if c == UNTRAINED:
            set_seed(s, reproducible=True)
            body, source = fashion_cnn(len(hier.vocab))[:-1], float('nan')
        else:
            learn, _ = train_run(dls, hier, cfgs[c], 'fashion_cnn', False, args.epochs, 0, args.lr, s, quiet=True)
            body, source = learn.model[:-1], float(learn.validate()[1])
        # fold 0, as in the sweeps without folds: the official test set
        row = dict(config=c, seed=s, fold=0, **setup, source_accuracy=source,
                   transfer_accuracy=probe_accuracy(body, images, labels, pt, pv, mean, std),
                   time=time.perf_counter()-start)
        pd.DataFrame([row]).to_csv(csv, mode='a', header=not csv.exists(), index=False)
        print(row, flush=True)

if __name__ == '__main__': main()
