"`CoarseToFine` in real fastai training: the switch, the optimiser, the schedule across fits, and the rest of fastai"
import math
import pytest, torch
from torch import nn
from fastai.vision.all import (L, Callback, CancelFitException, ClassificationInterpretation, CrossEntropyLossFlat,
                               Datasets, EarlyStoppingCallback, Learner,
                               MixUp, ProgressCallback, SaveModelCallback, accuracy, load_learner, params, set_seed)
from fastcore.test import test_close as _close
from fastai_hier.hierarchy import Hierarchy
from fastai_hier.losses import HierarchicalLoss
from fastai_hier.metrics import LevelAccuracy, MistakeSeverity, spread_to_fine
from fastai_hier.callback.coarse_to_fine import CoarseToFine, output_linear, regroup_linear
from conftest import small_learner
from test_learner import _BF16Autocast

TREE = {'carnivora': {'felidae': ['lion', 'tiger', 'lynx'], 'canidae': ['wolf', 'fox']},
        'primates': {'hominidae': ['gorilla', 'chimpanzee', 'orangutan', 'human'], 'cebidae': ['capuchin']}}
ZOO = Hierarchy.from_dict(TREE, names=['species', 'family', 'order'])

def zoo_learner(cbs=None, loss_func=None, metrics=None, n=320, data_seed=0, partial=False, **kwargs):
    ("A small MLP on 10 classes in 4 families in 2 orders, with a body and a head parameter group, so that it can be "
     "frozen; with `partial`, every other training item is labelled with its family only")
    set_seed(0)
    g = torch.Generator().manual_seed(data_seed)
    centers = torch.randn(10, 16, generator=g)
    y = torch.randint(0, 10, (n+96,), generator=g)
    x = centers[y] + torch.randn(n+96, 16, generator=g)
    if partial: y[:n:2] = ZOO.node_index('family', ZOO.to_level(y[:n:2], 'family'))
    dls = Datasets(range(n+96), tfms=[[x.__getitem__], [y.__getitem__]],
                   splits=[range(n), range(n, n+96)]).dataloaders(bs=32, device='cpu', num_workers=0)
    model = nn.Sequential(nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU()), nn.Linear(32, 10))
    if metrics is None: metrics = [accuracy, LevelAccuracy(ZOO, 'family'), LevelAccuracy(ZOO, 'order')]
    learn = Learner(dls, model, loss_func=loss_func or CrossEntropyLossFlat(),
                    splitter=lambda m: L(m[0], m[1]).map(params), metrics=metrics, cbs=cbs, **kwargs)
    return learn.remove_cb(ProgressCallback)   # no progress bars in the test log

class Probe(Callback):
    ("Records, at the start and end of each training epoch: the head's level and width, and the probabilities of a "
     "fixed batch at every coarser level")
    order = CoarseToFine.order + 1
    def __init__(self, x, hier): self.x,self.hier,self.records = x,hier,[]
    def _record(self, when):
        c2f = self.learn.coarse_to_fine
        self.model.eval()   # dropout and batchnorm as in inference: comparisons to float precision
        with torch.no_grad(): lp = self.model(self.x).float().log_softmax(-1)
        self.model.train()
        fine = spread_to_fine(lp, self.hier, c2f.head_level)
        self.records.append(dict(when=when, level=c2f.head_level, width=lp.shape[-1],
                                 span_done=c2f.span_done, fit=self.fit_no,
                                 probs={l: self.hier.coarsen(fine, l).exp()
                                        for l in range(c2f.head_level, self.hier.n_levels)}))
    def before_fit(self): self.fit_no = getattr(self, 'fit_no', -1) + 1
    def before_train(self): self._record('start')
    def after_train(self): self._record('end')

def _probe(learn, hier=ZOO):
    learn.add_cb(Probe(learn.dls.valid.one_batch()[0][:16], hier))
    return learn.probe

def _check_switches(records, n_expected):
    ("Every change of head between the end of an epoch and the start of the next kept the probabilities "
     "at the coarser level")
    n = 0
    for end,start in zip(records[1::2], records[2::2]):
        if end['level'] != start['level']:
            level = max(end['level'], start['level'])
            _close(start['probs'][level], end['probs'][level], eps=1e-5)
            n += 1
    assert n == n_expected, n

def test_switch_keeps_probabilities_and_steps_through_levels():
    learn = zoo_learner(cbs=CoarseToFine(ZOO, schedule={'family': 1, 'order': 1}))
    probe = _probe(learn)
    learn.fit(3, 1e-2)
    test = [(r['when'], r['width']) for r in probe.records]
    assert test == [('start', 2), ('end', 2), ('start', 4), ('end', 4), ('start', 10), ('end', 10)], test
    _check_switches(probe.records, 2)
    vals = learn.recorder.values   # accuracy, family accuracy, order accuracy: missing while too coarse
    assert ([[v is None for v in r[2:5]] for r in vals]
            == [[True, True, False], [True, False, False], [False, False, False]])
    assert output_linear(learn.model)[1].out_features == 10
    assert learn.metrics[0] is not None and type(learn.metrics[0]).__name__ == 'AvgMetric'   # the real metrics are back

def test_vision_learner_fit_ending_coarse_then_predict_and_export(dls, hier, tmp_path):
    ("The vision_learner head (no bias) switches exactly: a fit that ends in the coarse phase leaves the fine model "
     "that gives the same species probabilities, and it predicts and exports on the fine classes")
    learn = small_learner(dls, hier, loss_func=CrossEntropyLossFlat(),
                          cbs=CoarseToFine(hier, coarse_epochs=2, total_epochs=3), path=tmp_path)
    assert output_linear(learn.model)[1].bias is None
    probe = _probe(learn, hier)
    learn.fit(1, 1e-3)
    end = probe.records[-1]
    assert end['level'] == 1 and end['width'] == 2
    name,lin = output_linear(learn.model)
    assert name == '1.8' and lin.out_features == 37 and lin.bias is not None
    learn.model.eval()
    with torch.no_grad(): after = hier.coarsen(learn.model(probe.x).float().log_softmax(-1), 'species').exp()
    _close(after, end['probs'][1], eps=1e-5)
    assert learn.coarse_to_fine.span_done == 1
    preds,targs = learn.get_preds()
    assert preds.shape == (len(dls.valid_ds), 37)
    assert ClassificationInterpretation.from_learner(learn).confusion_matrix().shape == (37, 37)
    img = dls.valid_ds.items[0]
    breed,idx,probs = learn.predict(img)
    learn.export('export.pkl')
    loaded = load_learner(tmp_path/'export.pkl')
    breed2,idx2,probs2 = loaded.predict(img)
    assert breed2 == breed and probs2.shape == (37,)
    _close(probs2, probs, eps=1e-5)
    assert loaded.coarse_to_fine.span_done == 1   # the exported callback goes on with the schedule if trained further

def test_fine_tune_counts_epochs_across_its_fits():
    learn = zoo_learner(cbs=CoarseToFine(ZOO, coarse_epochs=2, total_epochs=3))
    probe = _probe(learn)
    learn.fine_tune(2, freeze_epochs=1)
    assert [(r['fit'], r['level']) for r in probe.records[::2]] == [(0, 2), (1, 2), (1, 0)]
    _check_switches(probe.records, 1)
    assert learn.coarse_to_fine.span_done == 3
    # the coarse head of the second fit is the one the first fit ended with: the split in between is undone exactly
    _close(probe.records[2]['probs'][2], probe.records[1]['probs'][2], eps=1e-5)

def test_optimiser_rebuilt_with_frozen_groups_and_schedule():
    learn = zoo_learner(cbs=CoarseToFine(ZOO, coarse_epochs=1))
    learn.freeze()
    body = [p.detach().clone() for p in learn.model[0][0].parameters()]   # the Linear of the frozen body
    class Watch(Callback):
        order = CoarseToFine.order + 1
        def after_train(self):
            if self.epoch == 0: self.hypers_before = [dict(h) for h in self.opt.hypers]
        def before_train(self):
            if self.epoch == 1:   # right after the switch
                self.head = output_linear(self.model)[1]
                self.head_init = [p.detach().clone() for p in self.head.parameters()]
                self.opt_params = set(self.opt.all_params().itemgot(0))
                self.hypers_after,self.frozen_idx = [dict(h) for h in self.opt.hypers],self.opt.frozen_idx
    learn.fit_one_cycle(2, 1e-2, cbs=(watch := Watch()))
    # the optimiser trains the new head
    assert watch.head.out_features == 10 and all(p in watch.opt_params for p in watch.head.parameters())
    # as the schedule left them, per group
    assert watch.hypers_after == watch.hypers_before and len(watch.hypers_after) == 2
    assert watch.frozen_idx == 1 and not any(p.requires_grad for p in learn.model[0][0].parameters())
    # batchnorm trains while frozen (train_bn)
    assert all(p.requires_grad for p in learn.model[0][1].parameters())
    assert all(not torch.equal(p, q) for p,q in zip(watch.head.parameters(), watch.head_init))   # the new head learned
    # the frozen group did not
    assert all(torch.equal(p, q) for p,q in zip(learn.model[0][0].parameters(), body))
    # the one-cycle schedule went on as in plain training
    plain = zoo_learner()
    plain.freeze()
    plain.fit_one_cycle(2, 1e-2)
    assert learn.recorder.lrs == plain.recorder.lrs and learn.recorder.hps['mom'] == plain.recorder.hps['mom']

def test_mid_epoch_switch_and_coarse_pct():
    learn = zoo_learner(cbs=CoarseToFine(ZOO, coarse_pct=0.375, level='family'))
    probe = _probe(learn)
    learn.fit(4, 1e-2)   # 1.5 epochs on the families
    assert [(r['when'], r['level']) for r in probe.records[:4]] == [('start', 1), ('end', 1), ('start', 1), ('end', 0)]
    assert all(math.isfinite(float(l)) for l in learn.recorder.losses)
    assert learn.recorder.values[1][2] is not None   # fine accuracy after the switch in epoch 2

def test_validate_get_preds_tta_lr_find_do_not_advance():
    learn = zoo_learner(cbs=CoarseToFine(ZOO, coarse_epochs=3, total_epochs=4))
    c2f = learn.coarse_to_fine
    head = output_linear(learn.model)[1]
    res = learn.lr_find(num_it=10, show_plot=False)
    assert math.isfinite(res.valley)
    assert output_linear(learn.model)[1] is head and c2f.span_done is None
    learn.fit(1, 1e-2)
    head = output_linear(learn.model)[1]
    assert head.out_features == 10 and c2f.span_done == 1
    learn.validate(); learn.get_preds(); learn.tta(n=2)
    learn.lr_find(num_it=10, show_plot=False)
    assert output_linear(learn.model)[1] is head and c2f.span_done == 1 and c2f.head_level == 0

def test_interrupted_fit_ends_fine_and_resumes():
    class Stop(Callback):
        def __init__(self, exc): self.exc = exc
        def after_batch(self):
            if self.training and self.iter == 3: raise self.exc
    learn = zoo_learner(cbs=CoarseToFine(ZOO, coarse_epochs=2, total_epochs=4))
    probe = _probe(learn)
    learn.fit(2, 1e-2, cbs=Stop(CancelFitException()))
    assert (output_linear(learn.model)[1].out_features == 10
            and learn.loss_func.__class__.__name__ == 'CrossEntropyLossFlat')
    with pytest.raises(KeyboardInterrupt): learn.fit(2, 1e-2, cbs=Stop(KeyboardInterrupt()))
    assert output_linear(learn.model)[1].out_features == 2   # fastai runs no callback after such an exception...
    learn.validate()                                          # ...the next use of the learner puts the fine head back
    assert output_linear(learn.model)[1].out_features == 10 and learn.coarse_to_fine.head_level == 0
    assert learn.metrics[0].name == 'accuracy' and learn.validate()[1] is not None
    learn.fit(1, 1e-2)
    # an interrupted fit ends its span: this one starts coarse again
    assert [r['level'] for r in probe.records] == [2, 2, 2, 2]
    assert learn.coarse_to_fine.span_done == 1

def test_hierarchical_loss_mixup_and_mixed_precision():
    for cbs in [MixUp(), _BF16Autocast()]:
        learn = zoo_learner(loss_func=HierarchicalLoss(ZOO, weights=[0.5, 0.3, 0.2]),
                            cbs=[CoarseToFine(ZOO, coarse_epochs=1), cbs])
        lf = learn.loss_func
        learn.fit(2, 1e-2)
        assert all(math.isfinite(float(l)) for l in learn.recorder.losses)
        assert learn.loss_func is lf and lf.reduction == 'mean'
    assert (set(learn._bf16_autocast.pred_dtypes) == {torch.bfloat16}
            and set(learn._bf16_autocast.loss_dtypes) == {torch.float32})

def test_to_fp16_runs_on_cpu():
    learn = zoo_learner(cbs=CoarseToFine(ZOO, coarse_epochs=1)).to_fp16()
    learn.fit(2, 1e-2)
    assert all(math.isfinite(float(l)) for l in learn.recorder.losses)

def test_fine_tune_with_to_fp16_and_bf16():
    "The three parts in one `fine_tune` under `to_fp16()`, and under (emulated) half-precision autocast"
    from fastai_hier.callback.temperature import TemperatureSchedule
    for mixed in [lambda l: l.to_fp16(), lambda l: l.add_cb(_BF16Autocast())]:
        temp = TemperatureSchedule(start=4.)
        learn = mixed(zoo_learner(cbs=[CoarseToFine(ZOO, coarse_epochs=1), temp], loss_func=HierarchicalLoss(ZOO)))
        learn.fine_tune(2, 1e-2, freeze_epochs=1)
        assert all(math.isfinite(float(l)) for l in learn.recorder.losses)
        assert (temp.temperatures[0] == 4. and temp.temperatures[-1] == 1.
                and output_linear(learn.model)[1].out_features == 10)

def test_trackers_only_watch_the_fine_phase(tmp_path):
    learn = zoo_learner(cbs=CoarseToFine(ZOO, coarse_epochs=2, total_epochs=4), path=tmp_path)
    save = SaveModelCallback(monitor='accuracy', fname='best')
    # all coarse: nothing saved or loaded
    learn.fit(1, 1e-2, cbs=[save, EarlyStoppingCallback(monitor='accuracy', patience=1)])
    assert not (tmp_path/'models'/'best.pth').exists()
    learn.fit(3, 1e-2, cbs=save)                    # coarse, then fine: saves and loads fine models
    assert (tmp_path/'models'/'best.pth').exists() and output_linear(learn.model)[1].out_features == 10
    assert save.best == max(v[2] for v in learn.recorder.values if v[2] is not None)

def test_clear_errors():
    with pytest.raises(ValueError, match='Give one of `coarse_epochs`, `coarse_pct` or `schedule`'): CoarseToFine(ZOO)
    with pytest.raises(ValueError, match="'species' is the fine level"):
        CoarseToFine(ZOO, coarse_epochs=1, level='species')
    with pytest.raises(ValueError, match="must be a positive number, got 0"): CoarseToFine(ZOO, schedule={"order": 0})
    with pytest.raises(ValueError, match="must be a positive number, got None"):
        CoarseToFine(ZOO, coarse_epochs=None, schedule={"family": None})
    with pytest.raises(ValueError, match="between 0 and 1"): CoarseToFine(ZOO, coarse_pct=1.5)
    with pytest.raises(ValueError, match=r"`schedule` is 2: give the training epochs at each coarse level"):
        CoarseToFine(ZOO, schedule=2)
    with pytest.raises(ValueError, match="Unknown level 'genus'"): CoarseToFine(ZOO, coarse_epochs=1, level='genus')
    learn = zoo_learner(cbs=CoarseToFine(ZOO, coarse_epochs=1))
    learn.model[1] = nn.Sequential(nn.Linear(32, 10), nn.BatchNorm1d(10))
    with pytest.raises(ValueError,
                       match=r"must be an `nn.Linear` \(the last module with parameters\), but its last module with "
                             r"parameters is a BatchNorm1d"):
        learn.fit(1)
    learn = zoo_learner(cbs=CoarseToFine(ZOO, coarse_epochs=1))
    learn.model[1] = nn.Linear(32, 7)
    with pytest.raises(ValueError, match="has 7 outputs but the hierarchy has 10 fine classes"): learn.fit(1)
    learn = zoo_learner(cbs=CoarseToFine(ZOO, coarse_epochs=2))
    with pytest.raises(ValueError,
                       match=r"would train all 2 epochs of its span on coarse classes \(2 epochs at \['order'\]\), "
                             r"and never the fine ones"):
        learn.fit(2)
    learn = zoo_learner(cbs=CoarseToFine(ZOO, coarse_epochs=2, total_epochs=3))
    learn.fit(1)
    with pytest.raises(ValueError, match="would take the schedule of CoarseToFine to epoch 4 of `total_epochs=3`"):
        learn.fit(3)

DDP_SCRIPT = '''
import os, sys, torch, torch.distributed as dist, torch.multiprocessing as mp
sys.path.insert(0, {tests!r})
from torch.nn.parallel import DistributedDataParallel
from fastai.vision.all import Callback
from test_coarse_to_fine import ZOO, zoo_learner, CoarseToFine, output_linear

class DDP(Callback):
    "What `DistributedTrainer` does to the model, without Accelerate: wrap it in DDP for the fit"
    order = 11
    def before_fit(self): self.learn.model = DistributedDataParallel(self.learn.model)
    def after_fit(self): self.learn.model = self.learn.model.module

class Widths(Callback):
    order = 12
    def before_train(self): self.widths.append((type(self.model).__name__, output_linear(self.model)[1].out_features))

def worker(rank, out):
    dist.init_process_group('gloo', rank=rank, world_size=2)
    torch.set_num_threads(1)
    # each process trains on its own data: only the gradients averaged by DDP keep the models equal
    learn = zoo_learner(cbs=[CoarseToFine(ZOO, coarse_epochs=1), DDP(), w := Widths()], data_seed=rank)
    w.widths = []
    learn.fit(3, 1e-2)
    torch.save(dict(params=[p.detach() for p in learn.model.parameters()], widths=w.widths),
               os.path.join(out, f'rank{{rank}}.pt'))
    dist.destroy_process_group()

if __name__ == '__main__':
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=sys.argv[2])
    mp.spawn(worker, args=(sys.argv[1],), nprocs=2)
'''

def test_ddp_two_cpu_processes(tmp_path):
    ("Distributed data parallel on the gloo backend: the regrouped model is wrapped again, so the two "
     "processes stay in sync")
    import os, socket, subprocess, sys
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    script = tmp_path/'ddp.py'
    script.write_text(DDP_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__))))
    res = subprocess.run([sys.executable, str(script), str(tmp_path), str(port)], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    r0,r1 = [torch.load(tmp_path/f'rank{r}.pt') for r in (0, 1)]
    assert (r0['widths'] == r1['widths']
            == [('DistributedDataParallel', 2), ('DistributedDataParallel', 10), ('DistributedDataParallel', 10)])
    assert len(r0['params']) == len(r1['params'])
    for p,q in zip(r0['params'], r1['params']): _close(p, q, eps=1e-6)

def test_coarse_phase_longer_than_the_span_refused_when_made():
    with pytest.raises(ValueError, match="would train all 3 epochs of its span on coarse classes"):
        CoarseToFine(ZOO, coarse_epochs=3, total_epochs=3)
    with pytest.raises(ValueError, match="would train all 3 epochs"):
        CoarseToFine(ZOO, schedule={'order': 1, 'family': 2.5}, total_epochs=3)
    CoarseToFine(ZOO, coarse_epochs=2.5, total_epochs=3)


def test_partial_labels():
    ("Every other training item labelled with its family only (a node index): both phases learn from them with "
     "the partial-label loss")
    learn = zoo_learner(cbs=CoarseToFine(ZOO, coarse_epochs=1, total_epochs=3),
                        loss_func=HierarchicalLoss(ZOO, partial_labels=True), partial=True)
    # families: node indices past the 10 species
    assert all(learn.dls.train_ds[i][1] >= len(ZOO) for i in range(0, 320, 2))
    learn.fit(3, 1e-2)
    assert torch.stack(learn.recorder.losses).isfinite().all()
    values = learn.recorder.values
    assert values[0][3] is None or math.isnan(values[0][3])   # the coarse epoch: no fine accuracy
    _,_,fine,family,order = values[-1]
    # measured 0.75, 0.81, 0.97 (0.80, 0.83, 0.98 fully labelled); chance 0.1
    assert fine > 0.6 and family > 0.7 and order > 0.9, values[-1]

def test_training_goes_on_after_the_span(tmp_path):
    ("After `fine_tune` the three schedules are done: `fit` and `fit_one_cycle` train the fine head at temperature 1 "
     "with the last level weights, also after `save`/`load`, `export`/`load_learner`, `lr_find` and `to_fp16`")
    from fastai_hier.callback.temperature import TemperatureSchedule
    from fastai_hier.callback.level_schedule import LevelWeightSchedule
    class Seen(Callback):
        "The head's width, the loss's temperature and fine weight at each training batch"
        order = 100
        def __init__(self): self.rows = []
        def after_loss(self):
            if self.training:
                lf = self.learn.loss_func
                self.rows.append((self.learn.pred.shape[-1], lf.temperature, lf.level_weights['species']))
    cbs = [CoarseToFine(ZOO, coarse_epochs=1), TemperatureSchedule(4.),
           LevelWeightSchedule({0: {'order': 1.}, 1: {'species': 0.8, 'order': 0.2}})]
    learn = zoo_learner(cbs=cbs, loss_func=HierarchicalLoss(ZOO, level_weights={'species': 1.}), path=tmp_path)
    learn.fine_tune(1, 1e-2, freeze_epochs=1, cbs=(s := Seen()))
    assert [w for w,_,_ in s.rows] == [2]*10 + [10]*10 and s.rows[0][1:] == (4., 0.) and s.rows[-1][1:] == (1., 0.8)
    def trains_on(learn, fit):
        fit(learn, s := Seen())
        rows = s.rows
        assert len(rows) == 10 and set(rows) == {(10, 1., 0.8)}, set(rows)
        assert all(math.isfinite(float(l)) for l in learn.recorder.losses)
    trains_on(learn, lambda l,cb: l.fit(1, 1e-2, cbs=cb))
    trains_on(learn, lambda l,cb: l.fit_one_cycle(1, 1e-2, cbs=cb))
    head = output_linear(learn.model)[1]
    assert math.isfinite(learn.lr_find(num_it=10, show_plot=False).valley) and output_linear(learn.model)[1] is head
    loss = learn.validate()[0]
    learn.save('trained'); learn.fit(1, 1e-2); learn.load('trained')
    _close(learn.validate()[0], loss, eps=1e-6)
    trains_on(learn, lambda l,cb: l.fit(1, 1e-2, cbs=cb))
    learn.export('trained.pkl')
    loaded = load_learner(tmp_path/'trained.pkl')
    loaded.dls = learn.dls   # an exported learner keeps no data: give it the data to train on
    trains_on(loaded, lambda l,cb: l.fit_one_cycle(1, 1e-2, cbs=cb))
    trains_on(loaded, lambda l,cb: l.fine_tune(0, 1e-2, freeze_epochs=1, cbs=cb))
    trains_on(loaded.to_fp16(), lambda l,cb: l.fit(1, 1e-2, cbs=cb))
