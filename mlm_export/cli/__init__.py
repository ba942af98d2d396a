"""Command line: parses arguments and calls the library; no pipeline logic lives here.

`main` is the `mlm-export` group (`_app.py`: the shared error path, exit codes and the bare-MODEL
shorthand); each command is one module beside it, added to the group here. The commands import their
library modules inside their bodies, so `mlm-export --help` loads neither numpy nor onnxruntime.
"""

from __future__ import annotations

from ._app import main
from .encode import encode_command
from .export import export_command
from .info import info_command
from .keygen import keygen_command
from .predict import predict_command
from .schema import schema_command
from .score import score_command
from .serve import serve_command
from .sign import sign_command
from .slim import slim_command
from .triton import triton_command
from .tune import tune_command
from .variants import variants_command
from .verify import verify_command

__all__ = ["main"]

for _command in (export_command, verify_command, predict_command, score_command, encode_command, variants_command,
                 serve_command, triton_command,
                 info_command, tune_command,
                 slim_command, schema_command, sign_command, keygen_command):
    main.add_command(_command)
del _command
