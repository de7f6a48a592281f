"""The asyncio front end: ``batched.aio.dynamically`` and ``AsyncBatchProcessor``,
and ``batched.aio.inference`` for models."""

from batched.aio.batch_processor import AsyncBatchProcessor, dynamically
from batched.aio import inference  # noqa: E402 - after the classes it builds on

__all__ = ["AsyncBatchProcessor", "dynamically", "inference"]
