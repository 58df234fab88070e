"The `fastai-hier` command: study data, running a study, the report, and the parser (`main`)"
from .study import *
from .run import *
from .report import *
from .main import main
