"""The asyncio front end: ``batched.aio.dynamically`` and ``AsyncBatchProcessor``."""

from batched.aio.batch_processor import AsyncBatchProcessor, dynamically

__all__ = ["AsyncBatchProcessor", "dynamically"]
