"""Typed, frozen configuration: one source of truth, serialised as JSON beside each run.

A `Config` is a tree of frozen dataclasses. Experiments (`experiments/<name>.py`) build one
with `get_config(preset)`; the command line changes it with `key.path=value` overrides;
every stage writes the resolved config into its run directory, and `Config.from_dict`
rebuilds it from there. Unknown keys and values of the wrong type are rejected with a
message naming the key and the allowed ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import pathlib
import re
import typing
from typing import Any, Iterable

from ldlm.errors import ConfigError
from ldlm.files import read_json

PRESETS = ("tiny", "cpu", "base")
VAE_KINDS = ("block", "chunk")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where documents come from and how they are cut into blocks."""

    source: str = "tfds"  # tfds | text_folder | jsonl (ldlm/data/sources.py)
    tfds_name: str = "bbc_news"  # any prepared TFDS text data set; bbc_news is built in
    tfds_data_dir: str = ""  # "" -> <run_dir>/data/tfds
    text_field: str = "text"
    label_field: str = "label"  # "" for an unlabelled data set
    path: str = ""  # folder of .txt files (source=text_folder) or a .jsonl file (source=jsonl)
    # Split names as the source calls them.
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str = "test"
    # For text_folder / jsonl, which have no splits of their own: held-out fractions.
    validation_fraction: float = 0.05
    test_fraction: float = 0.05
    split_seed: int = 0
    # Blocks: L tokens each, EOS at a document's end, cut at sentence ends where possible.
    block_len: int = 64
    # A block is closed at a sentence end only once it is at least this full; below that,
    # the next sentence is cut to fill it (less padding, fewer sentence-aligned starts).
    block_min_fill: float = 0.75
    max_documents: int = 0  # 0 = all; a smaller number makes quick runs
    # Batching (global batch over all processes and devices).
    batch_size: int = 32
    shuffle_seed: int = 0


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """A sentencepiece model trained once on the training split."""

    vocab_size: int = 8000
    model_type: str = "unigram"  # unigram | bpe
    character_coverage: float = 0.9995  # rarer characters fall back to bytes, never to <unk>
    input_sentence_size: int = 2_000_000  # documents sampled for training at most
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh axis sizes; -1 fills with the devices left over (at most one axis)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    rules: str = "fsdp_tp"  # parameter layout: fsdp_tp | fsdp | replicated (ldlm/mesh.py)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """TextVAE shape and objective (see ldlm/models/vae.py, ldlm/train/vae.py). `kind`:
    block (a transformer over the whole block) or chunk (each latent from its own L/N
    tokens by MLPs alone, CALM's autoencoder: ldlm/models/chunk_vae.py)."""

    kind: str = "block"
    width: int = 256
    heads: int = 4
    mlp_dim: int = 768  # SwiGLU hidden width
    encoder_layers: int = 2
    decoder_layers: int = 2
    num_latents: int = 16  # N; compression is data.block_len / N
    latent_dim: int = 64  # d
    logvar_init: float = -6.0
    # Objective
    kl_weight: float = 1e-3  # on the KL per latent coordinate
    kl_clamp: float = 0.0  # free bits: per-coordinate KL below this is not penalised
    kl_warmup_frac: float = 0.2  # KL weight ramps 0 -> kl_weight over this share of steps
    token_mask_prob: float = 0.1  # encoder input tokens replaced by <mask>
    # Gaussian noise added to the latents in training, sigma ~ U(0, latent_noise_max) per
    # block, relative to the latent scale (RMS 1 per vector): the decoder learns to survive
    # the imperfect latents the diffusion stage will hand it.
    latent_noise_max: float = 0.8
    length_weight: float = 0.1  # weight of the real-token / padding classification
    # latent coordinates zeroed in training with this probability (the rest rescaled): the
    # decoder learns to read a latent from part of it (CALM: 0.15)
    latent_dropout: float = 0.0
    # Alignment to a frozen causal LM (ldlm/models/align.py, ldlm/train/teacher.py): each
    # latent's posterior mean, through a small projector, towards the teacher's hidden states
    # of the tokens it covers; loss 1 - cosine (minus a margin), weight align_weight (0: off).
    align_weight: float = 0.0
    # ar | reference (this run's AR baseline or reference LM), <run dir>:ar or
    # <run dir>:reference (another run's, same tokenizer), python:<module>:<function> (a
    # user's own LM: ldlm/train/teacher.py says what the function returns)
    align_teacher: str = "ar"
    align_layer: int = 0  # the teacher's states after this block (0: its final, normalised)
    align_pool: str = "mean"  # a latent's target: mean of its tokens' states, or the last
    align_margin: float = 0.0  # VA-VAE's margin: cosines above 1 - margin cost nothing
    # subtract the batch's mean target first: an LM's final states share a large common
    # direction (the cpu AR baseline's: cosine 0.83 to their mean), which a constant would
    # match without carrying anything of the text
    align_center: bool = True
    align_distance_weight: float = 0.0  # VA-VAE's distance-matrix term (pairwise cosines)
    # set by `make vae` from the teacher: its width (the projector's output) and its forward
    # FLOPs per token (counted in the autoencoder's training FLOPs, ldlm/flops.py)
    align_dim: int = 0
    align_teacher_flops: float = 0.0


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    """The latent prior and its diffusion process (ldlm/priors/, ldlm/diffusion/). `kind`
    names the prior (ldlm/priors/<kind>/): per_block | block_causal | latent_ar, or a
    registered one.
    The keys after `self_cond_prob` and `label_dropout` are read by one kind only (named
    beside each)."""

    kind: str = "per_block"
    width: int = 256
    heads: int = 4
    mlp_dim: int = 768
    layers: int = 4
    schedule: str = "cosine"  # cosine | linear
    snr_scale: float = 1.0  # logsnr + 2 log(snr_scale); < 1 is noisier
    prediction: str = "v"  # eps | x0 | v
    loss_weighting: str = "none"  # none | min_snr
    min_snr_gamma: float = 5.0
    time_sampling: str = "uniform"  # uniform | logit_normal
    self_cond_prob: float = 0.5  # self-conditioning: previous x0 estimate fed back
    label_dropout: float = 0.1  # class label replaced by the null label (for guidance)
    # block_causal: windows of `window` consecutive VAE blocks of a document in diffusion
    # blocks of `block_size` latents, each conditioned on the clean blocks before it;
    # block_size must divide window x vae.num_latents (both 0 for per_block)
    window: int = 0
    block_size: int = 0
    # latent_ar (CALM): a causal backbone over the chunk positions of windows of `window`
    # VAE blocks (each latent one chunk of data.block_len / vae.num_latents tokens), whose
    # input at position i is the chunk before it (`backbone_input`: its tokens, its latent,
    # or both), and a light head that draws each next latent: `energy` (one pass, trained
    # with the energy score) or `flow` (flow matching, sampled in the spec's steps)
    head: str = "energy"
    head_layers: int = 4  # residual adaLN MLP blocks of the head
    head_width: int = 0  # 0: dit.width
    backbone_input: str = "tokens"  # tokens | latents | both
    noise_dim: int = 64  # energy head: dimensions of its uniform noise
    energy_samples: int = 8  # energy score: head samples per position (N)
    energy_targets: int = 100  # energy score: targets from the posterior per position (M)
    energy_alpha: float = 1.0  # energy score: distance exponent, in (0, 2)
    flow_draws: int = 4  # flow head: (time, noise) draws per position and backbone pass
    # energy head at temperature 1/n: head samples per chunk among which a K-token tuple
    # must repeat n times
    temperature_samples: int = 200
    # what temperature means to the energy head: "repeats" (T = 1/n only, CALM's counting
    # algorithm above) or "shrink" (any T: the drawn latent pulled towards the mean of
    # temperature_samples draws, z = mean + T (z - mean); continuous, no likelihood behind it)
    energy_temperature: str = "repeats"
    # per_block: condition on the previous / next block of the document, each dropped in
    # training with probability context_dropout
    context_dropout: float = 0.5
    use_context: bool = True
    context_pool: int = 4  # per_block: neighbour latents merged into one context token
    # per_block: weight of the frozen VAE decoder's token cross-entropy on the clean
    # estimate (x alpha^2)
    token_loss_weight: float = 0.0
    sample_every: int = 0  # decoded sample dumps every K steps (0 = only at the end)
    sample_steps: tuple[int, ...] = (10, 50)  # step budgets of the dumps


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """The seam decoder (`make decoder`, ldlm/models/seam_decoder.py): the VAE decoder
    fine-tuned on the latent cache to see the preceding VAE block's latents as well."""

    # Gaussian noise added to both blocks' latents in training, sigma ~ U(0, max) per
    # block (as vae.latent_noise_max): the prior's latents are imperfect
    latent_noise_max: float = 0.8


@dataclasses.dataclass(frozen=True)
class ARConfig:
    """Autoregressive baseline LM (ldlm/models/ar.py): a causal transformer on the same
    blocks, sized to match the DiT plus the VAE decoder."""

    width: int = 256
    heads: int = 4
    mlp_dim: int = 768
    layers: int = 8
    temperature: float = 1.0  # sampling
    top_p: float = 0.95


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """`make eval`: ldlm at each sampler and step budget beside the AR baseline and real
    text (ldlm/eval/compare.py)."""

    num_samples: int = 64  # per system and setting (and real test blocks)
    samplers: tuple[str, ...] = ("ddim", "dpm++", "ddpm")
    steps: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    guidance_scales: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)  # topic accuracy per scale
    guidance_steps: int = 32
    guidance_sampler: str = "dpm++"
    # which causal LM scores samples (gen-PPL) and gives MAUVE features: "reference" (make
    # reference, larger and trained longer than the baseline), "ar" (the baseline itself,
    # which favours its own samples), or "auto": the reference LM where it has been trained,
    # else the baseline. The baseline's own score is always a second column.
    reference: str = "auto"
    # the run whose reference LM scores ("" = this run): one is trained per corpus and
    # shared by every run with the same tokenizer
    reference_run: str = ""
    # sampling temperature of every ldlm sample of the per-block table (1 = the model's)
    temperature: float = 1.0
    # the matched-entropy comparison (ldlm/eval/long_texts.py): texts of long_tokens tokens
    # from ldlm (long_sampler, long_steps) and the AR baseline at each of these temperatures,
    # gen-PPL read at real text's unigram entropy and at matched_entropy_gap nats below it
    long_tokens: int = 128
    long_temperatures: tuple[float, ...] = (1.3, 1.0, 0.85, 0.7)
    long_sampler: str = "ddpm"
    long_steps: int = 64
    matched_entropy_gap: float = 0.5
    # a latent_ar prior: its flow head's step budgets in the per-block table and its steps
    # in the long texts (the energy head always takes 1 step, and sweeps the temperatures
    # 1, 1/2, 1/3, ... as many as long_temperatures has)
    head_steps: tuple[int, ...] = (1, 2, 4, 16)
    head_long_steps: int = 4
    # BrierLM (ldlm/eval/brier.py): test prefixes, each continued twice by every system
    # that continues a text
    brier_prefixes: int = 256
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run: optimiser, schedule, precision, checkpoints, logging."""

    steps: int = 1000
    lr: float = 2e-3
    warmup_frac: float = 0.05
    end_lr_frac: float = 0.0  # cosine decays to lr * end_lr_frac
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.98
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # 0 = no EMA weights; warmed up as min(decay, (1+t)/(10+t))
    compute_dtype: str = "float32"  # float32 | bfloat16 (parameters stay float32)
    grad_accum: int = 1  # the global batch in this many sequential micro-batches
    remat: bool = False  # recompute each transformer block's activations in the backward pass
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 20
    eval_every: int = 0  # validation loss every K steps (0 = only at the end)
    eval_batches: int = 8  # validation batches per evaluation


TRAIN_SECTIONS = ("vae_train", "decoder_train", "dit_train", "ar_train", "reference_train")


@dataclasses.dataclass(frozen=True)
class Config:
    name: str = "default"
    preset: str = "cpu"
    seed: int = 0
    data: DataConfig = DataConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    mesh: MeshConfig = MeshConfig()
    vae: VAEConfig = VAEConfig()
    vae_train: TrainConfig = TrainConfig()
    decoder: DecoderConfig = DecoderConfig()
    decoder_train: TrainConfig = TrainConfig(steps=400, lr=5e-4)
    dit: DiTConfig = DiTConfig()
    dit_train: TrainConfig = TrainConfig(lr=1e-3, ema_decay=0.999)
    ar: ARConfig = ARConfig()
    ar_train: TrainConfig = TrainConfig(lr=1e-3)
    # the reference LM for generative perplexity: larger and trained longer than `ar`
    reference: ARConfig = ARConfig(width=384, heads=6, mlp_dim=1152, layers=12)
    reference_train: TrainConfig = TrainConfig(steps=3000, lr=6e-4)
    eval: EvalConfig = EvalConfig()

    # ------------------------------------------------------------------ construction
    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def override(self, assignments: Iterable[str]) -> "Config":
        """Apply `a.b=value` strings in order; see `apply_overrides`."""
        return apply_overrides(self, assignments)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        return _from_dict(cls, _with_prior_kind(d), prefix="")

    @classmethod
    def from_json_file(cls, path) -> "Config":
        path = pathlib.Path(path)
        if not path.exists():
            raise ConfigError(f"no config file at {path}")
        d = read_json(path, f"rerun `make {path.parent.name}` (with the same RUN) to write it "
                      "again", ConfigError)
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def validate(self) -> "Config":
        """Checks of ranges and of fields that depend on each other; raises ConfigError
        naming the key. Returns self. Names chosen from a fixed set (samplers, schedules,
        rule sets, ...) are checked against the modules that define them by
        `ldlm.stages.choices.check_choices`, which every entry point runs."""
        d = self.data
        if self.preset not in PRESETS:
            raise ConfigError(f"preset={self.preset!r} is not one of {list(PRESETS)}")
        if d.source in ("text_folder", "jsonl") and not d.path:
            raise ConfigError(f"data.source={d.source!r} needs data.path (the corpus location)")
        if d.block_len < 2:
            raise ConfigError(
                f"data.block_len={d.block_len} cannot hold one token plus EOS: use at least 2 "
                "(64 or 128 are typical)")
        if not 0.0 <= d.block_min_fill <= 1.0:
            raise ConfigError(f"data.block_min_fill={d.block_min_fill} must lie in [0, 1]")
        if d.validation_fraction < 0 or d.test_fraction < 0 or \
                d.validation_fraction + d.test_fraction >= 1:
            raise ConfigError("data.validation_fraction and data.test_fraction must be >= 0 "
                              "and leave something for training")
        if d.batch_size < 1:
            raise ConfigError(f"data.batch_size={d.batch_size} must be at least 1")
        if self.tokenizer.vocab_size < 260:
            raise ConfigError(f"tokenizer.vocab_size={self.tokenizer.vocab_size} is too small: "
                              "byte fallback alone needs 256 pieces plus the special tokens")
        v = self.vae
        if v.num_latents < 1 or d.block_len % v.num_latents:
            raise ConfigError(f"data.block_len={d.block_len} must be a multiple of "
                              f"vae.num_latents={v.num_latents}")
        if not 1 <= d.block_len // v.num_latents <= 16:
            raise ConfigError(f"compression data.block_len / vae.num_latents = "
                              f"{d.block_len // v.num_latents} must lie in 1..16")
        if v.kind not in VAE_KINDS:
            raise ConfigError(f"vae.kind={v.kind!r} is not one of {list(VAE_KINDS)}")
        if not 0 <= v.latent_dropout < 1 or not 0 <= v.token_mask_prob < 1:
            raise ConfigError(f"vae.latent_dropout={v.latent_dropout} and "
                              f"vae.token_mask_prob={v.token_mask_prob} must lie in [0, 1)")
        if v.width % v.heads or (v.width // v.heads) % 2:
            raise ConfigError(f"vae.width={v.width} must split into vae.heads={v.heads} "
                              "heads of even width (RoPE)")
        if v.align_weight < 0 or v.align_distance_weight < 0 or v.align_layer < 0:
            raise ConfigError(f"vae.align_weight={v.align_weight}, vae.align_distance_weight="
                              f"{v.align_distance_weight} and vae.align_layer={v.align_layer} "
                              "must be >= 0")
        if v.align_pool not in ("mean", "last"):
            raise ConfigError(f"vae.align_pool={v.align_pool!r} is not one of "
                              "['mean', 'last']")
        t = self.dit
        if t.width % t.heads or (t.width // t.heads) % 2:
            raise ConfigError(f"dit.width={t.width} must split into dit.heads={t.heads} "
                              "heads of even width (RoPE)")
        if t.snr_scale <= 0:
            raise ConfigError(f"dit.snr_scale={t.snr_scale} must be > 0")
        if t.token_loss_weight < 0:
            raise ConfigError(f"dit.token_loss_weight={t.token_loss_weight} must be >= 0")
        if t.window < 0 or t.block_size < 0:
            raise ConfigError(f"dit.window={t.window} and dit.block_size={t.block_size} "
                              "must be >= 0")
        if self.decoder.latent_noise_max < 0:
            raise ConfigError(f"decoder.latent_noise_max={self.decoder.latent_noise_max} "
                              "must be >= 0")
        ev = self.eval
        for key, budgets in (("dit.sample_steps", t.sample_steps), ("eval.steps", ev.steps),
                             ("eval.guidance_steps", (ev.guidance_steps,)),
                             ("eval.long_steps", (ev.long_steps,)),
                             ("eval.head_steps", ev.head_steps),
                             ("eval.head_long_steps", (ev.head_long_steps,))):
            if not budgets or not all(1 <= b <= 1000 for b in budgets):
                raise ConfigError(f"{key}={_text(budgets)} must be step counts in 1..1000")
        if ev.num_samples < 1 or ev.brier_prefixes < 1:
            raise ConfigError(f"eval.num_samples={ev.num_samples} and eval.brier_prefixes="
                              f"{ev.brier_prefixes} must be at least 1")
        if not ev.samplers or not ev.guidance_scales:
            raise ConfigError("eval.samplers and eval.guidance_scales must not be empty")
        a = self.ar
        if a.width % a.heads or (a.width // a.heads) % 2:
            raise ConfigError(f"ar.width={a.width} must split into ar.heads={a.heads} heads "
                              "of even width (RoPE)")
        if a.temperature < 0 or not 0 < a.top_p <= 1:
            raise ConfigError(f"ar.temperature={a.temperature} must be >= 0 and "
                              f"ar.top_p={a.top_p} in (0, 1]")
        if not 0 < ev.temperature <= 2:
            raise ConfigError(f"eval.temperature={ev.temperature} must lie in (0, 2]")
        if not ev.long_temperatures or not all(0 < x <= 2 for x in ev.long_temperatures):
            raise ConfigError(f"eval.long_temperatures={_text(ev.long_temperatures)} must "
                              "be temperatures in (0, 2]")
        if ev.long_tokens < 1 or ev.matched_entropy_gap < 0:
            raise ConfigError(f"eval.long_tokens={ev.long_tokens} must be at least 1 and "
                              f"eval.matched_entropy_gap={ev.matched_entropy_gap} >= 0")
        for name in TRAIN_SECTIONS:
            t = getattr(self, name)
            if t.steps < 1 or t.checkpoint_every < 1 or t.log_every < 1:
                raise ConfigError(f"{name}.steps, .checkpoint_every and .log_every must be "
                                  ">= 1")
            if t.grad_accum < 1 or self.data.batch_size % t.grad_accum:
                raise ConfigError(f"{name}.grad_accum={t.grad_accum} must be >= 1 and divide "
                                  f"data.batch_size={self.data.batch_size}")
            if not 0 <= t.ema_decay < 1:
                raise ConfigError(f"{name}.ema_decay={t.ema_decay} must lie in [0, 1)")
        sizes = [self.mesh.data, self.mesh.fsdp, self.mesh.tensor]
        if sum(s == -1 for s in sizes) > 1 or any(s == 0 or s < -1 for s in sizes):
            raise ConfigError(f"mesh sizes {sizes} (data, fsdp, tensor): each must be >= 1, "
                              "and at most one may be -1")
        return self


# ---------------------------------------------------------------------- overrides
def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _allowed(cls, prefix: str) -> list[str]:
    out = []
    for name, tp in _field_types(cls).items():
        if dataclasses.is_dataclass(tp):
            out.extend(_allowed(tp, f"{prefix}{name}."))
        else:
            out.append(f"{prefix}{name}")
    return out


def _unknown_key(key: str, cls, prefix: str) -> ConfigError:
    allowed = _allowed(cls, prefix)
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config key {key!r}.{hint} Allowed keys: {', '.join(allowed)}")


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _convert(key: str, raw: Any, tp, from_text: bool) -> Any:
    """Converts a command-line string (`from_text`) or a JSON value to the field's type, or
    raises. JSON values must already have the right type: "64" is no int there."""
    value = None if (not from_text and isinstance(raw, str) and tp is not str) \
        else _try_convert(raw, tp)
    if value is None:
        raise ConfigError(f"config key {key!r} expects {getattr(tp, '__name__', tp)}, "
                          f"got {raw!r}")
    return value


def _text(value) -> str:
    """A field's value as written on the command line (tuples comma-separated)."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _try_convert(raw: Any, tp):
    """The converted value, or None when `raw` does not fit `tp`. A tuple field takes a
    comma-separated string on the command line and a list in JSON."""
    if typing.get_origin(tp) is tuple:
        item = typing.get_args(tp)[0]
        if isinstance(raw, str):
            parts = [x.strip() for x in raw.split(",") if x.strip()]
        elif isinstance(raw, (list, tuple)):
            parts = list(raw)
        else:
            return None
        items = [_try_convert(x, item) for x in parts]
        return None if any(x is None for x in items) else tuple(items)
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in _TRUE + _FALSE:
            return raw.lower() in _TRUE
        return None
    if tp is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and re.fullmatch(r"[+-]?[0-9_]+", raw):
            return int(raw)
        return None
    if tp is float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
        try:
            return float(raw) if isinstance(raw, str) else None
        except ValueError:
            return None
    if tp is str:
        return raw if isinstance(raw, str) else None
    raise TypeError(f"unsupported config field type {tp}")


def apply_overrides(cfg: Config, assignments: Iterable[str]) -> Config:
    """Applies `section.key=value` strings; raises ConfigError on an unknown key or bad type."""
    for assignment in assignments:
        if "=" not in assignment:
            raise ConfigError(f"override {assignment!r} is not of the form key=value "
                              "(e.g. data.block_len=128)")
        key, raw = assignment.split("=", 1)
        cfg = _set(cfg, key.strip(), raw.strip(), type(cfg), prefix="", full_key=key.strip())
    return cfg.validate()


def _set(node, key: str, raw: str, cls, prefix: str, full_key: str):
    head, _, rest = key.partition(".")
    types_ = _field_types(cls)
    if head not in types_:
        raise _unknown_key(full_key, type(node) if prefix else cls, prefix)
    tp = types_[head]
    if dataclasses.is_dataclass(tp):
        if not rest:
            raise ConfigError(f"config key {full_key!r} is a section; set one of its keys: "
                              f"{', '.join(_allowed(tp, prefix + head + '.'))}")
        child = _set(getattr(node, head), rest, raw, tp, prefix + head + ".", full_key)
        return dataclasses.replace(node, **{head: child})
    if rest:
        raise _unknown_key(full_key, cls, prefix)
    return dataclasses.replace(node, **{head: _convert(full_key, raw, tp, from_text=True)})



def _with_prior_kind(d: dict) -> dict:
    """A config written before `dit.kind` existed names its prior the old way: a window of
    blocks made it block-causal. Read once, here."""
    dit = d.get("dit") if isinstance(d, dict) else None
    if isinstance(dit, dict) and "kind" not in dit:
        window = dit.get("window", 0)
        kind = "block_causal" if isinstance(window, int) and window > 0 else "per_block"
        d = {**d, "dit": {**dit, "kind": kind}}
    return d


def _from_dict(cls, d: dict, prefix: str):
    if not isinstance(d, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or '<root>'} must be an object")
    types_ = _field_types(cls)
    kwargs = {}
    for k, v in d.items():
        if k not in types_:
            raise _unknown_key(prefix + k, cls, prefix)
        tp = types_[k]
        if dataclasses.is_dataclass(tp):
            kwargs[k] = _from_dict(tp, v, prefix + k + ".")
        else:
            kwargs[k] = _convert(prefix + k, v, tp, from_text=False)
    return cls(**kwargs)


# ---------------------------------------------------------------------- experiments
def preset_config(preset: str) -> Config:
    """Sizes shared by all experiments: `tiny` (tests, seconds), `cpu` (minutes on 2 cores),
    `base` (accelerators). Experiments start from one and set their data."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {list(PRESETS)}")
    if preset == "tiny":
        return Config(
            preset="tiny",
            data=DataConfig(block_len=32, batch_size=8, max_documents=60),
            tokenizer=TokenizerConfig(vocab_size=1000),
            vae=VAEConfig(width=64, heads=2, mlp_dim=128, encoder_layers=1, decoder_layers=1,
                          num_latents=8, latent_dim=16),
            vae_train=TrainConfig(steps=60, lr=3e-3, checkpoint_every=20, log_every=10,
                                  eval_batches=2),
            decoder_train=TrainConfig(steps=20, lr=2e-3, checkpoint_every=10, log_every=10,
                                      eval_batches=2),
            dit=DiTConfig(width=64, heads=2, mlp_dim=128, layers=2, sample_steps=(5,)),
            dit_train=TrainConfig(steps=40, lr=2e-3, ema_decay=0.9, checkpoint_every=20,
                                  log_every=10, eval_batches=2),
            ar=ARConfig(width=64, heads=2, mlp_dim=128, layers=2),
            ar_train=TrainConfig(steps=30, lr=3e-3, checkpoint_every=15, log_every=10,
                                 eval_batches=2),
            reference=ARConfig(width=64, heads=2, mlp_dim=128, layers=3),
            reference_train=TrainConfig(steps=30, lr=3e-3, checkpoint_every=15, log_every=10,
                                        eval_batches=2),
            eval=EvalConfig(num_samples=8, samplers=("ddim", "dpm++"), steps=(1, 4),
                            guidance_scales=(0.0, 2.0), guidance_steps=4, long_tokens=64,
                            long_temperatures=(1.0, 0.7), long_steps=4, brier_prefixes=32))
    if preset == "cpu":
        return Config(
            preset="cpu",
            data=DataConfig(block_len=64, batch_size=32),
            tokenizer=TokenizerConfig(vocab_size=8000),
            # 40% of the encoder's input tokens masked: the decoder has to fill them in from
            # the other tokens, so it learns to write fluent text from partial latents. With
            # the DiT below unchanged, 50-step DDIM samples scored gen-PPL 576 against 1155
            # without masking (0.25: 706, 0.6: 521), for token accuracy 96.7% instead of 98.8%
            vae=VAEConfig(width=256, heads=4, mlp_dim=768, encoder_layers=2, decoder_layers=2,
                          num_latents=16, latent_dim=64, token_mask_prob=0.4),
            vae_train=TrainConfig(steps=800, lr=2e-3, checkpoint_every=200, log_every=20,
                                  eval_batches=8),
            # 200 steps keep make demo near 25 minutes; 400 (3 more minutes) score 12% lower
            # matched gen-PPL (README, "The decoder at block seams")
            decoder_train=TrainConfig(steps=200, lr=5e-4, checkpoint_every=100, log_every=20,
                                      eval_batches=8),
            # the block-causal prior over windows of 2 VAE blocks (32 latents, 128 tokens) in
            # diffusion blocks of 1 latent: of G = 1, 2, 4, 16 and the per-block DiT
            # (dit.kind=per_block: 3,000 steps in about the same time), it scored the lowest
            # gen-PPL at matched entropy (315 against 333 for the per-block DiT at unigram
            # entropy 5.5; README, "Block size against quality and speed")
            dit=DiTConfig(kind="block_causal", width=256, heads=4, mlp_dim=768, layers=4,
                          time_sampling="logit_normal", window=2, block_size=1),
            dit_train=TrainConfig(steps=800, lr=1e-3, ema_decay=0.999, checkpoint_every=500,
                                  log_every=50, eval_every=1000, eval_batches=8),
            # about the DiT's plus the VAE decoder's parameters (8.8M vs 5.3M + 3.6M)
            ar=ARConfig(width=256, heads=4, mlp_dim=768, layers=8),
            ar_train=TrainConfig(steps=600, lr=1e-3, checkpoint_every=200, log_every=20,
                                 eval_every=200, eval_batches=8),
            # the scorer: about 3x the baseline's parameters (26.1M vs 8.8M) and 2.5x its
            # steps, about 70 minutes alone on 2 cores (2.8 epochs); trained once by make
            # reference, then reused by make eval
            reference=ARConfig(width=384, heads=6, mlp_dim=1152, layers=12),
            reference_train=TrainConfig(steps=1500, lr=6e-4, checkpoint_every=250,
                                        log_every=50, eval_every=500, eval_batches=8),
            eval=EvalConfig(num_samples=256))
    return Config(
        preset="base",
        data=DataConfig(block_len=128, batch_size=256),
        tokenizer=TokenizerConfig(vocab_size=8000),
        vae=VAEConfig(width=768, heads=12, mlp_dim=2048, encoder_layers=6, decoder_layers=6,
                      num_latents=32, latent_dim=64),
        vae_train=TrainConfig(steps=50_000, lr=5e-4, warmup_frac=0.02, ema_decay=0.999,
                              compute_dtype="bfloat16", checkpoint_every=2000, log_every=100,
                              eval_every=5000, eval_batches=32),
        decoder_train=TrainConfig(steps=10_000, lr=2e-4, warmup_frac=0.02, ema_decay=0.999,
                                  compute_dtype="bfloat16", checkpoint_every=2000,
                                  log_every=100, eval_every=5000, eval_batches=32),
        dit=DiTConfig(width=768, heads=12, mlp_dim=2048, layers=12, sample_every=10_000),
        dit_train=TrainConfig(steps=200_000, lr=3e-4, warmup_frac=0.01, ema_decay=0.9999,
                              compute_dtype="bfloat16", checkpoint_every=5000, log_every=100,
                              eval_every=5000, eval_batches=32),
        ar=ARConfig(width=768, heads=12, mlp_dim=2048, layers=16),
        ar_train=TrainConfig(steps=100_000, lr=3e-4, warmup_frac=0.01,
                             compute_dtype="bfloat16", checkpoint_every=5000, log_every=100,
                             eval_every=5000, eval_batches=32))


EXPERIMENTS_DIR = pathlib.Path(__file__).resolve().parent.parent / "experiments"


def experiment_path(experiment: str) -> pathlib.Path:
    """`bbc_news` -> experiments/bbc_news.py (in the working directory or the source tree);
    a path to a .py file is taken as it is."""
    if experiment.endswith(".py"):
        candidates = [pathlib.Path(experiment)]
    else:
        candidates = [pathlib.Path("experiments") / f"{experiment}.py",
                      EXPERIMENTS_DIR / f"{experiment}.py"]
    for c in candidates:
        if c.is_file():
            return c
    known = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.py") if not p.stem.startswith("_"))
    raise ConfigError(f"no experiment {experiment!r} (looked for {', '.join(map(str, candidates))}); "
                      f"known experiments: {known}")


def load_experiment(experiment: str, preset: str = "cpu",
                    overrides: Iterable[str] = ()) -> Config:
    """Loads `get_config(preset)` from an experiment file and applies overrides."""
    path = experiment_path(experiment)
    spec = importlib.util.spec_from_file_location(f"ldlm_experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"experiment file {path} defines no get_config(preset)")
    cfg = module.get_config(preset)
    if not isinstance(cfg, Config):
        raise ConfigError(f"{path}: get_config must return ldlm.config.Config, got {type(cfg)}")
    return apply_overrides(cfg, overrides)
