"""The `train` and `data` sections. (Owned by the training work; issue 5.)"""

from pydantic import Field

from hybrid.schema import Section


class TrainConfig(Section):
    batch_size: int = Field(8, ge=1, description="sequences per optimizer step per worker")
    learning_rate: float = Field(3e-4, gt=0, description="peak learning rate")


class DataConfig(Section):
    train: str | None = Field(None, description="training IO pairs: JSONL/Parquet file or folder")
    validation: str | None = Field(None, description="validation IO pairs: JSONL/Parquet file or folder")
