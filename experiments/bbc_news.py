"""BBC News (the built-in corpus, 5 topics): the default experiment.

    make demo                                   # every stage, cpu preset
    make data tokenizer EXP=bbc_news PRESET=cpu RUN=bbc_news_cpu
    python -m ldlm.cli.tokenizer --exp bbc_news --preset tiny --set data.block_len=128
"""

import dataclasses

from ldlm.config import Config, preset_config


def get_config(preset: str = "cpu") -> Config:
    cfg = preset_config(preset)
    return cfg.replace(name="bbc_news",
                       data=dataclasses.replace(cfg.data, source="tfds", tfds_name="bbc_news"))
