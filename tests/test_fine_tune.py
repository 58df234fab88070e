("`fine_tune` as users write it, on the PETS sample: each schedule callback spans both fits, and the three "
 "parts train together")
import pytest, torch
from fastai.vision.all import Callback, MixUp, load_learner
from fastai_hier.all import CoarseToFine, TemperatureSchedule, TrainingTemperature, output_linear
from conftest import small_learner

class Widths(Callback):
    "The width of the model's output at each training batch, per epoch"
    order = CoarseToFine.order + 1
    def before_fit(self): self.seen = getattr(self, 'seen', [])
    def before_train(self): self.seen.append(set())
    def after_pred(self):
        if self.training: self.seen[-1].add(self.pred.shape[-1])

def test_temperature_spans_fine_tune(dls, hier):
    sched = TemperatureSchedule(start=4.)
    learn = small_learner(dls, hier, cbs=sched)
    learn.fine_tune(2, freeze_epochs=1)
    temps, n = sched.temperatures, len(dls.train)
    assert len(temps) == 3*n and temps[0] == 4.
    assert all(a > b for a,b in zip(temps, temps[1:])), "one monotone annealing, no restart at the unfreeze"
    assert temps[n-1] > 1.5 and temps[-1] == 1.
    assert learn.loss_func.temperature == 1. and not hasattr(learn, 'fit_span')

@pytest.mark.parametrize('coarse_epochs,widths', [(1, [2, 37, 37]), (2, [2, 2, 37])])
def test_coarse_to_fine_spans_fine_tune(dls, hier, coarse_epochs, widths):
    "The coarse epochs come first, in the frozen fit, and go on into the unfrozen one when there are more of them"
    learn = small_learner(dls, hier, cbs=[CoarseToFine(hier, coarse_epochs=coarse_epochs), Widths()])
    learn.fine_tune(2, freeze_epochs=1)
    assert learn.widths.seen == [{w} for w in widths]
    assert output_linear(learn.model)[1].out_features == 37
    # the unfrozen fit's table: no breed accuracy for an epoch that ends on the coarse classes
    assert (learn.recorder.values[0][2] is None) == (widths[1] == 2) and learn.recorder.values[-1][2] is not None

def test_coarse_to_fine_longer_than_fine_tune(dls, hier):
    learn = small_learner(dls, hier, cbs=CoarseToFine(hier, coarse_epochs=3))
    with pytest.raises(ValueError, match=r'would train all 3 epochs of its span on coarse classes'):
        learn.fine_tune(2, freeze_epochs=1)
    assert not hasattr(learn, 'fit_span')

def test_three_parts_in_one_fine_tune(dls, hier, tmp_path):
    ("`HierarchicalLoss`, `TemperatureSchedule` and `CoarseToFine` in one `fine_tune`, with `lr_find` before, `MixUp` "
     "during, and `export` after")
    temp, c2f = TemperatureSchedule(start=4.), CoarseToFine(hier, coarse_epochs=1)
    learn = small_learner(dls, hier, cbs=[temp, c2f, Widths()], path=tmp_path)
    learn.metrics += TrainingTemperature()
    learn.lr_find(num_it=5, show_plot=False)
    learn.fine_tune(1, freeze_epochs=1, cbs=MixUp())
    assert learn.widths.seen == [{37}, {2}, {37}]             # `lr_find` on the fine classes, outside the span
    assert temp.temperatures[len(dls.train)-1] > 1.5 and temp.temperatures[-1] == 1.
    assert [v[-1] for v in learn.recorder.values][-1] == 1.     # the temperature column of the training table
    probs, targ = learn.get_preds()
    assert probs.shape == (len(dls.valid_ds), 37)
    torch.testing.assert_close(probs.sum(1), torch.ones(len(probs)))
    learn.export('three.pkl')
    again = load_learner(tmp_path/'three.pkl')
    torch.testing.assert_close(again.get_preds(dl=learn.dls.valid)[0], probs)
