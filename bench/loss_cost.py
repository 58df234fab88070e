"""What the losses, CRM decoding and the metrics cost against cross-entropy, side by side in one process.

    python bench/loss_cost.py                  # CPU, one thread (and the GPU too when there is one)
    python bench/loss_cost.py --threads 2 --repeats 20 --rounds 5
    python bench/loss_cost.py --device cuda --only losses --trees WordNet 100,000

Prints markdown tables. For each hierarchy (37 classes to WordNet's 65,218 nouns and 100,000 classes in 7 levels):
`HierarchicalLoss` (eager, compiled with `torch.compile(fullgraph=True)` up to 10,000 classes, with label smoothing),
`HXELoss` and `SoftLabelsLoss` forward plus backward, `crm_decode`, and the metrics (level accuracy, mistake severity,
`HierarchicalDistance@5`), as ratios to `CrossEntropyLossFlat`'s forward plus backward on the same logits: in each of
`--rounds` rounds the fastest of `--repeats` interleaved calls, and the table gives the median of the rounds and their
spread. Then the memory each keeps for its backward and its peak, the build time of the hierarchies, what the loss
adds to a resnet18 training step, the callbacks' cost per batch and the `CoarseToFine` switch. Nothing is downloaded:
the hierarchies are random trees (and WordNet's, where `wordnet-base` is installed), the images random tensors.
"""
import argparse, collections, os, platform, random, statistics, time, weakref
import torch, torch.nn as nn, torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torchvision.models import resnet18
from fastai.basics import Learner, DataLoaders, CrossEntropyLossFlat, noop
from fastai_hier.all import *

# (classes at each level, finest first), batch size: PETS, flat vocabularies of 1,000 and 10,000 classes in groups,
# iNaturalist 2021's 7 ranks, a catalogue of 100,000 products, and WordNet's nouns (`Hierarchy.from_wordnet`)
TREES = {'37 classes, 2 levels': ((37, 2), 256),
         '1,000 classes, 2 levels': ((1000, 30), 256),
         '10,000 classes, 2 levels': ((10000, 100), 256),
         '10,000 classes, 7 levels': ((10000, 4884, 1103, 273, 51, 11, 3), 256),
         '100,000 classes, 7 levels': ((100000, 48840, 11030, 2730, 510, 110, 30), 64),
         'WordNet nouns: 65,218 classes, 7 levels': ('wordnet', 64)}
SIZES = {k: v for k,(v,_) in TREES.items() if v != 'wordnet'}
WORDNET = '/usr/share/wordnet/data.noun'

def random_tree(sizes, seed=0):
    "Child -> parent links of a random tree with `sizes[i]` groups at level i (none empty), and a shuffled vocab"
    rng = random.Random(seed)
    names = [[f'L{i}_{j}' for j in range(n)] for i,n in enumerate(sizes)]
    parents = {}
    for kids,ups in zip(names, names[1:]):
        kids = rng.sample(kids, len(kids))
        for j,k in enumerate(kids): parents[k] = ups[j] if j < len(ups) else rng.choice(ups)
    return parents, rng.sample(names[0], len(names[0]))

OUT = []
def say(*lines):
    "Print, and keep for `--out`"
    print(*lines)
    OUT.extend(lines)

def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()

def fwd_bwd(loss_func, x, targ):
    "One forward and backward"
    x = x.detach().requires_grad_()
    loss_func(x, targ).mean().backward()

def kept_for_backward(loss_func, x, targ) -> int:
    "The bytes the loss keeps for its backward (each tensor once, however many operations keep it)"
    saved = {}
    def pack(t):
        saved[t.data_ptr()] = t.untyped_storage().nbytes()
        return t
    x = x.detach().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t): loss = loss_func(x, targ)
    loss.mean().backward()
    return sum(saved.values())

def time_side_by_side(funcs:dict, repeats, device, warmup=2) -> dict:
    "Seconds of each call in `funcs`, interleaved so that the machine's noise falls on all alike"
    for f in funcs.values():
        for _ in range(warmup): f()
    res = {k:[] for k in funcs}
    for _ in range(repeats):
        for k,f in funcs.items():
            sync(device); t = time.perf_counter(); f(); sync(device)
            res[k].append(time.perf_counter() - t)
    return res

def table(rows, header):
    return '\n'.join(['| ' + ' | '.join(header) + ' |', '|' + '---|'*len(header)]
                     + ['| ' + ' | '.join(map(str, r)) + ' |' for r in rows])

class PeakMemory(TorchDispatchMode):
    "The peak of the bytes held by the tensors that the operations run inside it allocate (each storage once)"
    def __init__(self): super().__init__(); self.live = self.peak = 0
    def _free(self, n): self.live -= n
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in ins and t._base is None:
                n = t.untyped_storage().nbytes()
                self.live += n; self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, n)
        return out

def peak_mib(f) -> float:
    "MiB at the peak of what `f` allocates"
    with PeakMemory() as m: f()
    return m.peak/2**20

def hierarchy(sizes):
    "The benchmark's `Hierarchy` for `sizes` (a random tree, or WordNet's), and how long it took to build"
    t = time.perf_counter()
    hier = Hierarchy.from_wordnet(WORDNET) if sizes == 'wordnet' else Hierarchy.from_parents(*random_tree(sizes))
    return hier, time.perf_counter() - t

def contenders(hier, device, compiled:bool):
    "name -> (call, whether it is a loss): the losses' forward and backward, CRM and the metrics on the same logits"
    hl,hc,hs = HierarchicalLoss(hier),HierarchicalLoss(hier),HierarchicalLoss(hier, label_smoothing=0.1)
    hxe,soft = HXELoss(hier, alpha=0.5),SoftLabelsLoss(hier, beta=10.)
    for lf in (hl, hc, hs, hxe, soft): lf.to(device) # fastai's `BaseLoss.to` returns None
    losses = {'CrossEntropyLossFlat': CrossEntropyLossFlat(), 'HierarchicalLoss': hl}
    if compiled:
        hc.func = torch.compile(hc.func, fullgraph=True) # as a user compiles it: the inner module, whole
        losses['HierarchicalLoss, compiled'] = hc
    if len(hier) <= 10000: losses['HierarchicalLoss, label_smoothing=0.1'] = hs # the slow path: every group's lse
    losses.update({'HXELoss(alpha=0.5)': hxe, 'SoftLabelsLoss(beta=10)': soft})
    return losses, {'crm_decode': lambda x,p,t: crm_decode(p, hier),
                    'level accuracy (coarsest level)': lambda x,p,t: level_accuracy(x, t, hier, -1),
                    'mistake severity': lambda x,p,t: mistake_severity(x.argmax(-1), t, hier),
                    'HierarchicalDistance@5': lambda x,p,t: hierarchical_distance(x, t, hier, k=5)}

def bench_losses(device, repeats, rounds, compile_max=10000, only_trees=None):
    rows,builds = [],[]
    for label,(sizes,bs) in TREES.items():
        if only_trees and not any(o in label for o in only_trees): continue
        if sizes == 'wordnet' and not os.path.exists(WORDNET):
            say(f'\n(WordNet is not installed, `apt-get install -y wordnet-base`: no row for {label})'); continue
        hier,secs = hierarchy(sizes)
        builds.append((label, f'{secs:.3f}'))
        x = torch.randn(bs, len(hier), device=device)*3
        targ = torch.randint(0, len(hier), (bs,), device=device)
        probs = x.softmax(-1)
        losses,others = contenders(hier, device, len(hier) <= compile_max)
        calls = {k:(lambda lf=lf: fwd_bwd(lf, x, targ)) for k,lf in losses.items()}
        calls.update({k:(lambda f=f: f(x, probs, targ)) for k,f in others.items()})
        kept = {k: kept_for_backward(lf, x, targ)/2**20 for k,lf in losses.items()}
        peak = {k: peak_mib(f) for k,f in calls.items() if 'compiled' not in k} # dynamo does not trace the mode
        ratios = collections.defaultdict(list) # per round: min / CE's min
        for r in range(rounds):
            times = time_side_by_side(calls, repeats, device)
            for k,ts in times.items(): ratios[k].append((min(ts), min(ts)/min(times['CrossEntropyLossFlat'])))
        for k,rs in ratios.items():
            ms,rat = statistics.median(t for t,_ in rs),[r for _,r in rs]
            rows.append([label if k == 'CrossEntropyLossFlat' else '', k, f'{ms*1e3:.2f}',
                         f'**{statistics.median(rat):.2f}x**',
                         f'{min(rat):.2f}-{max(rat):.2f}x', f'{kept[k]:.1f}' if k in kept else '',
                         f'{peak[k]:.1f}' if k in peak else ''])
    header = ['hierarchy (batch)', 'forward + backward, or call', 'ms', 'time / CE', f'across {rounds} rounds',
              'kept for backward, MiB', 'peak, MiB']
    say(f'\n### Forward + backward, CRM and the metrics against `CrossEntropyLossFlat`, on {device_name(device)}\n\n'
        f'The median over {rounds} rounds of the ratio of the fastest of {repeats} interleaved calls to '
        'cross-entropy\'s in the same round; the losses run forward and backward, `crm_decode` and the metrics on '
        'the same logits (their probabilities for CRM). *Peak* is what the call allocates at its worst, *kept for '
        'backward* what the loss saves for its backward; the batch is 256, and 64 at 100,000 '
        'classes and on WordNet.\n\n' + table(rows, header))
    say('\nBuilding each `Hierarchy` (`from_parents` on the random trees, `from_wordnet` from `data.noun`):\n\n'
        + table(builds, ['hierarchy', 'seconds']))

def synthetic_learner(model, n_in, n_classes, loss_func, cbs=None, n=512, bs=64, device=None):
    "A `Learner` on random data, quiet, for timing"
    xs,ys = torch.randn(n, *n_in),torch.randint(0, n_classes, (n,))
    dls = DataLoaders.from_dsets(list(zip(xs, ys)), list(zip(xs[:bs], ys[:bs])), bs=bs, device=device, num_workers=0)
    learn = Learner(dls, model, loss_func=loss_func, cbs=cbs)
    learn.remove_cbs(learn.cbs.filter(lambda o: type(o).__name__ == 'ProgressCallback'))
    learn.logger = noop
    return learn

def bench_step(device, bs, size, repeats):
    "What the loss adds to a resnet18 training step at 37 classes"
    parents,vocab = random_tree(SIZES['37 classes, 2 levels'])
    hier = Hierarchy.from_parents(parents, vocab)
    model = resnet18(num_classes=37).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x,targ = torch.randn(bs, 3, size, size, device=device),torch.randint(0, 37, (bs,), device=device)
    def step(lf):
        lf(model(x), targ).backward(); opt.step(); opt.zero_grad()
    ce,hl = CrossEntropyLossFlat(),HierarchicalLoss(hier)
    steps = time_side_by_side({'CE': lambda: step(ce), 'HL': lambda: step(hl)}, repeats, device, warmup=1)
    out = torch.randn(bs, 37, device=device)
    loss_times = time_side_by_side({'CE': lambda: fwd_bwd(ce, out, targ), 'HL': lambda: fwd_bwd(hl, out, targ)},
                                   200, device)
    step_s = statistics.median(steps['CE'])
    extra = statistics.median(loss_times['HL']) - statistics.median(loss_times['CE'])
    say(f'\n### A resnet18 training step at 37 classes (batch {bs}, {size} px, {device_name(device)})\n\n' + table([
        ['step with CrossEntropyLossFlat, median', f'{step_s*1e3:.1f} ms'],
        ['step with HierarchicalLoss, median', f'{statistics.median(steps["HL"])*1e3:.1f} ms'],
        ['HierarchicalLoss minus CrossEntropyLossFlat, forward + backward alone, median of 200', f'{extra*1e6:.0f} µs'],
        ['what the loss adds to the step', f'**{extra/step_s:.2%}**']], ['', '']))

def bench_callbacks(device, repeats):
    "Time a batch adds with each callback to a small model's training, and the `CoarseToFine` switch"
    parents,vocab = random_tree(SIZES['37 classes, 2 levels'])
    hier = Hierarchy.from_parents(parents, vocab)
    cbs = {'none': lambda: [], 'TemperatureSchedule(start=4)': lambda: [TemperatureSchedule(start=4.)],
           'LevelWeightSchedule': lambda: [LevelWeightSchedule({0: [0.2, 0.8], 0.5: [0.8, 0.2]})],
           'CoarseToFine(coarse_pct=0.5)': lambda: [CoarseToFine(hier, coarse_pct=0.5)]}
    def fit(cbs, n_batches):
        model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 37))
        synthetic_learner(model, (64,), 37, HierarchicalLoss(hier), cbs=cbs(), n=64*n_batches,
                          device=device).fit(1, 1e-3)
    # the slope between a short and a long fit: the time per batch, without what a fit costs once
    short,long = 8,40
    times = time_side_by_side({(k,n):(lambda cb=cb,n=n: fit(cb, n)) for k,cb in cbs.items() for n in (short, long)},
                              repeats, device, warmup=1)
    per_batch = {k:(min(times[k,long]) - min(times[k,short]))/(long-short) for k in cbs}
    rows = [[k, f'{t*1e3:.2f}', f'{(t-per_batch["none"])*1e6:+.0f}'] for k,t in per_batch.items()]
    say(f'\n### Callbacks, per training batch (a 2-layer model on random data, batches of 64, '
        f'{device_name(device)})\n\n'
          + table(rows, ['callbacks', 'ms per batch', 'added µs per batch']))
    rows = []
    for label in ('37 classes, 2 levels', '10,000 classes, 7 levels'):
        sizes = SIZES[label]
        parents,vocab = random_tree(sizes)
        hier = Hierarchy.from_parents(parents, vocab)
        learn = synthetic_learner(resnet18(num_classes=sizes[0]), (3, 32, 32), sizes[0],
                                  HierarchicalLoss(hier), device=device)
        learn.model.to(device)
        learn.create_opt()
        cb = CoarseToFine(hier, coarse_epochs=1)
        learn.add_cb(cb)
        ts = []
        for _ in range(max(3, repeats)):
            cb._to_level(hier.n_levels-1)
            # the switch: regroup the head, rebuild the optimiser
            sync(device); t = time.perf_counter(); cb._to_level(0); sync(device)
            ts.append(time.perf_counter() - t)
        rows.append([f'resnet18, {label}', f'{statistics.median(ts)*1e3:.1f}'])
    say(f'\n`CoarseToFine`: switching from the coarsest head to the fine one (median):\n\n'
        + table(rows, ['model', 'ms']))

def device_name(device):
    if device.type == 'cuda': return torch.cuda.get_device_name(device)
    return f'{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} thread(s)'

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--trees', nargs='*', default=None,
                   help='only the hierarchies whose label holds one of these, e.g. WordNet 100,000')
    p.add_argument('--repeats', type=int, default=30, help='timed calls of each loss, interleaved')
    p.add_argument('--rounds', type=int, default=3,
                   help='rounds of interleaved repeats: the spread of the ratios across them is reported')
    p.add_argument('--only', choices=['losses', 'step', 'callbacks'], default=None, help='run one of the benchmarks')
    p.add_argument('--threads', type=int, default=1, help='CPU threads (the target is stated for one)')
    p.add_argument('--device', default=None, help="'cpu', 'cuda', ...; default: the CPU, then the GPU if there is one")
    p.add_argument('--step-bs', type=int, default=32, help='batch size of the resnet18 step')
    p.add_argument('--step-size', type=int, default=224, help='image size of the resnet18 step')
    p.add_argument('--step-repeats', type=int, default=5)
    p.add_argument('--out', default=None, help='also write the tables to this markdown file')
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    say(f'Measured with torch {torch.__version__} on {platform.platform()}, {os.cpu_count()} cores'
        + (f', {torch.cuda.get_device_name()}' if torch.cuda.is_available() else '') + ':')
    devices = [args.device] if args.device else ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    for d in map(torch.device, devices):
        if args.only in (None, 'losses'): bench_losses(d, args.repeats, args.rounds, only_trees=args.trees)
        if args.only in (None, 'step'): bench_step(d, args.step_bs, args.step_size, args.step_repeats)
        if args.only in (None, 'callbacks'): bench_callbacks(d, args.step_repeats)
    if args.out: open(args.out, 'w').write('\n'.join(OUT).strip() + '\n')
