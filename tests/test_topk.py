"`SmoothTopKLoss` and `LossCheck` beyond the notebook: random stability sweeps, real learners, `check_loss`"
import itertools, math
import pytest, torch
from fastai.vision.all import Learner, accuracy, nn, partial, resnet18, set_seed, untar_data, URLs, vision_learner
from fastai_hier.data.pets import pets_dls
from fastai_hier.metrics import flat_top_k_accuracy
from fastai_hier.check import check_loss
from fastai_hier.all import LossCheck, SmoothTopKLoss, SmoothTopKSVM, log_esp
from test_learner import _BF16Autocast

@pytest.fixture(scope='module')
def tiny_dls():
    "3 images per breed at 32 px: enough for a few batches through a real vision learner"
    return pets_dls(untar_data(URLs.PETS)/'images', size=32, bs=16, per_breed=3)

def _brute(s, y, k, tau, alpha):
    "The definition, enumerating the sets of k classes"
    sets = list(itertools.combinations(range(s.shape[-1]), k))
    score = torch.stack([s[:, list(A)].sum(1)/k for A in sets], 1)
    miss = torch.tensor([[float(yi not in A) for A in sets] for yi in y.tolist()], dtype=s.dtype)
    with_y = score.masked_fill(miss.bool(), -float('inf'))
    return tau*torch.logsumexp((alpha*miss + score)/tau, 1) - tau*torch.logsumexp(with_y/tau, 1)

@pytest.mark.parametrize('seed', range(5))
def test_brute_force_random_settings(seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(10):
        n = int(torch.randint(2, 10, (), generator=g))
        k = int(torch.randint(1, n, (), generator=g))
        tau,alpha = 10**float(torch.empty(()).uniform_(-2, 0.5, generator=g)),float(torch.rand((), generator=g))*2
        s = torch.randn(5, n, dtype=torch.float64, generator=g)*float(torch.rand((), generator=g)*10)
        y = torch.randint(0, n, (5,), generator=g)
        res = SmoothTopKSVM(k, tau, alpha, reduction='none')(s, y)
        assert torch.allclose(res, _brute(s, y, k, tau, alpha), atol=1e-9, rtol=1e-9), (n, k, tau, alpha)

@pytest.mark.parametrize('n', [6, 37, 100])
def test_float32_gradients_finite_and_accurate(n):
    "Small tau, large scores, ties and near-ties: finite float32 gradients that agree with float64"
    g = torch.Generator().manual_seed(n)
    for tau,k,scale in itertools.product([1e-3, 1e-2, 1.], [1, 3, 5], [1., 1e2, 1e4]):
        s = (torch.randn(16, n, generator=g)*scale)
        s[:4, :3] = s[:4, 3:4]          # exact ties with the target's neighbours
        y = torch.randint(0, n, (16,), generator=g)
        x = s.clone().requires_grad_()
        loss = SmoothTopKLoss(k=k, tau=tau, reduction='sum')(x, y)
        loss.backward()
        assert loss.isfinite() and x.grad.isfinite().all(), (tau, k, scale)
        x64 = s.double().requires_grad_()
        SmoothTopKLoss(k=k, tau=tau, reduction='sum')(x64, y).backward()
        assert torch.allclose(x.grad.double(), x64.grad, atol=1e-4), (tau, k, scale,
                                                                      (x.grad.double()-x64.grad).abs().max())

def test_log_esp_large_spread():
    "Coefficients 1e5 nats apart: no underflow to -inf, exact in float64"
    x = torch.tensor([[1e5, 0., -1e5, 3.]], dtype=torch.float64)
    res = log_esp(x, 4)
    assert res.isfinite().all()
    assert torch.allclose(res[0, 4], x.sum()) and torch.allclose(res[0, 1], torch.tensor(1e5, dtype=torch.float64))

@pytest.mark.parametrize('loss_func', [accuracy, partial(flat_top_k_accuracy, k=5)])
def test_loss_check_in_vision_learner(tiny_dls, loss_func):
    learn = vision_learner(tiny_dls, resnet18, pretrained=False, loss_func=loss_func, cbs=LossCheck())
    with pytest.raises(ValueError, match='returned a value with no gradient.*not differentiable.*SmoothTopKLoss'):
        learn.fit(1)

def test_trains_under_bf16_autocast(tiny_dls):
    "A linear model on the images: bfloat16 convolutions are slow on a CPU, and the loss is what is under test"
    set_seed(0)
    learn = Learner(tiny_dls, nn.Sequential(nn.Flatten(), nn.Linear(3*32*32, 37)),
                    loss_func=SmoothTopKLoss(k=5, tau=0.1),
                    metrics=[accuracy, flat_top_k_accuracy], cbs=[_BF16Autocast(), LossCheck()])
    learn.fit(1, 1e-3)
    cb = learn._bf16_autocast
    assert set(cb.pred_dtypes) == {torch.bfloat16} and set(cb.loss_dtypes) == {torch.float32}
    assert all(math.isfinite(float(l)) for l in learn.recorder.losses)

@pytest.mark.parametrize('loss', [SmoothTopKLoss(k=5), SmoothTopKLoss(k=2, tau=0.01, alpha=0.5)])
def test_check_loss_passes(loss):
    check_loss(loss, n_classes=37, raise_on_fail=True)
