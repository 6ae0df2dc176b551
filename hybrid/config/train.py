"""The `train` and `data` sections: optimisation, workers and checkpoints; where the IO pairs are."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from hybrid.config.section import PATH, Section


class TrainConfig(Section):
    batch_size: int = Field(8, ge=1, description="sequences per micro-batch per worker")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    learning_rate: float = Field(3e-4, gt=0, description="peak learning rate")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine floor as a fraction of the peak rate")
    warmup_iters: int = Field(10, ge=0, description="linear warmup steps before the cosine decay")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay (not on norms and biases)")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2")
    grad_clip: float = Field(1.0, ge=0, description="clip the global gradient norm to this (0 = off)")
    max_iters: int = Field(200, ge=0, description="optimizer steps in total")
    max_minutes: float | None = Field(
        None, gt=0, description="stop (and checkpoint) after this many minutes of training, whatever max_iters says"
    )
    num_workers: int = Field(
        1,
        ge=0,
        description="Ray Train workers; 0 runs the loop in this process without a worker group (and without "
        "Ray Data: the same stream is read in this process)",
    )
    strategy: Literal["auto", "ddp", "fsdp", "allreduce"] = Field(
        "auto",
        description="data parallelism over the workers: ddp (DistributedDataParallel; auto picks it for more "
        "than one worker), fsdp (FSDP2: parameters, gradients and optimizer state sharded — for "
        "models that do not fit one device), allreduce (full replicas and one flat all-reduce "
        "after backward: the first scheme, kept for `hybrid bench train`)",
    )
    use_gpu: bool | Literal["auto"] = Field("auto", description="train on GPUs (NCCL); auto = when CUDA is there")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per Ray Train worker")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="bf16 autocast or fp32; auto = bf16 on GPU, fp32 on CPU"
    )
    activation_checkpointing: bool = Field(False, description="recompute block activations in backward")
    compile: bool = Field(
        False,
        description="torch.compile each decoder block (regional: a retrieval layer's attention, which talks to "
        "the memory store, stays eager); same results, the first steps compile. Needs a C++ compiler on CPU, "
        "Triton on GPU",
    )
    compile_backend: str = Field(
        "inductor",
        min_length=1,
        description="torch.compile's backend for train.compile: inductor (generated kernels), or e.g. aot_eager "
        "(traced graphs run eagerly: checks tracing without code generation)",
    )

    @field_validator("compile_backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value == "inductor":  # the default: no torch import while a config loads
            return value
        from torch._dynamo import list_backends

        if value not in list_backends(exclude_tags=()):  # debug backends (aot_eager) included
            shown = ", ".join([*list_backends(), "aot_eager"])
            raise ValueError(f"unknown torch.compile backend {value!r} (e.g. {shown})")
        return value

    seed: int = Field(1337, description="seed for the weights, the data order and dropout")
    output_dir: str = Field("outputs/train", description="checkpoints, metrics and the resolved config", **PATH)
    resume: str = Field(
        "auto",
        description="auto = continue from the latest checkpoint in output_dir; none = start fresh "
        "(output_dir must hold no checkpoints); or a checkpoint folder",
        **PATH,
    )
    init_from: str | None = Field(
        None,
        description="start from this checkpoint's weights (a checkpoint folder, or a training output folder → "
        "its best, else latest) and tokenizer, with a fresh optimizer, scheduler and step count; "
        "parameters it lacks (e.g. memory) keep their fresh init. A resumable checkpoint in "
        "output_dir (train.resume) takes precedence",
        **PATH,
    )
    eval_every: int = Field(50, ge=1, description="validate and checkpoint every this many steps")
    eval_batches: int | None = Field(None, ge=1, description="validation micro-batches per evaluation (None = all)")
    log_every: int = Field(10, ge=1, description="print a progress line every this many steps")
    keep_last: int = Field(2, ge=1, description="checkpoints kept besides `best`")
    best_by: Literal["val_loss", "val_exact_match"] = Field(
        "val_loss",
        description="what `best` follows: the lowest validation loss or the highest validation "
        "(teacher-forced) exact match",
    )
    tokenizer: Literal["bpe", "word"] = Field(
        "bpe",
        description="tokenizer trained on the training data when no base/init checkpoint gives one: bpe = "
        "byte-level BPE of tokenizer_vocab_size tokens; word = one token per whitespace-separated "
        "word (WordLevel over every training word, plus <|unk|>)",
    )
    tokenizer_vocab_size: int = Field(4096, ge=300, description="vocabulary of the BPE trained when no base is given")
    tokenizer_sample: int = Field(
        20_000,
        ge=1,
        description="IO pairs the tokenizer is trained on: a uniform sample over the training files "
        "(the driver holds only these)",
    )
    tensorboard: bool = Field(True, description="TensorBoard event files in <output_dir>/tensorboard")
    mlflow_uri: str | None = Field(
        None, description="also log to MLflow: a tracking server URI or a local store (file:///path/mlruns)", **PATH
    )
    mlflow_experiment: str = Field("hybrid", min_length=1, description="the MLflow experiment of the run")
    max_failures: int = Field(0, ge=-1, description="Ray Train worker-failure restarts (from the last checkpoint)")


class DataConfig(Section):
    train: str | None = Field(
        None, description="training IO pairs: a JSONL/Parquet file, a folder of them, a glob, or a URI (s3://…)", **PATH
    )
    validation: str | None = Field(
        None, description="validation IO pairs: a JSONL/Parquet file, a folder of them, a glob, or a URI", **PATH
    )
    max_length: int = Field(512, ge=8, description="tokens per IO pair; longer inputs lose tokens on the left")
    bucket_by_length: bool = Field(
        False,
        description="draw each global micro-batch from examples with the same number of segments "
        "(ceil(tokens / model.segment_length)) within a shuffle window, so short examples are not "
        "padded to long ones; the order stays a function of (train.seed, step)",
    )
    on_bad_record: Literal["error", "skip"] = Field(
        "error", description="a bad line (not JSON, no string input/output): error naming file:line, or skip and count"
    )
    shuffle_window: int = Field(
        2_048,
        ge=1,
        description="rows shuffled together (a seeded permutation per window and epoch; with "
        "bucket_by_length, the rows batched by length together); bounds what a data task "
        "holds",
    )
    read_ahead_mb: float | None = Field(
        None,
        gt=0,
        description="how far (MiB of tokenized rows) the Ray Data stream reads ahead of the training "
        "workers (null = 8 shuffle windows of max_length rows, at least 16 MiB); unbounded, a "
        "large data set's reading competes with the first minutes of training for the CPUs",
    )
    local_rows: int = Field(
        20_000,
        ge=0,
        description="a training stream (pairs × epochs) or validation set of at most this many pairs is read and "
        "tokenized by each Ray Train worker itself, as in-process runs and torchrun ranks read theirs (the same "
        "batches): a Ray Data execution costs seconds of start-up that a small set does not repay; larger ones "
        "stream through Ray Data (0 = always Ray Data)",
    )
    read_tasks: int = Field(
        0, ge=0, description="Ray Data tasks reading and tokenizing at once (0 = one per free CPU of the cluster)"
    )
    cpus_per_task: float | None = Field(
        None,
        ge=0,
        description="CPUs each reading/tokenizing task reserves (null = 1, or 0 when the training "
        "workers hold every CPU, as on a laptop)",
    )
