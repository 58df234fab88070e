"`HierarchicalLoss` and the metrics inside real fastai learners, on the PETS sample"
import math, subprocess, sys, textwrap
import pytest, torch
from fastai.vision.all import (L, Callback, ClassificationInterpretation, CutMix, MixUp, accuracy,
                               cnn_learner, resnet18, set_seed, tensor)
from fastcore.test import test_close as _close
from fastai_hier.all import (HierarchicalLoss, LevelAccuracy, MistakeSeverity, HierarchicalDistance,
                             CoarseToFine, pets_hierarchy)
from fastai.vision.all import vision_learner, CrossEntropyLossFlat
from conftest import small_learner

def test_issue_example_trains(dls, hier):
    "The README's example, with `cnn_learner`, on small images and without pretrained weights"
    set_seed(0)
    learn = cnn_learner(dls, resnet18, pretrained=False,
                        loss_func=HierarchicalLoss(hier, weights={'breed': 0.7, 'species': 0.3}),
                        metrics=[accuracy, LevelAccuracy(hier, 'species'), MistakeSeverity(hier)])
    learn.fine_tune(2, base_lr=2e-3)
    losses = L(learn.recorder.losses).map(float)
    assert all(math.isfinite(l) for l in losses)
    assert learn.recorder.metric_names[3:6] == ['accuracy', 'species_accuracy', 'mistake_severity']
    assert 0 <= learn.recorder.values[-1][3] <= 1
    # it learns: a 2-epoch run from scratch on 270 images is too noisy to show it, so fit one batch
    # (the epoch losses above depend on the order pytest runs the tests in)
    x, y = dls.one_batch()
    learn.model.train()
    opt = torch.optim.Adam(learn.model.parameters(), lr=1e-3)
    step_losses = []
    for _ in range(15):
        loss = learn.loss_func(learn.model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        step_losses.append(loss.item())
    assert step_losses[-1] < 0.5*step_losses[0], step_losses

def test_export_load_learner_fresh_process(dls, hier, tmp_path):
    learn = small_learner(dls, hier, loss_func=HierarchicalLoss(hier, weights=[0.6, 0.4], temperature=1.5))
    learn.fit(1, 1e-3)
    learn.export(tmp_path/'export.pkl')
    img = dls.valid_ds.items[0]
    _, _, probs = learn.predict(img)
    # a fresh interpreter that never imports fastai_hier itself: unpickling must find everything by reference
    code = textwrap.dedent(f"""
        from fastai.vision.all import *
        learn = load_learner({str(tmp_path/'export.pkl')!r})
        lf = learn.loss_func
        probs = learn.predict({str(img)!r})[2].tolist()   # predict draws a progress bar on stdout: mark our lines
        print('LOSS', type(lf).__name__, lf.weights, lf.temperature)
        print('PROBS', probs)
    """)
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    lines = dict(l.split(' ', 1) for l in out.splitlines() if l.startswith(('LOSS ', 'PROBS ')))
    assert lines['LOSS'] == "HierarchicalLoss {'breed': 0.6, 'species': 0.4} 1.5"
    _close(tensor(eval(lines['PROBS'])), probs, eps=1e-5)

@pytest.mark.parametrize('cb', [MixUp, CutMix])
def test_mixup_cutmix(dls, hier, cb):
    "MixUp and CutMix call the loss with reduction='none' and mix per-item losses"
    learn = small_learner(dls, hier, cbs=cb())
    learn.fit(1, 1e-3)
    assert all(math.isfinite(float(l)) for l in learn.recorder.losses)
    assert learn.loss_func.reduction == 'mean'          # restored by NoneReduce
    assert isinstance(learn.loss_func, HierarchicalLoss) # unwrapped after fit

class _BF16Autocast(Callback):
    ("Emulates mixed precision on the CPU: bfloat16 autocast around the forward pass and the loss, "
     "predictions left in bfloat16")
    order = 10
    def before_batch(self): self.ctx = torch.autocast('cpu', dtype=torch.bfloat16); self.ctx.__enter__()
    def after_pred(self): self.pred_dtypes.append(self.pred.dtype)
    def after_loss(self): self.loss_dtypes.append(self.loss.dtype); self.ctx.__exit__(None, None, None)
    def before_fit(self): self.pred_dtypes,self.loss_dtypes = [],[]

def test_bf16_autocast(dls, hier):
    learn = small_learner(dls, hier, cbs=_BF16Autocast())
    learn.fit(1, 1e-3)
    cb = learn._bf16_autocast
    assert set(cb.pred_dtypes) == {torch.bfloat16}   # the loss really got half-precision predictions
    assert set(cb.loss_dtypes) == {torch.float32}    # and computed in float32
    assert all(math.isfinite(float(l)) for l in learn.recorder.losses)
    assert all(math.isfinite(v) for v in learn.recorder.values[-1][:2])

def test_to_fp16_runs_on_cpu(dls, hier):
    "`to_fp16()` is written for CUDA; on a CPU it must at least not break the loss"
    learn = small_learner(dls, hier).to_fp16()
    learn.fit(1, 1e-3)
    assert all(math.isfinite(float(l)) for l in learn.recorder.losses)

def test_lr_find(dls, hier):
    learn = small_learner(dls, hier)
    res = learn.lr_find(num_it=20, show_plot=False)
    assert math.isfinite(res.valley) and res.valley > 0

def test_wrong_head_width_is_a_clear_error(dls, hier):
    learn = small_learner(dls, hier, n_out=10)
    with pytest.raises(ValueError,
                       match='predictions have 10 classes on the class axis but the hierarchy has 37 fine classes'):
        learn.fit(1)

def test_interpretation(dls, hier):
    learn = small_learner(dls, hier)
    interp = ClassificationInterpretation.from_learner(learn)
    losses, idx = interp.top_losses(5)
    assert losses.shape == (5,) and (losses[:-1] >= losses[1:]).all()
    assert interp.confusion_matrix().sum() == len(dls.valid_ds)

def test_every_hierarchy_is_checked_against_the_vocab(dls, hier):
    ("A hierarchy in another order than `dls.vocab`, in a metric or a callback of a learner whose loss has none, is "
     "refused when the learner is made, and stops a fit before it trains when it came later")
    wrong = pets_hierarchy(list(dls.vocab)[::-1])
    for kw,what in [(dict(metrics=LevelAccuracy(wrong, 'species')), 'The metric species_accuracy'),
                    (dict(metrics=HierarchicalDistance(wrong)), 'The metric hier_distance@5'),
                    (dict(cbs=CoarseToFine(wrong, coarse_epochs=1)), 'The callback CoarseToFine')]:
        with pytest.raises(ValueError, match=f"{what} orders its fine classes unlike `dls.vocab`"):
            vision_learner(dls, resnet18, pretrained=False, loss_func=CrossEntropyLossFlat(), **kw) # where it is made
        learn = vision_learner(dls, resnet18, pretrained=False, loss_func=CrossEntropyLossFlat())
        for k,v in kw.items(): setattr(learn, k, v) if k == 'metrics' else learn.add_cbs(v)
        with pytest.raises(ValueError, match=f"{what} orders its fine classes unlike `dls.vocab`"): learn.fit(1)
    learn = vision_learner(dls, resnet18, pretrained=False)
    learn.loss_func = HierarchicalLoss(wrong)
    with pytest.raises(ValueError, match="The loss HierarchicalLoss orders"): learn.lr_find(num_it=2, show_plot=False)

def test_compiled_model_and_loss(dls, hier):
    ("`torch.compile`: a learner with a compiled model trains with the loss, and the loss's inner module compiled "
     "whole gives the same losses")
    from fastai.vision.all import Learner, ConvLayer, Flatten, nn
    set_seed(0)
    model = nn.Sequential(ConvLayer(3, 16, stride=4), ConvLayer(16, 32, stride=4), nn.AdaptiveAvgPool2d(1), Flatten(),
                          nn.Linear(32, len(hier)))
    lf = HierarchicalLoss(hier, weights={'breed': 0.7, 'species': 0.3})
    learn = Learner(dls, torch.compile(model), loss_func=lf, metrics=LevelAccuracy(hier, 'species'))
    learn.fit(1, 1e-3)
    assert all(math.isfinite(float(l)) for l in learn.recorder.losses)
    out,y = learn.get_preds(act=lambda o: o)   # the compiled model's logits, through fastai's loop
    eager = lf(out, y)
    # the inner module gets plain tensors: dynamo does not trace `TensorBase`
    lf.func = torch.compile(lf.func, fullgraph=True)
    _close(lf(out, y), eager, eps=1e-5)
    learn.fit(1, 1e-3)
    assert all(math.isfinite(float(l)) for l in learn.recorder.losses)
