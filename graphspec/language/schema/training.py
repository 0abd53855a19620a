"""Data, training and distribution settings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .base import Strict
from .tasks import TASKS, TaskName


class ShapesOptions(Strict):
    """The built-in scene generator: 2x2 grids of coloured shapes, captions that describe them."""

    min_shapes: int = Field(1, ge=1, description="Fewest shapes in a scene.")
    max_shapes: int = Field(2, ge=1, description="Most shapes in a scene (a scene has 4 cells).")
    colors: list[str] | None = Field(None, description="Colours to use (default: all: red, green, blue, "
                                     "yellow, purple, orange, white).")
    shapes: list[str] | None = Field(None, description="Shapes to use (default: circle, square, triangle).")
    seed: int = Field(0, ge=0, description="Seed of the scene order; splits stay disjoint for any seed.")


class DataSource(Strict):
    source: str = Field(
        "builtin:shapes", pattern=r"^(builtin:shapes|arrow:.+|jsonl:.+|webdataset:.+)$",
        description="'builtin:shapes' (scenes generated offline), 'arrow:DIR' (the ViLT/METER/Renaissance Arrow "
        "tables in DIR), 'jsonl:FILE' (a manifest; image paths relative to it) or, for captions pretraining, "
        "'webdataset:PATTERN' (tar shards as img2dataset writes them, e.g. data/shards/{00000..00099}.tar, read "
        "as a stream). Paths relative to the current directory.")
    family: str | list[str] | None = Field(
        None, description="Arrow only: the table family (snli, nlvr2, vqav2, refcoco, or for captions "
        "coco_caption_karpathy, f30k_caption_karpathy, vg, sbu, conceptual_caption; short names coco, f30k, gcc); "
        "defaults to the task's (captions: coco_caption_karpathy). Captions pretraining may list several, read in "
        "turn (e.g. [coco, vg]).")
    skip_bad: bool = Field(False, description="Skip unreadable samples instead of stopping; they are counted in "
                           "the run summary.")
    task: TaskName = Field(
        "captions", description="What each sample holds: " + "; ".join(f"{t.name} ({t.description})"
                                                                     for t in TASKS.values()) + ".")
    split: Literal["train", "val", "test"] = Field("train", description="Which split to read.")
    samples: int | None = Field(None, ge=1, description="Number of distinct scenes to use; all of the split when unset.")
    shapes: ShapesOptions = Field(default_factory=ShapesOptions, description="Options of builtin:shapes.")


class Data(Strict):
    train: DataSource = Field(default_factory=DataSource, description="Training data.")
    val: DataSource | None = Field(None, description="Validation data, evaluated every `train.val_every` steps.")
    val_pairs: int = Field(2, ge=1, le=16, description="Image-text pairs per validation scene (half of them "
                           "negatives), fixed across evaluations.")
    workers: int | None = Field(
        None, ge=0, le=64, description="Worker processes per rank that read, decode and transform training "
        "batches ahead of the step (0: in the training process). Unset: none when training on the CPU (the "
        "model's threads use every core already), else the rank's cores but one, up to 8; results do not depend "
        "on it.")
    prefetch: int = Field(2, ge=1, le=64, description="Batches each worker prepares ahead.")


class Optimizer(Strict):
    name: Literal["adamw", "adam", "sgd"] = Field("adamw", description="Optimizer.")
    lr: float = Field(1e-4, gt=0, le=10, description="Peak learning rate (before per-node multipliers).")
    weight_decay: float = Field(0.01, ge=0, description="Decoupled weight decay; never applied to biases and norms.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas.")
    eps: float = Field(1e-8, gt=0, description="Adam epsilon.")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum.")
    kernel: Literal["fused", "foreach", "loop"] = Field(
        "fused", description="How torch's Adam/AdamW updates the weights when the optimizer is not offloaded "
        "(offloaded, DeepSpeed's CPU Adam does): fused, one kernel over all tensors (torch's fused AdamW, on "
        "the CPU and CUDA); foreach, vectorised over tensors; loop, one tensor at a time (graphspec 0.2's "
        "path, kept to measure against). Numerically the same update up to rounding.")


class Schedule(Strict):
    warmup: float = Field(
        0.1, ge=0, description="Warm-up length: a fraction of `train.steps` when below 1, else a number of steps."
    )
    decay: Literal["linear", "cosine", "constant"] = Field("linear", description="Shape after warm-up.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Final learning rate as a fraction of the peak.")


class NonFinite(Strict):
    """What a loss that is not a number (NaN or infinite) does to the run."""

    action: Literal["stop", "skip"] = Field(
        "stop", description="stop: end the run before that step's update, naming the step, the losses and the "
        "last good checkpoint (exit code 4). skip: drop the step (no update; counted in the run summary) and go "
        "on; needs gradient accumulation 1.")
    max_in_a_row: int = Field(3, ge=1, description="With skip: stop after this many skipped steps in a row.")


class Exploding(Strict):
    """What a finite loss that explodes does to the run: over `bound` times the first steps' loss (the median
    of the first three, before training moved much), or, once `window` steps have passed, over `spike` times
    the median of the last `window` steps and over the first steps' loss too. Each rank judges its own micro
    batches; the ranks act together."""

    action: Literal["stop", "skip", "warn"] = Field(
        "stop", description="stop: end the run before that step's update, naming the step and the losses (exit "
        "code 4). skip: drop the step (no update; counted in the run summary) and go on; needs gradient "
        "accumulation 1 (the limit is train.nonfinite.max_in_a_row). warn: say so and train on.")
    bound: float = Field(50.0, gt=1, description="A loss over this many times the first steps' loss has diverged.")
    spike: float = Field(10.0, gt=1, description="A loss over this many times the recent median (and over the "
                         "first steps' loss) has diverged.")
    window: int = Field(50, ge=5, description="Steps the recent median is taken over; the spike bound applies "
                        "once that many have passed.")


class Train(Strict):
    steps: int = Field(1000, ge=1, description="Optimizer steps.")
    batch_size: int = Field(32, ge=1, description="Global batch size: micro_batch_size x accumulation x world_size.")
    micro_batch_size: int | None = Field(
        None, ge=1, description="Per-process batch of one forward pass; defaults to batch_size / world_size."
    )
    optimizer: Optimizer = Field(default_factory=Optimizer, description="The optimizer.")
    schedule: Schedule = Field(default_factory=Schedule, description="The learning-rate schedule.")
    lr_multipliers: dict[str, float] = Field(
        default_factory=dict,
        description="Learning-rate multipliers by node name, `heads`, `heads.NAME`, or a part of a node by its "
        "parameter-name prefix (`fusion.type_embed`); the longest match wins.",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Training precision.")
    kernels: Literal["fast", "plain"] = Field(
        "fast", description="Dropout and attention kernels on the CPU. fast: dropout masks drawn 16 bits per "
        "element (p honoured to 1/65536; every nn.Dropout, library towers' included, uses it); attention, timm's "
        "blocks included, computing its probabilities itself instead of calling SDPA; self-attention's q, k and v "
        "in one GEMM. On an accelerator torch's kernels are used either way. plain: torch's "
        "nn.Dropout and scaled_dot_product_attention (graphspec 0.2's path, kept to measure against). The same "
        "model and the same expected update; the dropout masks' random draws differ.")
    tf32: bool = Field(
        True, description="On an NVIDIA GPU, fp32 matrix products and convolutions in TF32 (a 10-bit mantissa, "
        "about 1e-3 relative; several times faster from Ampere on). false: full fp32 products. Nothing changes "
        "on the CPU. On a GPU, bf16 (`precision: bf16`) is the faster choice still.")
    deterministic: bool = Field(
        False, description="On a GPU, deterministic kernels only (torch.use_deterministic_algorithms, cuDNN's "
        "benchmarking off, CUBLAS_WORKSPACE_CONFIG=:4096:8): the same run twice, or one stopped and resumed, logs "
        "the same losses, at some cost in speed; an operation with no deterministic kernel stops the run. On the "
        "CPU graphspec's kernels are deterministic already.")
    grad_clip: float | None = Field(1.0, gt=0, description="Clip the global gradient norm; null for no clipping.")
    seed: int = Field(0, ge=0, description="Seed for initialisation, data order and masking.")
    val_every: int | None = Field(None, ge=1, description="Validate every this many steps (and at the end).")
    log_every: int = Field(10, ge=1, description="Log metrics every this many steps.")
    checkpoint_every: int | None = Field(
        None, ge=1, description="Write a training checkpoint (trainable weights, optimizer, schedule, random states; "
        "frozen weights recorded by source and hash) every this many steps, for `graphspec run --resume RUN_DIR`; "
        "unset: only the final weights are saved.")
    keep_checkpoints: int = Field(2, ge=1, description="How many of the newest training checkpoints to keep.")
    nonfinite: NonFinite = Field(default_factory=NonFinite, description="What a non-finite loss does: stop "
                                 "(default) or skip the step.")
    exploding: Exploding = Field(default_factory=lambda: Exploding(), description="What a finite loss that "
                                 "explodes does: stop (default), skip the step or warn.")


class FrozenTowers(Strict):
    """How wholly frozen input-side towers run: outside the DeepSpeed engine, replicated on every rank, under
    no_grad and in eval mode (see `graphspec compile`'s placement plan)."""

    dtype: Literal["fp32", "bf16"] | None = Field(
        None, description="Precision of those towers' weights and forward (default: bf16 when training in bf16, "
        "else fp32); their outputs are cast to the training precision.")
    offload: Literal["none", "cpu"] = Field(
        "none", description="cpu: on an accelerator, keep those towers' weights in CPU memory and move them one "
        "layer at a time for the forward. Nothing moves on a CPU-only machine.")
    cache_outputs: bool = Field(
        False, description="Store those towers' outputs on disk, keyed by the tower's weights and each sample's "
        "inputs, and reuse them in later epochs and runs. Only towers whose inputs are the same every time a "
        "sample comes back are cached (not text that MLM masks anew each step).")
    cache_dir: str | None = Field(
        None, description="Where the output cache lives (default: $GRAPHSPEC_CACHE, else "
        "~/.cache/graphspec/frozen-outputs); runs that share it share outputs.")


class Distributed(Strict):
    world_size: int = Field(1, ge=1, description="Data-parallel processes: `graphspec run` starts them (torchrun "
                            "on this machine; `--nproc N` sets it, `--hostfile` spreads them over machines). The "
                            "batch size stays global.")
    zero_stage: Literal[0, 1, 2, 3] = Field(0, description="ZeRO stage: 1 shards optimizer state, 2 also grads, 3 also weights.")
    offload_optimizer: Literal["none", "cpu"] = Field("none", description="ZeRO-Offload of optimizer state (stage >= 1).")
    offload_param: Literal["none", "cpu"] = Field("none", description="Offload of weights (ZeRO stage 3 only).")
    accelerator: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to train; auto picks cuda when present.")
    reduce_bucket_size: int | None = Field(None, ge=2, multiple_of=2, description="ZeRO reduce bucket size in "
                                           "elements (also ZeRO-1/2's allgather bucket: a multiple of 2).")
    frozen: FrozenTowers = Field(default_factory=FrozenTowers, description="Frozen input towers outside the "
                                 "engine: precision, offload, output cache.")
    deepspeed: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra DeepSpeed config keys merged over the emitted config; checked like the rest.",
    )
