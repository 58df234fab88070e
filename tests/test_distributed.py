"""fastai's own distributed training (`Learner.distrib_ctx`, Accelerate, DDP) with our loss, metrics and callbacks:
two CPU processes on the gloo backend, launched with `accelerate launch`; each runs `distributed_worker.py`"""
import json, math, os, socket, subprocess, sys
from collections import Counter
from pathlib import Path
import pytest, torch

pytest.importorskip('accelerate') # `fastai.distributed` needs it; the `dev` extra installs it
pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EPOCHS,BS = 2,16 # the worker's defaults

class NotGathered(Exception):
    "A metric whose distributed value is not its value in one process"

def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

def _launch(out:Path, *args, script:Path=HERE/'distributed_worker.py', tries=3):
    "Run `script` (the worker) in 2 processes; the JSON of each rank, and its parameters where it saved them"
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore',
               PYTHONPATH=os.pathsep.join(p for p in [str(ROOT), os.environ.get('PYTHONPATH')] if p))
    for i in range(tries):
        port = _free_port() # another process may take it before the launcher binds it: then try another
        # as nbs/85_distributed.md says: `accelerate launch` (on CPUs too, `--multi_gpu` starts the processes)
        cmd = [sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2',
               '--num_machines', '1',
               '--mixed_precision', 'no', '--dynamo_backend', 'no', '--main_process_ip', '127.0.0.1',
               '--main_process_port', str(port), str(script), str(out), *args]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env, cwd=ROOT)
        if res.returncode == 0 or 'address already in use' not in (res.stdout + res.stderr).lower(): break
    assert res.returncode == 0, f'{res.stdout[-3000:]}\n{res.stderr[-5000:]}'
    ranks = [json.loads((out/f'rank{r}.json').read_text()) for r in (0, 1)]
    states = [torch.load(out/f'rank{r}.pt') if (out/f'rank{r}.pt').exists() else None for r in (0, 1)]
    return ranks,states

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    ("PETS, `fit(2)` with `TemperatureSchedule(start=3.)` and `CoarseToFine(coarse_epochs=1)`, and the metrics "
     "built on `AvgMetric`")
    return _launch(tmp_path_factory.mktemp('distrib'), '--metrics', 'accuracy', 'species_accuracy',
                   'hier_distance', 'valid_count')

@pytest.fixture(scope='module')
def synthetic(tmp_path_factory):
    "Every metric on fixed predictions of 8 and 7 items, distributed (both ranks) and in one process (rank 0)"
    (r0,r1),_ = _launch(tmp_path_factory.mktemp('synthetic'), '--synthetic')
    assert r0['distributed'] == r1['distributed'] and r0['errors'] == r1['errors']
    return r0

NAMES = ['epoch', 'train_loss', 'valid_loss', 'accuracy', 'species_accuracy', 'hier_distance@5', 'valid_count', 'time']

def _col(r, name, epoch=-1): return r['values'][epoch][NAMES.index(name)-1]

def test_both_ranks_finish(run):
    (r0,r1),_ = run
    for rank,r in enumerate((r0, r1)):
        assert r['error'] is None, r.get('traceback')
        assert (r['rank'], r['world_size'], r['backend']) == (rank, 2, 'gloo')
        assert r['metric_names'] == NAMES
        assert len(r['values']) == EPOCHS

def test_metrics_identical_and_in_range(run):
    "Every value of the table is gathered across the processes: both ranks record the same numbers"
    (r0,r1),_ = run
    assert r0['values'] == r1['values']
    for epoch,row in enumerate(r0['values']):
        vals = dict(zip(NAMES[1:-1], row))
        assert all(isinstance(vals[k], float) and math.isfinite(vals[k]) and vals[k] > 0
                   for k in ('train_loss', 'valid_loss'))
        assert 0 <= vals['species_accuracy'] <= 1
        if epoch == 0: # coarse phase: only the metrics the species predictions can give
            assert vals['accuracy'] is vals['hier_distance@5'] is vals['valid_count'] is None
        else:
            assert 0 <= vals['accuracy'] <= 1 and 0 <= vals['hier_distance@5'] <= 2

def test_validation_metrics_cover_the_whole_valid_set(run):
    "The recorded metrics of the last epoch are those of the final model on the whole validation set, in one process"
    (r0,r1),_ = run
    n = r0['n_valid']
    assert _col(r0, 'valid_count') == _col(r1, 'valid_count') == n # after gathering, not n/2 per rank
    full = dict(zip(['valid_loss'] + NAMES[3:-1], r0['validate']))   # rank 0 alone, after the fit, on all `n` items
    assert full['valid_count'] == n
    for k in ('valid_loss', 'accuracy', 'species_accuracy', 'hier_distance@5'):
        assert _col(r0, k) == pytest.approx(full[k], rel=1e-5, abs=1e-6), k

def test_training_is_sharded(run):
    "Each rank trains on its own half of the shuffled training set, every epoch"
    (r0,r1),_ = run
    per_rank = len(r0['train_labels'])//2//BS*BS # `drop_last` on each rank's half
    labels = Counter(r0['train_labels'])
    for t0,t1 in zip(r0['train_targs'], r1['train_targs']):
        assert len(t0) == len(t1) == per_rank and t0 != t1
        assert not Counter(t0) + Counter(t1) - labels # the two halves do not overlap
    assert r0['train_targs'][0] != r0['train_targs'][1]   # shuffled each epoch

def test_callbacks_act_identically(run):
    (r0,r1),_ = run
    n_iter = len(r0['train_labels'])//2//BS
    temps = r0['temperatures']
    assert temps == r1['temperatures'] and len(temps) == EPOCHS*n_iter
    assert temps[0] == 3. and temps[-1] == 1. and all(a >= b for a,b in zip(temps, temps[1:]))
    for r in (r0, r1): # the loss computed at the scheduled temperature, in the coarse phase too
        assert r['loss_temperatures'] == pytest.approx(temps, rel=1e-5)
        # `CoarseToFine` trained epoch 0 on the species, then wrapped the fine model in DDP again
        assert r['widths'] == [2, 37]
        assert r['wrappers'] == ['DistributedDataParallel']*2
        assert (r['final_model'], r['final_out_features']) == ('Sequential', 37)

def test_parameters_identical(run):
    "DDP averages the gradients, the new output layer's included: the ranks end with the same model"
    _,(s0,s1) = run
    for k in ('params', 'buffers'):
        assert len(s0[k]) == len(s1[k]) > 0
        assert all(torch.equal(p, q) for p,q in zip(s0[k], s1[k])), k
    assert s0['params'][-1].shape[0] == 37

AVG = ('accuracy', 'coarse_accuracy', 'hier_distance', 'valid_count')

def test_avg_metrics_gathered_exactly(synthetic):
    ("`LevelAccuracy` and `HierarchicalDistance` (`AvgMetric`s, as fastai's `accuracy`): each rank's "
     "batch values are averaged")
    for k in AVG:
        assert synthetic['distributed']['even'][k] == pytest.approx(synthetic['single']['even'][k], rel=1e-6), k
    # rank 0 had all its items right, rank 1 none: a rank-local value would be 1 or 0
    assert synthetic['distributed']['even']['accuracy'] == .5

def test_odd_valid_set_counts_the_padding(synthetic):
    """`DistributedDL` pads 7 items to 8 with a copy of the first; fastai removes the copy from per-item tensors
    (predictions, `valid_count`) but not from the batch means of `AvgMetric`: those count it, fastai's `accuracy` as
    ours"""
    d,single,padded = (synthetic[k]['odd'] for k in ('distributed', 'single', 'single_padded'))
    assert d['valid_count'] == single['valid_count'] == 7
    for k in AVG[:-1]: assert d[k] == pytest.approx(padded[k], rel=1e-6), k
    assert d['accuracy'] == 5/8 and single['accuracy'] == pytest.approx(4/7)

def _gathered(synthetic, name):
    "`name` distributed as in one process, on 8 and on 7 items; `NotGathered` where it differs"
    for case in ('even', 'odd'):
        err = synthetic['errors'][case].get(name)
        if err: raise NotGathered(f'{case}: {err}')
        d,single = synthetic['distributed'][case][name],synthetic['single'][case][name]
        if d != pytest.approx(single, rel=1e-5): raise NotGathered(f'{case}: distributed {d}, in one process {single}')

def test_mistake_severity_is_gathered(synthetic):
    ("Its mistake count is gathered as a float: fastai averages gathered 0-d tensors with `.mean()`, "
     "which refuses integers")
    _gathered(synthetic, 'mistake_severity')

def test_ece_is_gathered(synthetic):
    "It gathers the items, then bins them: gathered bin sums would be concatenated per rank and trimmed as padding"
    _gathered(synthetic, 'ece')

def test_issue_configuration(tmp_path):
    "PETS with the metrics of the issue, `MistakeSeverity` included"
    (r0,r1),_ = _launch(tmp_path, '--metrics', 'accuracy', 'species_accuracy', 'mistake_severity')
    for r in (r0, r1): assert r['error'] is None, r.get('traceback')
    assert r0['values'] == r1['values']
    rec,full = r0['values'][-1][-1],r0['validate'][-1]
    assert 1 <= rec <= 2 and rec == pytest.approx(full, rel=1e-5)
