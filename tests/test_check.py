"`check_loss` on every loss the package ships, and what `raise_on_fail` reports"
import pytest, torch
from fastai.basics import CrossEntropyLossFlat, accuracy
from fastai_hier.all import HierarchicalLoss
from fastai_hier.check import check_loss

# Every loss the package ships, made from the PETS hierarchy: add new losses (or options of a loss) here
SHIPPED_LOSSES = [
    pytest.param(lambda hier: HierarchicalLoss(hier), id='HierarchicalLoss'),
    pytest.param(lambda hier: HierarchicalLoss(hier, weights={'breed': 0.7, 'species': 0.3}, temperature=2.,
                                               weight=torch.linspace(0.5, 2., len(hier))),
                 id='HierarchicalLoss(weights, temperature, class weights)'),
    pytest.param(lambda hier: HierarchicalLoss(hier, label_smoothing=0.1, weight=torch.linspace(0.5, 2., len(hier))),
                 id='HierarchicalLoss(label_smoothing, class weights)'),
]

@pytest.mark.parametrize('make_loss', SHIPPED_LOSSES)
def test_shipped_losses_pass(make_loss, dls, hier):
    loss = make_loss(hier)
    df = check_loss(loss, dls=dls, raise_on_fail=True)
    assert list(df.columns) == ['check', 'status', 'reason'] and len(df) == 12
    status = df.set_index('check').status
    assert set(status) <= {'passed', 'n/a'}
    # a hierarchical loss is checked against cross-entropy
    if hasattr(loss, 'weights'): assert status['fine level = CE'] == 'passed'
    # the targets were a real batch's: `get_preds` gave one loss for each of its 32 items
    assert df.set_index('check').reason['get_preds(with_loss)'] == f'{dls.bs} per-item losses'

def test_raise_on_fail_names_the_failed_checks():
    with pytest.raises(ValueError) as e: check_loss(accuracy, n_classes=5, raise_on_fail=True)
    lines = str(e.value).splitlines()
    assert lines[0] == 'accuracy failed 8 of 12 checks:'
    assert [l.split(':')[0] for l in lines[1:]] == ['- gradient', '- reduction', '- MixUp',
                                                    '- get_preds(with_loss)', '- gradcheck',
                                                    '- confident logits', '- batch size 1', '- activation/decodes']
    assert 'accuracy-type metrics are not differentiable' in lines[1] and 'HierarchicalLoss' in lines[1]

def test_bad_arguments(dls):
    with pytest.raises(ValueError, match='is a class: pass an instance'): check_loss(CrossEntropyLossFlat, n_classes=10)
    with pytest.raises(ValueError, match='needs the number of classes'): check_loss(CrossEntropyLossFlat())
    with pytest.raises(ValueError, match='n_classes=10 but `dls.c` is 37'):
        check_loss(CrossEntropyLossFlat(), n_classes=10, dls=dls)
