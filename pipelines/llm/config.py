"""The `llm` section: limits and retries for the LLM stages. Secrets come from the environment. (Issue 3.)"""

from pydantic import Field

from hybrid.schema import Section


class LLMConfig(Section):
    requests_per_minute: float = Field(60, gt=0, description="rate limit across the whole actor pool")
