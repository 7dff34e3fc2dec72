"""Reading the small JSON files a run is made of (configs, stage records), with damage
reported as one line naming the file and the make target that writes it again."""

from __future__ import annotations

import json
import pathlib
from typing import Any

from ldlm.errors import DataError


def read_json(path, remedy: str, error: type[Exception] = DataError) -> Any:
    """The JSON in `path`; `error` (DataError) naming the file and `remedy` (e.g. 'rerun
    `make latents`') if it is not valid JSON. A missing file is the caller's to report."""
    path = pathlib.Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{path} is damaged (not valid JSON: {e.msg}, line {e.lineno} column "
                    f"{e.colno}); {remedy}") from None
    except UnicodeDecodeError:
        raise error(f"{path} is damaged (not UTF-8 text); {remedy}") from None
