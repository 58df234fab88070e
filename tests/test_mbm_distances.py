("`ClassDistance(kind='ilsvrc')` against the distance files of *Making Better Mistakes* "
 "(fiveai/making-better-mistakes, CC BY-NC-SA: read from a fetched copy, never copied here); skipped without a copy")
import io, lzma, os, pickle, subprocess
from pathlib import Path
import pytest, torch
from fastai_hier.hierarchy import Hierarchy
from fastai_hier.lca import ClassDistance

# a bare clone (`git clone --bare`) or a checkout of the repository
REPO = Path(os.environ.get('MBM_REPO', '/work/.mirror/fiveai+making-better-mistakes/repo'))

def read(path:str) -> bytes:
    "A file of MBM's repository at HEAD, from a bare clone or a checkout"
    if (REPO/path).exists(): return (REPO/path).read_bytes()
    return subprocess.run(['git', '--git-dir', str(REPO if (REPO/'HEAD').exists() else REPO/'.git'), 'show',
                           f'HEAD:{path}'], capture_output=True, check=True).stdout

class Tree(list):
    "Stands for `nltk.tree.Tree` (a list of children with a `_label`), so that the pickled trees load without nltk"

class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module.startswith('nltk') and name == 'Tree': return Tree
        return super().find_class(module, name)

def mbm_parents(tree) -> dict:
    "Child -> parent of MBM's nltk tree (a class is a string, an inner node a `Tree`)"
    res,todo = {},[tree]
    while todo:
        t = todo.pop()
        for c in t:
            res[c._label if isinstance(c, Tree) else c] = t._label
            if isinstance(c, Tree): todo.append(c)
    return res

@pytest.mark.skipif(not REPO.exists(), reason=f'no copy of fiveai/making-better-mistakes at {REPO} (set MBM_REPO)')
@pytest.mark.parametrize('name,n_classes,height_too', [('imagenet', 1000, False), ('tiered_imagenet', 608, False),
                                                       ('inaturalist19', 1010, True)])
def test_ilsvrc_distances(name, n_classes, height_too):
    "Every pair of distinct classes: 'ilsvrc' is MBM's file; 'height' too where every class is at the same depth"
    tree = _Unpickler(io.BytesIO(read(f'data/{name}_tree.pkl'))).load()
    theirs = _Unpickler(lzma.open(io.BytesIO(read(f'data/{name}_ilsvrc_distances.pkl.xz')))).load()
    hier = Hierarchy(mbm_parents(tree))
    assert len(hier) == n_classes
    i,j = torch.triu_indices(len(hier), len(hier), 1)
    v = list(hier.vocab)
    want = torch.tensor([float(theirs[(v[a], v[b])] if (v[a], v[b]) in theirs else theirs[(v[b], v[a])])
                         for a,b in zip(i.tolist(), j.tolist())])
    assert len(want) == n_classes*(n_classes-1)//2
    assert torch.equal(ClassDistance(hier, 'ilsvrc')(i, j), want)
    ragged = not torch.equal(ClassDistance(hier, 'height')(i, j), want)
    assert ragged != height_too
