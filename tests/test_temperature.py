"`TemperatureSchedule` and `fit_temperature` inside real fastai learners, on the PETS sample"
import math
import matplotlib; matplotlib.use('Agg')
import pytest, torch
from fastai.vision.all import (URLs, Callback, CrossEntropyLossFlat, CutMix, MixUp, SchedCos, accuracy,
                               cnn_learner, load_learner, noop, resnet18, set_seed, untar_data)
from fastcore.test import test_close as _close
from fastai_hier.all import HierarchicalLoss, LevelAccuracy, pets_dls, pets_hierarchy
from fastai_hier.all import (ECE, InferenceTemperature, TemperatureSchedule, TrainingTemperature,
                                     expected_calibration_error)
from conftest import small_learner
from test_learner import _BF16Autocast

class _Raw(Callback):
    "Keeps the predictions as the model made them, before `TemperatureSchedule` (order 65) may divide them"
    order = 64
    def after_pred(self): self.raw = self.pred.detach()

class _Seen(Callback):
    "Records per batch whether it was training and the temperature the loss really computed at"
    order = 70
    def __init__(self): self.seen = []
    def after_pred(self):
        lf = self.learn.loss_func
        lf = getattr(getattr(lf, '__self__', None), 'old_lf', lf)  # under MixUp/CutMix
        ratio = (self.learn._raw.raw.float()/self.pred.detach().float()).median().item() # logits divided by this
        self.seen.append((self.training, getattr(lf, 'temperature', 1.)*ratio))
    def train(self): return [t for tr,t in self.seen if tr]
    def valid(self): return [t for tr,t in self.seen if not tr]

def _spies(): return [_Raw(), _Seen()]

@pytest.fixture(scope='module')
def tiny():
    "3 images a breed at 32 px: an epoch in a fraction of a second, for the mechanics"
    tiny = pets_dls(untar_data(URLs.PETS)/'images', size=32, bs=16, per_breed=3)
    return tiny,pets_hierarchy(tiny.vocab)

@pytest.fixture(scope='module')
def tuned(tiny):
    "The issue's example: `cnn_learner`, a schedule from 4 spanning both fits of `fine_tune(1)`"
    dls,hier = tiny
    set_seed(0)
    learn = cnn_learner(dls, resnet18, pretrained=False,
                        loss_func=HierarchicalLoss(hier, weights={'breed': 0.7, 'species': 0.3}),
                        metrics=[accuracy, LevelAccuracy(hier, 'species'), ECE(), TrainingTemperature()],
                        cbs=[TemperatureSchedule(4., total_epochs=2)] + _spies())
    learn.fine_tune(1)
    return learn

def test_fine_tune_spanned(tuned):
    temps,n = tuned.temperature_schedule.temperatures,len(tuned.dls.train)
    assert len(temps) == 2*n
    _close(temps, [SchedCos(4., 1.)(b/(2*n-1)) for b in range(2*n)])
    assert temps[0] == 4. and temps[-1] == 1.                  # exactly `end` on the last training batch
    assert abs(temps[n] - temps[n-1]) < 3/n                    # no jump back to 4 at the unfreeze
    assert tuned._seen.train() == temps                        # the loss really computed at these
    assert set(tuned._seen.valid()) == {1.}                    # and validated at 1
    assert tuned.loss_func.temperature == 1.
    assert tuned.recorder.hps['temperature'] == temps[n:]      # the last fit, beside its learning rate
    assert len(tuned.recorder.hps['lr']) == n
    tuned.recorder.plot_sched()
    assert [v[-1] for v in tuned.recorder.values] == [temps[-1]]  # the `TrainingTemperature` column

def test_inference_does_not_move_it(tuned):
    cb = tuned.temperature_schedule
    state = (cb.temperatures.copy(), cb.span_start, cb.span_done, cb.in_fit)
    tuned._seen.seen = []
    tuned.validate(); tuned.get_preds(); tuned.tta(n=1); tuned.predict(tuned.dls.valid_ds.items[0])
    assert (cb.temperatures, cb.span_start, cb.span_done, cb.in_fit) == state
    assert tuned._seen.train() == [] and set(tuned._seen.valid()) == {1.}

def test_export_predicts_at_temperature_1(tuned, tmp_path):
    tuned.export(tmp_path/'export.pkl')
    learn = load_learner(tmp_path/'export.pkl')
    assert isinstance(learn.temperature_schedule, TemperatureSchedule) and learn.loss_func.temperature == 1.
    img = tuned.dls.valid_ds.items[0]
    x = learn.dls.test_dl([img]).one_batch()[0]
    with torch.no_grad(): logits = learn.model.eval()(x)
    _close(learn.predict(img)[2], logits[0].softmax(-1), eps=1e-5)
    _close(learn.predict(img)[2], tuned.predict(img)[2], eps=1e-5)

@pytest.mark.parametrize('mix', [MixUp, CutMix])
def test_mixup_cutmix(tiny, mix):
    "They put their own `lf` in place of the loss during training: the schedule must reach the real one"
    dls,hier = tiny
    learn = small_learner(dls, hier, cbs=[mix(), TemperatureSchedule(4.)] + _spies())
    learn.fit(1, 1e-3)
    temps = learn.temperature_schedule.temperatures
    assert learn._seen.train() == temps and temps[-1] == 1.
    assert set(learn._seen.valid()) == {1.}
    assert isinstance(learn.loss_func, HierarchicalLoss) and learn.loss_func.temperature == 1.

def test_other_loss_bf16_fit_one_cycle(tiny):
    "Without a temperature of its own, the loss gets the predictions divided, bfloat16 ones included"
    dls,hier = tiny
    learn = small_learner(dls, hier, loss_func=CrossEntropyLossFlat(),
                          cbs=[_BF16Autocast(), TemperatureSchedule(3.)] + _spies())
    learn.fit_one_cycle(1, 1e-3)
    temps = learn.temperature_schedule.temperatures
    assert set(learn._bf16_autocast.pred_dtypes) == {torch.bfloat16}
    _close(learn._seen.train(), temps, eps=0.02)               # bfloat16 has 8 bits of mantissa
    assert set(learn._seen.valid()) == {1.}
    assert temps[0] == 3. and temps[-1] == 1.
    assert all(math.isfinite(float(l)) for l in learn.recorder.losses)

def test_to_fp16(tiny):
    dls,hier = tiny
    learn = small_learner(dls, hier, cbs=TemperatureSchedule(4.)).to_fp16()
    learn.fit(1, 1e-3)
    assert learn.temperature_schedule.temperatures[-1] == 1. and learn.loss_func.temperature == 1.
    assert all(math.isfinite(float(l)) for l in learn.recorder.losses)

def test_lr_find_leaves_it_alone(tiny):
    dls,hier = tiny
    learn = small_learner(dls, hier, cbs=[TemperatureSchedule(4.)] + _spies())
    learn.lr_find(num_it=8, show_plot=False)
    assert set(learn._seen.train()) == {1.}                    # trained at the loss's own temperature
    assert learn.temperature_schedule.temperatures == [] and learn.loss_func.temperature == 1.

def test_fit_temperature_overconfident(tiny):
    "Logits blown up 5 times: the fitted temperature lowers the NLL and the ECE and changes no prediction"
    dls,hier = tiny
    learn = small_learner(dls, hier)
    learn.metrics = [accuracy, ECE()]
    learn.fit(1, 1e-3)
    with torch.no_grad(): learn.model[-1][-1].weight.mul_(5)
    probs,targ = learn.get_preds()
    ece_before = learn.validate()[-1]
    res = learn.fit_temperature()
    probs2,_ = learn.get_preds()
    assert res.temperature > 1 and learn.loss_func.temperature == res.temperature
    assert res.nll_after < res.nll_before
    assert res.ece_after <= res.ece_before, res
    _close(res.ece_before, ece_before, eps=1e-5)
    _close(learn.validate()[-1], res.ece_after, eps=1e-5)
    assert (probs2.argmax(-1) == probs.argmax(-1)).all()       # accuracy unchanged
    _close(res.accuracy, (probs.argmax(-1) == targ).float().mean())
    _close(expected_calibration_error(probs2, targ), res.ece_after, eps=1e-5)

def test_fit_temperature_other_loss_export(tiny, tmp_path):
    "A loss without a temperature: an `InferenceTemperature` callback, kept by `export`"
    dls,hier = tiny
    learn = small_learner(dls, hier, loss_func=CrossEntropyLossFlat())
    logits,_ = learn.get_preds(act=noop)
    res = learn.fit_temperature()
    assert learn.inference_temperature.temperature == res.temperature
    _close(learn.get_preds()[0], (logits/res.temperature).softmax(-1), eps=1e-5)
    learn.export(tmp_path/'export.pkl')
    loaded,img = load_learner(tmp_path/'export.pkl'),dls.valid_ds.items[0]
    assert loaded.inference_temperature.temperature == res.temperature
    _close(loaded.predict(img)[2], learn.predict(img)[2], eps=1e-5)
    assert isinstance(loaded.cbs.filter(lambda o: isinstance(o, InferenceTemperature))[0], InferenceTemperature)
