"""Helpers shared by test modules."""


def link_stages(src_run, dst_run, stages=("data", "tokenizer")):
    """A new run directory sharing some finished stages of `src_run` (symlinks)."""
    dst_run.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        (dst_run / stage).symlink_to(src_run / stage)
    return dst_run
