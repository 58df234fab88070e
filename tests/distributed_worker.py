"""One process of the distributed test (`tests/test_distributed.py`): launch with
`python -m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 --master_port PORT
tests/distributed_worker.py OUT [--metrics ...]`.

Each rank trains the PETS sample with fastai's own `distrib_ctx` on the gloo backend (CPU only) and writes
`OUT/rank{RANK}.json` (what it recorded) and `OUT/rank{RANK}.pt` (its parameters and buffers).
With `--synthetic`, each metric is computed instead on 8 (or 7) items whose predictions are fixed, distributed and in
one process."""
import argparse, json, math, os, traceback
from pathlib import Path
import torch, torch.distributed as dist
from fastai.vision.all import (Callback, DataLoaders, Learner, LongTensor, Metric, URLs, accuracy, nn,
                               rank_distrib, resnet18, set_seed, tensor, untar_data, vision_learner)
import fastai.distributed as fd
from fastai_hier.all import (CoarseToFine, ECE, Hierarchy, HierarchicalDistance, HierarchicalLoss,
                             LevelAccuracy, MistakeSeverity,
                             TemperatureSchedule, output_linear, pets_dls, pets_hierarchy)

# `DistributedDL._broadcast` (fastai 2.8.12, fastai/distributed.py) sends the shuffled indices from rank 0 with
# `LongTensor(t).cuda()` "because nccl only works with cuda tensors"; gloo takes CPU tensors, and there is no GPU here.
# Only that line changes: the broadcast stays, on the CPU.
def _broadcast_cpu(self, t, rank):
    t = LongTensor(t)
    dist.broadcast(t, rank)
    return t.tolist()
fd.DistributedDL._broadcast = _broadcast_cpu

# `cpu=True` makes Accelerate set up the gloo process group (`DistributedType.MULTI_CPU`) instead of looking for GPUs;
# `SyncBatchNorm` only runs on GPUs, hence `sync_bn=False`
DISTRIB = dict(sync_bn=False, cpu=True)

class ValidCount(Metric):
    ("Number of validation items the metrics saw, gathered like fastai gathers predictions (per-item "
     "tensors, padding removed)")
    def reset(self): self.n = 0
    def accumulate(self, learn): self.n += len(learn.to_detach(learn.yb[0]))
    @property
    def value(self): return self.n
    @property
    def name(self): return 'valid_count'

class RawPred(Callback):
    "Keeps the predictions as the model made them, before `TemperatureSchedule` (order 65) may divide them"
    order = 64
    def after_pred(self): self.raw = self.pred.detach()

class Spy(Callback):
    "What the callbacks did, batch by batch, on this rank"
    order = 66 # after `TemperatureSchedule.after_pred` (65)
    def before_fit(self): self.loss_temps,self.widths,self.wrappers,self.train_targs = [],[],[],[]
    def before_train(self):
        self.widths.append(output_linear(getattr(self.model, 'module', self.model))[1].out_features)
        self.wrappers.append(type(self.model).__name__)
        self.train_targs.append([])
    def after_pred(self):
        "The temperature the loss really computes at: its own, times what the predictions were divided by"
        # `TemperatureSchedule` sets the temperature of a `HierarchicalLoss`, and divides the predictions for other
        # losses, such as `CoarseToFine`'s wrapper in the coarse phase
        if not self.training: return
        ratio = (self.learn.raw_pred.raw.float()/self.pred.detach().float()).median().item()
        self.loss_temps.append(float(self.learn.loss_func.temperature)*ratio)
    def after_batch(self):
        if self.training: self.train_targs[-1] += self.yb[0].tolist()

METRICS = dict(accuracy=lambda h: accuracy, species_accuracy=lambda h: LevelAccuracy(h, 'species'),
               mistake_severity=lambda h: MistakeSeverity(h), hier_distance=lambda h: HierarchicalDistance(h, k=5),
               ece=lambda h: ECE(), valid_count=lambda h: ValidCount())

def _num(v):
    if v is None: return None
    v = float(v)
    return v if math.isfinite(v) else str(v)

def _error(res, e): res.update(error=f'{type(e).__name__}: {e}', traceback=traceback.format_exc())

def _leave_group():
    ("After this, rank 0 computes in this process alone: `num_distrib()` reads WORLD_SIZE, and fastai "
     "would gather otherwise")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    os.environ['WORLD_SIZE'] = '1'

def main(out, metrics, epochs, size, bs):
    rank = rank_distrib()
    res = dict(rank=rank, world_size=int(os.environ['WORLD_SIZE']), error=None)
    dls = pets_dls(untar_data(URLs.PETS)/'images', size=size, bs=bs, num_workers=0)
    hier = pets_hierarchy(dls.vocab)
    set_seed(0)
    sched,spy = TemperatureSchedule(start=3.),Spy()
    learn = vision_learner(dls, resnet18, pretrained=False,
                           loss_func=HierarchicalLoss(hier, weights={'breed': .7, 'species': .3}),
                           metrics=[METRICS[m](hier) for m in metrics],
                           cbs=[sched, CoarseToFine(hier, coarse_epochs=1), RawPred(), spy])
    learn.remove_cb(learn.progress) # keeps the subprocess's output short
    res.update(n_valid=len(dls.valid_ds), train_labels=[int(o) for o in dls.train_ds.tls[1]]) # labels only, no images
    try:
        with learn.distrib_ctx(**DISTRIB):
            res['backend'] = dist.get_backend()
            learn.fit(epochs, 1e-3)
    except Exception as e: _error(res, e)
    res.update(metric_names=list(learn.recorder.metric_names),
               values=[[_num(v) for v in row] for row in learn.recorder.values],
               temperatures=sched.temperatures, loss_temperatures=spy.loss_temps, widths=spy.widths,
               wrappers=spy.wrappers, train_targs=spy.train_targs, final_model=type(learn.model).__name__,
               final_out_features=output_linear(getattr(learn.model, 'module', learn.model))[1].out_features)
    torch.save(dict(params=[p.detach().clone() for p in learn.model.parameters()],
                    buffers=[b.detach().clone() for b in learn.model.buffers()]), Path(out)/f'rank{rank}.pt')
    _leave_group()
    # the final model on the whole validation set
    if rank == 0 and res['error'] is None: res['validate'] = [_num(v) for v in learn.validate()]
    (Path(out)/f'rank{rank}.json').write_text(json.dumps(res))

def synthetic(out):
    """Each metric on fixed predictions, distributed and in one process: 8 items, the first 4 (rank 0's half) right and
    the last 4 (rank 1's) wrong, all about 90% confident; and the first 7 of them, which `DistributedDL` pads with the
    first item"""
    rank = rank_distrib()
    hier = Hierarchy.from_func(list('abcd'), lambda c: 'x' if c in 'ab' else 'y', names=('fine', 'coarse'))
    targs,preds = [0,1,2,3, 0,1,2,3],[0,1,2,3, 1,2,3,0] # wrong ones at tree distance 1,2,1,2
    def _x(p): x = tensor([0., .1, .2, .3]); x[p] = math.log(27); return x
    items = [(_x(p), tensor(t)) for p,t in zip(preds, targs)]
    mets = dict(accuracy=lambda: accuracy, coarse_accuracy=lambda: LevelAccuracy(hier, 'coarse'),
                hier_distance=lambda: HierarchicalDistance(hier, k=2),
                mistake_severity=lambda: MistakeSeverity(hier), ece=lambda: ECE(), valid_count=lambda: ValidCount())
    def _learner(name, items):
        # new dataloaders each time: a fit that raises leaves `DistributedDL`s in them
        # (`DistributedTrainer.after_fit` does not run)
        dls = DataLoaders.from_dsets(items, items, bs=2, device='cpu', num_workers=0)
        model = nn.Linear(4, 4) # the identity: the predictions are the inputs
        with torch.no_grad(): model.weight.copy_(torch.eye(4)); model.bias.zero_()
        learn = Learner(dls, model, loss_func=HierarchicalLoss(hier), metrics=mets[name]())
        learn.remove_cb(learn.progress)
        learn.logger = lambda *a: None
        return learn
    cases = dict(even=items, odd=items[:7])
    res = dict(rank=rank, **{k: {c: {} for c in cases} for k in ('distributed', 'errors', 'single', 'single_padded')})
    for c,its in cases.items():
        for name in mets:
            learn = _learner(name, its)
            try:
                with learn.distrib_ctx(**DISTRIB): learn.fit(1, 0.) # no step: the identity stays
                res['distributed'][c][name] = _num(learn.recorder.values[-1][-1])
            except Exception as e: res['errors'][c][name] = f'{type(e).__name__}: {e}'
    _leave_group()
    if rank == 0:
        for c,its in cases.items():
            for name in mets:
                res['single'][c][name] = _num(_learner(name, its).validate()[-1])
                # what the ranks get
                res['single_padded'][c][name] = _num(_learner(name, its + its[:len(its)%2]).validate()[-1])
    (Path(out)/f'rank{rank}.json').write_text(json.dumps(res))

if __name__ == '__main__':
    p = argparse.ArgumentParser()
    p.add_argument('out')
    p.add_argument('--metrics', nargs='+', default=['accuracy', 'species_accuracy', 'mistake_severity'],
                   choices=list(METRICS))
    p.add_argument('--epochs', type=int, default=2)
    p.add_argument('--size', type=int, default=32)
    p.add_argument('--bs', type=int, default=16)
    p.add_argument('--synthetic', action='store_true')
    a = p.parse_args()
    torch.set_num_threads(1) # two processes on two cores
    if a.synthetic: synthetic(a.out)
    else: main(a.out, a.metrics, a.epochs, a.size, a.bs)
