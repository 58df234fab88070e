"""The GPU check: what the CPU cannot show, in one run of a few minutes on one GPU, offline.

    bench/gpu_check.sh                        # on a machine with CUDA: writes bench/results_gpu.md
    # its CPU-capable parts, small (the tests run this)
    python bench/gpu_check.py --device cpu --quick --out /tmp/check.md

1. The loss benchmark on the device (`loss_cost.bench_losses`): ratios to cross-entropy, eager and compiled, and peak
   memory.
2. No host synchronisation: the loss's forward and backward under `torch.cuda.set_sync_debug_mode('error')`.
3. What the loss costs in a resnet18 training step (`loss_cost.bench_step`).
4. `fine_tune(2)` on the PETS sample with `to_fp16()` and the three callbacks, on EfficientNet-Lite0's offline weights.
5. `check_loss`, whose device check moves the loss to the GPU.

Asked for CUDA where there is none, it stops with an error: a GPU check that skips its GPU parts would pass for nothing.
"""
import argparse, os, platform, subprocess, sys, tempfile, time
from pathlib import Path
import torch
from fastai.vision.all import *
from fastai_hier.all import *
from fastai_hier.cli import EpochLog

sys.path.insert(0, str(Path(__file__).parent))
import loss_cost
from loss_cost import SIZES, random_tree, say, table, OUT

def check_no_sync(device, bs):
    "Forward and backward of `HierarchicalLoss` at each benchmark size with synchronisations turned into errors"
    rows = []
    for label,sizes in SIZES.items():
        hier = Hierarchy.from_parents(*random_tree(sizes))
        lf = HierarchicalLoss(hier)
        lf.to(device)
        x = (torch.randn(bs, sizes[0], device=device)*3).requires_grad_()
        targ = torch.randint(0, sizes[0], (bs,), device=device)
        lf(x, targ).backward() # once outside: the first call may initialise things that synchronise
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode('error')
        try:
            lf(x, targ).backward()
            res = 'no synchronisation'
        except RuntimeError as e: res = f'**synchronises**: {str(e).splitlines()[0]}'
        finally: torch.cuda.set_sync_debug_mode('default')
        rows.append([label, res])
    say('\n### Host synchronisation in the loss (`torch.cuda.set_sync_debug_mode("error")`)\n\n'
        + table(rows, ['hierarchy', 'forward + backward']))

def fine_tune_pets(device, size, epochs, fp16=True):
    ("`fine_tune` on the PETS sample with `to_fp16()` and `TemperatureSchedule`, "
     "`LevelWeightSchedule` and `CoarseToFine`")
    if not os.environ.get('FASTAI_HOME'): # the sample, linked into a fresh fastai home (`scripts/pets_sample.py`)
        os.environ['FASTAI_HOME'] = tempfile.mkdtemp()
        subprocess.run([sys.executable, str(Path(__file__).parents[1]/'scripts'/'pets_sample.py'),
                        os.environ['FASTAI_HOME']], check=True)
    dls = pets_dls(size=size, bs=32, device=device, batch_tfms=aug_transforms())
    hier = pets_hierarchy(dls.vocab)
    total = epochs + 1
    cbs = [TemperatureSchedule(start=2., total_epochs=total),
           LevelWeightSchedule({0: [0.2, 0.8], 1: [0.8, 0.2]}, total_epochs=total),
           CoarseToFine(hier, coarse_epochs=1, total_epochs=total)]
    log = EpochLog() # the epochs of both fits
    learn = vision_learner(dls, **lite0_pretrained(), loss_func=HierarchicalLoss(hier), cbs=[log, *cbs],
                           metrics=[LevelAccuracy(hier, 'breed'), LevelAccuracy(hier, 'species'),
                                    MistakeSeverity(hier)])
    if fp16: learn = learn.to_fp16()
    learn.remove_cb(ProgressCallback)
    t = time.perf_counter()
    with learn.no_logging(): learn.fine_tune(epochs, freeze_epochs=1)
    secs = time.perf_counter() - t
    df = pd.DataFrame(log.rows)
    finite = bool(np.isfinite(df[['train_loss', 'valid_loss']].values).all())
    say(f'\n### `fine_tune({epochs})` on the PETS sample ({len(dls.train_ds)} training images, {size} px, '
        f'{"to_fp16(), " if fp16 else ""}EfficientNet-Lite0, the three callbacks) '
        f'on {loss_cost.device_name(device)}\n\n'
        + table([[r['epoch']] + [f'{v:.4f}' for v in list(r.values())[1:]] for r in log.rows], list(df.columns))
        + f'\n\n{secs:.0f} s; losses finite: **{finite}**; model on {next(learn.model.parameters()).device}')
    if not finite: raise RuntimeError('the training loss or the validation loss is not finite')

def check_loss_on(device):
    "`check_loss`: its device check runs the loss on the GPU when there is one"
    hier = Hierarchy.from_parents(*random_tree(SIZES['37 classes, 2 levels']))
    df = check_loss(HierarchicalLoss(hier))
    say('\n### `check_loss(HierarchicalLoss(hier))`\n\n'
        + table(df[['check', 'status', 'reason']].values.tolist(), ['check', 'status', 'reason']))
    if (df.status == 'failed').any():
        raise RuntimeError(f"check_loss failed: {', '.join(df.check[df.status == 'failed'])}")

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cuda',
                   help="the device checked (default: %(default)s; 'cpu' runs the parts a CPU can)")
    p.add_argument('--quick', action='store_true', help='small sizes: to test the script itself')
    p.add_argument('--out', default='bench/results_gpu.md', help='the Markdown file written (default: %(default)s)')
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        sys.exit(f"gpu_check: --device {args.device} but torch {torch.__version__} sees no CUDA device: run it on a "
                 "machine with a GPU, or with --device cpu for the CPU parts.")
    if device.type == 'cpu': torch.set_num_threads(1)
    torch.manual_seed(0)
    say(f'GPU check with torch {torch.__version__} on {platform.platform()}, {loss_cost.device_name(device)}'
        + (' (quick)' if args.quick else '') + ':')
    if args.quick: loss_cost.SIZES = {k:v for k,v in SIZES.items() if v[0] <= 1000}
    loss_cost.bench_losses(device, 3 if args.quick else 30, 1 if args.quick else 3,
                           only_trees=['37 classes', '1,000 classes'] if args.quick else None)
    if device.type == 'cuda': check_no_sync(device, 256)
    else:
        say('\n### Host synchronisation in the loss\n\nNot measured: `set_sync_debug_mode` needs CUDA (the CPU tests '
            'check that the loss compiles with `fullgraph=True` instead).')
    loss_cost.bench_step(device, 8 if args.quick else 64, 64 if args.quick else 224, 1 if args.quick else 5)
    fine_tune_pets(device, 64 if args.quick else 224, 1 if args.quick else 2, fp16=device.type == 'cuda')
    check_loss_on(device)
    Path(args.out).write_text('\n'.join(OUT).strip() + '\n')
    print(f'\nwritten to {args.out}')
