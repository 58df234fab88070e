"The package as users install it from a wheel: built, installed (not editable) in a fresh environment, imported and run"
import subprocess, sys, venv, zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def test_wheel_installs_and_runs(tmp_path):
    subprocess.run([sys.executable, '-m', 'build',
                    '--wheel', '--no-isolation', '--outdir', str(tmp_path/'dist'), str(ROOT)],
                   check=True, capture_output=True)
    wheel, = (tmp_path/'dist').glob('fastai_hier-*.whl')
    tracked = subprocess.run(['git', 'ls-files', 'fastai_hier'], cwd=ROOT, check=True, capture_output=True,
                             text=True).stdout.split()
    assert set(tracked) <= set(zipfile.ZipFile(wheel).namelist()), "files of the package missing from the wheel"
    # its dependencies (torch, fastai...) from this environment: the test needs no network
    env = tmp_path/'env'
    venv.create(env, system_site_packages=True, with_pip=True)
    py = env/'bin'/'python'
    subprocess.run([py, '-m', 'pip', 'install', '--no-deps', '--no-index', '-q', str(wheel)], check=True,
                   capture_output=True)
    run = lambda *args: subprocess.run(args, cwd=tmp_path, check=True, capture_output=True, text=True).stdout
    where = run(py, '-c', 'import fastai_hier.all, fastai_hier; print(fastai_hier.__file__)')
    assert Path(where.strip()).is_relative_to(env), f"imported {where}, not the installed wheel"
    assert 'sweep' in run(env/'bin'/'fastai-hier', '--help')
