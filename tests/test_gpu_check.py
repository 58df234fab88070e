"bench/gpu_check.sh, the script for the day a GPU is lent: it fails loudly without CUDA, and its CPU-capable parts run"
import subprocess, sys
from pathlib import Path
import pytest, torch

ROOT = Path(__file__).resolve().parents[1]

@pytest.mark.skipif(torch.cuda.is_available(), reason='there is a GPU: the script would run')
def test_fails_without_cuda(tmp_path):
    r = subprocess.run(['bash', str(ROOT/'bench'/'gpu_check.sh'), str(tmp_path/'out.md')],
                       capture_output=True, text=True)
    assert r.returncode != 0
    assert 'sees no CUDA device' in r.stderr
    assert not (tmp_path/'out.md').exists()

def test_cpu_parts(tmp_path):
    out = tmp_path/'out.md'
    r = subprocess.run([sys.executable, str(ROOT/'bench'/'gpu_check.py'), '--device', 'cpu',
                        '--quick', '--out', str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    md = out.read_text()
    for part in ('### Forward + backward', 'HierarchicalLoss, compiled', '### Host synchronisation',
                 '### A resnet18 training step', '### `fine_tune(1)` on the PETS sample',
                 'losses finite: **True**', '### `check_loss'):
        assert part in md, part
    assert '| failed |' not in md
    # both epochs of fine_tune: the frozen one and the unfrozen one
    assert md.count('\n| 0 |') + md.count('\n| 1 |') >= 2
