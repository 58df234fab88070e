"""The deep-taxonomy study: Tiny ImageNet in WordNet's tree, every loss and decode of the package.

    python scripts/tiny_imagenet_study.py --features FEATURES --out results/tiny_imagenet

(FEATURES: the folder `scripts/extract_tiny_imagenet.py --out FEATURES` filled.) It ends by writing the report,
`scripts/tiny_imagenet_report.py --out results/tiny_imagenet`, which also runs alone (it trains nothing).

Heads are trained by a fastai `Learner` on the frozen EfficientNet-Lite0 features that
`scripts/extract_tiny_imagenet.py` keeps on disk (the body's output, average-pooled), and in a second regime the body's
last stage (`blocks.6`, `conv_head`, `bn2`, pooling; from the ImageNet weights) is trained with a head on the cached
inputs of `blocks.6`. The configurations are in `studies/tiny_imagenet.json`. Phases, each resumable (a killed study
loses at most the training it was in; run the same command again):

1. select: every grid point of every method, trained on the training images less a stratified held-out share
   (`holdout_pct`, 50 a class), scored on the held-out images after every epoch -> `heldout.csv`;
2. choose: the settings (epochs, and the grid point of the methods marked 'best') from `heldout.csv` ALONE ->
   `chosen.json`. The rule: the least held-out hd@5 of the CRM ranking among the settings whose held-out top-1 (argmax)
   is within `top1_slack` of cross-entropy's best; where none is, the best top-1;
3. final: each chosen configuration trained on all the training images with every seed, scored once on the 10,000
   validation images under each decode (argmax, CRM, the top-1-preserving CRM ranking) -> `sweep.csv`;
4. stage: the same for the last-stage regime (cross-entropy, the best loss of step 2, the frame head), its epochs chosen
   on the same held-out images -> `stage_heldout.csv`, `chosen.json`, rows of `sweep.csv` with regime 'stage'.

`--classes K` runs the study on the first K classes (sorted wnids) only, with all their images: what the features
extracted so far allow while the extraction runs (its chunks hold the training images in class order). Such a run is a
subset study, and its folder says so (`setup.json`); the report names it.
"""
import argparse, json, time, hashlib, copy
from pathlib import Path
import numpy as np, pandas as pd, torch, timm
from fastai.basics import *
from fastai_hier.all import *
from fastai_hier.cli.study import config, build_config, stratified_subset
from fastai_hier.data.backbone import LITE0_ARCH, lite0_weights

# columns of the literature's table and the package's, per decode; the calibration's are per trained model
LIT = ['top1_accuracy', 'mistake_severity', 'hd@1', 'hd@5', 'hd@20']

# ---------------------------------------------------------------------------------------------------------------------
# the features

def load_split(folder:Path, names:list, n_classes:int=None) -> dict:
    ("The features `names` and targets of the images of the first `n_classes` classes in the chunks of `folder` that "
     "exist (`extract_features` writes them in class order), refusing a class whose images are not all there")
    folder = Path(folder)
    meta = json.loads((folder/'meta.json').read_text())
    n_chunks = (meta['n'] + meta['chunk'] - 1)//meta['chunk']
    have = 0
    while have < n_chunks and (folder/f'chunk_{have:05d}.pt').exists(): have += 1
    if not have:
        raise FileNotFoundError(f"{folder} has no chunk yet: wait for scripts/extract_tiny_imagenet.py, or give fewer "
                                "--classes once the first chunks exist.")
    bad = [n for n in names if n not in meta['features']]
    if bad:
        raise ValueError(f"{folder} has no feature {bad[0]!r}: it has {meta['features']}.")
    chunks = [torch.load(folder/f'chunk_{k:05d}.pt', mmap=True, weights_only=True) for k in range(have)]
    y = torch.cat([c['y'] for c in chunks])
    if (y[1:] < y[:-1]).any():
        raise ValueError(f"The targets in {folder} are not in class order, so the chunks present cannot be told to "
                         "hold whole classes: extract all of them.")
    # the last class present may be cut at the end of the last chunk present
    complete = len(meta['vocab']) if have == n_chunks else int(y[-1])
    n_classes = ifnone(n_classes, len(meta['vocab']))
    if n_classes > complete:
        raise FileNotFoundError(f"{folder} holds {have} of its {n_chunks} chunks: the first {complete} classes are "
                                f"complete, not {n_classes}. Wait for the extraction, or give --classes {complete} (a "
                                "subset study).")
    keep = int((y < n_classes).sum())
    return dict(x={n:torch.cat([c[n][:keep] for c in chunks])[:keep] for n in names}, y=y[:keep].clone(), meta=meta,
                vocab=meta['vocab'][:n_classes])

class FeatureSet:
    ("The rows `idx` of the feature tensor `x` with their class indices `y`, not copied, and the class names as "
     "`vocab` (what `dls.vocab` and `dls.c` read)")
    def __init__(self, x:Tensor, y:Tensor, idx, vocab:list):
        self.x,self.y,self.idx,self.vocab,self.c = x,y,tensor(list(idx)).long(),L(vocab),len(vocab)
    def __len__(self): return len(self.idx)
    def __getitem__(self, i): j = self.idx[i]; return self.x[j].float(),self.y[j]

class FeatureDL(DataLoader):
    ("A fastai `DataLoader` over a `FeatureSet` that gathers each batch with one index (an item at a time would cost "
     "more than a linear head); half-precision features come out float32")
    def create_item(self, i): return i
    def create_batch(self, b):
        ds = self.dataset
        j = ds.idx[tensor(b)]
        return ds.x[j].float(),TensorCategory(ds.y[j])

def feature_dls(x:Tensor, y:Tensor, train_idx, valid_x:Tensor, valid_y:Tensor, vocab:list, bs:int=512) -> DataLoaders:
    "`DataLoaders` training on the rows `train_idx` of (`x`, `y`), shuffled, and validating on (`valid_x`, `valid_y`)"
    return DataLoaders(FeatureDL(FeatureSet(x, y, train_idx, vocab), bs=bs, shuffle=True, drop_last=True, indexed=True),
                       FeatureDL(FeatureSet(valid_x, valid_y, range(len(valid_y)), vocab), bs=2*bs, indexed=True))

def holdout_split(y:Tensor, pct:float, seed:int=0) -> tuple:
    "(training, held-out) indices: `pct`% of each class held out, chosen by `seed` (`stratified_subset`)"
    labels = y.tolist()
    held = stratified_subset(labels, range(len(labels)), pct, seed)
    return sorted(set(range(len(labels))) - set(held)),held

# ---------------------------------------------------------------------------------------------------------------------
# the models and losses

def point_name(method:dict, opts:dict) -> str:
    "The name of a method at a grid point: 'ce', 'hxe alpha=0.1', 'frame alpha=0.4 gamma=3'"
    return ' '.join([method['method'], *(f'{k}={v}' for k,v in opts.items())])

def make_loss(loss:str, opts:dict, hier:Hierarchy, frame:HierarchyFrame=None):
    "The loss of a configuration: the package's study losses (`build_config`), or HAFrame's on `frame`"
    if loss == 'frame': return FrameLoss(hier, frame, opts.get('alpha', 0.4))
    return build_config(config(loss, loss, **opts), hier, 1)[0]

def lite0_last_stage() -> nn.Sequential:
    "EfficientNet-Lite0's last stage with its ImageNet weights: `blocks.6`, `conv_head`, `bn2`, average pooling"
    m = timm.create_model(LITE0_ARCH, pretrained=False)
    m.load_state_dict(torch.load(lite0_weights(), weights_only=True))
    return nn.Sequential(m.blocks[6], m.conv_head, m.bn2, nn.AdaptiveAvgPool2d(1), nn.Flatten())

def make_model(loss:str, opts:dict, hier:Hierarchy, n_in:int=1280, stage:bool=False) -> tuple:
    ("(model, frame): a head of BatchNorm and a linear layer, or a `FrameHead` for the loss 'frame' (the same "
     "BatchNorm and a projection onto HAFrame's fixed class vectors); with `stage`, after the body's last stage")
    frame = HierarchyFrame(hier, opts.get('gamma', 3.)) if loss == 'frame' else None
    if frame is not None: head = FrameHead(frame, n_in)
    else: head = nn.Sequential(nn.BatchNorm1d(n_in), nn.Linear(n_in, len(hier)))
    return (nn.Sequential(lite0_last_stage(), head) if stage else head),frame

# ---------------------------------------------------------------------------------------------------------------------
# the measures

def score(probs:Tensor, targ:Tensor, hier:Hierarchy, dist:ClassDistance, decode:str) -> dict:
    ("The literature's top-1, mistake severity and hd@1/5/20 of the ranking `decode` ('argmax', 'crm', 'crm_top1'), "
     "and the accuracy at every level and hierarchical F1 of its first class with its ancestors (a coherent path)")
    r = rank_classes(probs, dist, decode, k=min(20, len(hier)))
    res = dict(top1_accuracy=top1_accuracy(r, targ).item(), mistake_severity=top1_severity(r, targ, dist).item())
    # hd@k over fewer than k classes is no hd@k: NaN (a test's tree)
    for k in (1, 5, 20): res[f'hd@{k}'] = hd_at_k(r, targ, dist, k).item() if k <= len(hier) else float('nan')
    for i,n in enumerate(hier.names): res[f'{n}_accuracy'] = class_level_accuracy(r[:,0], targ, hier, i).item()
    res['hier_f1'] = hierarchical_prf(r[:,0], targ, hier)[2]
    return res

def calibration(probs:Tensor, targ:Tensor, hier:Hierarchy) -> dict:
    "NLL and ECE (15 bins) of the summed probabilities at every level: the same whatever the decode"
    res,p = {},probs.float()
    for i,n in enumerate(hier.names):
        if i: p = hier.sum_to_parents(p, i-1)
        t = hier.to_level(targ, i)
        res[f'nll_{n}'] = -p.gather(1, t[:,None])[:,0].clamp_min(1e-12).log().mean().item()
        res[f'ece_{n}'] = expected_calibration_error(probs, targ, hier=hier, level=i)
    return res

# ---------------------------------------------------------------------------------------------------------------------
# the runs, resumable

def append_rows(csv:Path, rows:list):
    "Append `rows` (dicts) to `csv`, refusing a file with other columns"
    if not rows: return
    if csv.exists() and list(pd.read_csv(csv, nrows=0).columns) != list(rows[0]):
        raise ValueError(f"{csv} has other columns than this version writes: give another --out.")
    pd.DataFrame(rows).to_csv(csv, mode='a', header=not csv.exists(), index=False)

def done_keys(csv:Path, cols:list) -> set:
    "The keys `cols` of the rows of `csv`: the trainings already finished"
    if not csv.exists(): return set()
    df = pd.read_csv(csv)
    return set(zip(*(df[c].astype(str) for c in cols)))

def train(dls, model, loss_func, lr:float, wd:float, epochs:int, seed:int, after_epoch=None) -> Learner:
    ("Train `model` with a fastai `Learner` (Adam, decoupled weight decay `wd`, constant `lr`) for `epochs`, one `fit` "
     "each (the optimizer carries on), calling `after_epoch(learn, epoch)` after each")
    set_seed(seed, reproducible=True)
    dls.train.rng = random.Random(seed)
    learn = Learner(dls, model, loss_func=loss_func, opt_func=partial(Adam, wd=wd))
    with learn.no_bar(), learn.no_logging():
        for e in range(epochs):
            learn.fit(1, lr)
            if after_epoch is not None: after_epoch(learn, e)
    return learn

def probs_of(learn, dl) -> tuple:
    "The fine probabilities (the loss's activation) and targets of `dl`"
    with learn.no_bar(), learn.no_logging(): p,t = learn.get_preds(dl=dl)
    return p.float(),t.long()

class Study:
    "The study's data, tree and settings, and its phases"
    def __init__(self, features:Path, out:Path, cfg:dict, n_classes:int=None, log=print):
        self.out,self.cfg,self.log = Path(out),cfg,log
        self.out.mkdir(parents=True, exist_ok=True)
        feats = [cfg['feature']] + ([cfg['stage']['feature']] if cfg.get('stage') else [])
        self.train_set = load_split(Path(features)/'train', feats, n_classes)
        self.valid_set = load_split(Path(features)/'valid', feats, n_classes)
        self.vocab = self.train_set['vocab']
        if self.valid_set['vocab'] != self.vocab:
            raise ValueError("The training and validation features have other class lists: extract both with one body.")
        self.hier = Hierarchy.from_wnids(self.vocab)
        self.dist = ClassDistance(self.hier, 'ilsvrc')
        self.fit_idx,self.held_idx = holdout_split(self.train_set['y'], cfg['holdout_pct'], cfg['split_seed'])
        self._check_setup(features, n_classes)

    def _check_setup(self, features, n_classes):
        "Write `setup.json`, or refuse a folder that holds another study's runs"
        m = self.train_set['meta']
        setup = dict(features=str(Path(features).resolve()), body=m['arch'], weights=m['weights'], size=m['size'],
                     classes=len(self.vocab), subset=n_classes is not None and n_classes < len(m['vocab']),
                     train_images=len(self.train_set['y']), valid_images=len(self.valid_set['y']),
                     held_out_images=len(self.held_idx),
                     config=hashlib.sha256(json.dumps(self.cfg, sort_keys=True).encode()).hexdigest()[:16])
        f = self.out/'setup.json'
        if f.exists():
            old = json.loads(f.read_text())
            diff = [k for k in setup if k != 'features' and old.get(k) != setup[k]]
            if diff:
                raise ValueError(f"{self.out} holds a study with another {diff[0]} ({old.get(diff[0])} there, "
                                 f"{setup[diff[0]]} here): give another --out, or the same settings to resume it.")
        f.write_text(json.dumps(setup, indent=1))
        self.setup = setup

    # the regimes: heads on pooled features, or the last stage on the inputs of blocks.6
    def regime(self, stage:bool) -> dict:
        c = self.cfg['stage'] if stage else self.cfg
        x_tr = self.train_set['x'][c['feature']] # the validation images' are read by `final` alone
        fit = self.fit_idx
        if stage and c.get('per_class'):
            # the same share of every class, from the images the heads train on (the held-out ones stay out)
            n = len(fit)/len(self.vocab)
            fit = stratified_subset(self.train_set['y'].tolist(), fit, min(100, 100*c['per_class']/n), 0)
        return dict(c=c, x_tr=x_tr, fit=fit, stage=stage)

    def _run(self, r, loss, opts, seed, epochs, train_idx, valid_x, valid_y, after_epoch=None):
        ("Train one configuration on the rows `train_idx` of the training features, validating on (`valid_x`, "
         "`valid_y`)")
        c = r['c']
        dls = feature_dls(r['x_tr'], self.train_set['y'], train_idx, valid_x, valid_y, self.vocab, c['bs'])
        set_seed(seed, reproducible=True) # the model's initialisation
        model,frame = make_model(loss, opts, self.hier, 1280, r['stage'])
        return train(dls, model, make_loss(loss, opts, self.hier, frame), c['lr'], c['wd'], epochs, seed, after_epoch)

    def select(self, stage:bool=False, chosen:dict=None):
        ("Every grid point (or, for the stage, every chosen configuration) trained on the training images less the "
         "held-out ones, scored on the held-out images after every epoch")
        r = self.regime(stage)
        c = r['c']
        csv = self.out/('stage_heldout.csv' if stage else 'heldout.csv')
        done = done_keys(csv, ['point', 'seed'])
        held_x,held_y = r['x_tr'][tensor(self.held_idx)],self.train_set['y'][tensor(self.held_idx)]
        points = self.stage_points(chosen) if stage else self.points()
        for p in points:
            for seed in c['select_seeds']:
                if (p['point'], str(seed)) in done: continue
                self.log(f"select{' (stage)' if stage else ''}: {p['point']}, seed {seed}")
                rows,t0 = [],time.perf_counter()
                def _after(learn, e):
                    probs,targ = probs_of(learn, learn.dls.valid)
                    for d in ('argmax', 'crm'):
                        rows.append(dict(method=p['method'], point=p['point'], loss=p['loss'],
                                         opts=json.dumps(p['opts']), seed=seed, epoch=e+1, decode=d,
                                         **{k:v for k,v in score(probs, targ, self.hier, self.dist, d).items()
                                            if k in LIT}, seconds=time.perf_counter()-t0))
                self._run(r, p['loss'], p['opts'], seed, c['max_epochs'], r['fit'], held_x, held_y, _after)
                append_rows(csv, rows)

    def points(self) -> list:
        "Every grid point of every method of the heads"
        return [dict(method=m['method'], loss=m['loss'], opts=o, point=point_name(m, o), main=m.get('main'))
                for m in self.cfg['methods'] for o in m['grid']]

    def stage_points(self, chosen:dict) -> list:
        "The configurations of the stage regime: those of the heads that its `methods` name ('best': the best loss)"
        heads = {o['method']:o for o in chosen['head'] if o['final']}
        res = []
        for m in self.cfg['stage']['methods']:
            name = chosen['best_loss'] if m == 'best' else m
            o = heads[name] if name in heads else first(o for o in chosen['head'] if o['point'] == name)
            res.append(dict(method=o['method'], loss=o['loss'], opts=o['opts'], point=o['point'], main=None))
        return res

    def final(self, chosen:dict, stage:bool=False):
        ("Each chosen configuration trained on all the training images with every seed, scored on the validation "
         "images under each decode")
        r = self.regime(stage)
        c,regime = r['c'],('stage' if stage else 'head')
        csv = self.out/'sweep.csv'
        done = done_keys(csv, ['regime', 'point', 'seed'])
        # the heads: the held-out images join the training images (all of them); the stage keeps its share of each class
        train_idx = r['fit'] if stage else sorted(r['fit'] + self.held_idx)
        for o in (x for x in chosen['stage' if stage else 'head'] if x['final']):
            for seed in c['seeds']:
                if (regime, o['point'], str(seed)) in done: continue
                self.log(f"final ({regime}): {o['point']}, {o['epochs']} epochs, seed {seed}")
                t0 = time.perf_counter()
                learn = self._run(r, o['loss'], o['opts'], seed, o['epochs'], train_idx,
                                  self.valid_set['x'][c['feature']], self.valid_set['y'])
                secs = time.perf_counter() - t0
                probs,targ = probs_of(learn, learn.dls.valid)
                cal = calibration(probs, targ, self.hier)
                rows = []
                for d in self.cfg['decodes']:
                    name = o['point'] if d == 'argmax' else f"{o['point']} +{d}"
                    rows.append(dict(regime=regime, config=name, point=o['point'], method=o['method'], loss=o['loss'],
                                     opts=json.dumps(o['opts']), decode=d, seed=seed, fold=0, folds=0,
                                     epochs=o['epochs'], train_images=len(train_idx), valid_images=len(targ),
                                     **score(probs, targ, self.hier, self.dist, d), **cal, seconds=secs))
                append_rows(csv, rows)

# ---------------------------------------------------------------------------------------------------------------------
# the choice: held-out images only

# the held-out scores `chosen.json` keeps of each choice
HELD = ['top1_accuracy', 'mistake_severity', 'hd@5', 'top1_accuracy_crm', 'mistake_severity_crm', 'hd@5_crm']

def _pick(d:pd.DataFrame, floor:float) -> pd.Series:
    "The row of least CRM hd@5 among those whose top-1 (argmax) reaches `floor`; where none does, the best top-1"
    ok = d[d.top1_accuracy >= floor - 1e-12]
    if len(ok): return ok.sort_values(['hd@5_crm', 'top1_accuracy'], ascending=[True, False]).iloc[0]
    return d.sort_values('top1_accuracy', ascending=False).iloc[0]

def choose(heldout:pd.DataFrame, methods:list, slack:float, baseline:str='ce') -> list:
    ("The settings of every configuration from held-out scores alone (`heldout.csv`): per grid point, the epochs; per "
     "method whose `final` is 'best', the grid point. Returns one dict per grid point, `final` for those to train")
    g = heldout.groupby(['method', 'point', 'loss', 'opts', 'epoch', 'decode'], sort=False)[LIT].mean().reset_index()
    arg = g[g.decode == 'argmax'].drop(columns='decode').set_index(['method', 'point', 'loss', 'opts', 'epoch'])
    crm = g[g.decode == 'crm'].drop(columns='decode').set_index(['method', 'point', 'loss', 'opts', 'epoch'])
    both = arg.join(crm.add_suffix('_crm')).reset_index()
    if baseline not in set(both.method):
        raise ValueError(f"No held-out scores of the baseline {baseline!r}: its best top-1 sets the floor of the "
                         "others.")
    floor = both[both.method == baseline].top1_accuracy.max() - slack
    res = []
    for m in methods:
        d = both[both.method == m['method']]
        if not len(d): continue
        per_point = [_pick(dp, floor) for _,dp in d.groupby('point', sort=False)]
        best = min(per_point, key=lambda r: (r.top1_accuracy < floor - 1e-12, r['hd@5_crm']))
        fin = m.get('final', 'all')
        for i,r in enumerate(per_point):
            final = fin == 'all' or (fin == 'best' and r.point == best.point) or (isinstance(fin, list) and i in fin)
            res.append(dict(method=m['method'], point=r.point, loss=r.loss, opts=json.loads(r.opts),
                            epochs=int(r.epoch), final=bool(final), within_slack=bool(r.top1_accuracy >= floor-1e-12),
                            heldout={k:float(r[k]) for k in HELD}))
    return res

def best_loss(head:list, exclude=('ce', 'frame')) -> str:
    "The point, among the final configurations of the losses (not `exclude`), of least held-out CRM hd@5 within slack"
    cands = [o for o in head if o['final'] and o['method'] not in exclude]
    if not cands:
        raise ValueError("No loss besides cross-entropy and the frame head to choose the best of: add one to "
                         "'methods'.")
    return min(cands, key=lambda o: (not o['within_slack'], o['heldout']['hd@5_crm']))['point']

def choose_stage(heldout:pd.DataFrame, points:list, slack:float) -> list:
    "The stage's epochs from its held-out scores, by the rule of `choose`, cross-entropy's best top-1 setting the floor"
    ms = [dict(method=p['point'], final='all') for p in points]
    h = heldout.assign(method=heldout.point)
    res = choose(h, ms, slack, baseline=points[0]['point'])
    by = {p['point']:p for p in points}
    return [{**o, 'method':by[o['point']]['method']} for o in res]

# ---------------------------------------------------------------------------------------------------------------------

def run_study(features:Path, out:Path, cfg:dict, n_classes:int=None, phases=('select', 'final', 'stage'), log=print):
    "Run the phases of the study into `out`, resuming from what it holds"
    st = Study(features, out, cfg, n_classes, log)
    cf = st.out/'chosen.json'
    if 'select' in phases: st.select()
    chosen = json.loads(cf.read_text()) if cf.exists() else {}
    if 'select' in phases or 'head' not in chosen:
        held = pd.read_csv(st.out/'heldout.csv')
        head = choose(held, cfg['methods'], cfg['top1_slack'])
        chosen = {**chosen, 'head':head, 'best_loss':best_loss(head),
                  'rule':(f"least held-out CRM hd@5 with held-out top-1 within {cfg['top1_slack']} of "
                          "cross-entropy's best")}
        cf.write_text(json.dumps(chosen, indent=1))
    if 'final' in phases: st.final(chosen)
    if 'stage' in phases and cfg.get('stage'):
        st.select(stage=True, chosen=chosen)
        points = st.stage_points(chosen)
        chosen['stage'] = choose_stage(pd.read_csv(st.out/'stage_heldout.csv'), points, cfg['top1_slack'])
        cf.write_text(json.dumps(chosen, indent=1))
        st.final(chosen, stage=True)
    return st

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--features', type=Path, required=True, help='the folder extract_tiny_imagenet.py writes')
    p.add_argument('--out', type=Path, default=Path('results/tiny_imagenet'))
    p.add_argument('--config', type=Path, default=Path('studies/tiny_imagenet.json'))
    p.add_argument('--classes', type=int, default=None, help='only the first K classes (a subset study)')
    p.add_argument('--phases', nargs='+', default=['select', 'final', 'stage'])
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--no-report', action='store_true', help="don't write the report at the end")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    run_study(args.features, args.out, json.loads(args.config.read_text()), args.classes, args.phases,
              log=lambda s: print(time.strftime('%H:%M:%S'), s, flush=True))
    if not args.no_report:
        from tiny_imagenet_report import report
        report(args.out)
        print(f"wrote {args.out/'report.md'}")
