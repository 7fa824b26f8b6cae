"""The base every API model shares: camelCase on the wire, snake_case in Python."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class APIModel(BaseModel):
    """Reads what the API server stores (unknown fields ignored) and writes only what is set."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready form sent to the API server: aliases, no nulls."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
