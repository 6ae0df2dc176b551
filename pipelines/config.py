"""The `pipeline` section: where data lives and what the structural stages keep. (Issue 2.)"""

from pydantic import Field

from hybrid.schema import Section


class PipelineConfig(Section):
    data_dir: str = Field("data", description="root of data/repos and data/ast_dataset")
