"""Batching for models, for asyncio callers."""

from batched.aio.inference.model_batch_processor import AsyncModelBatchProcessor, dynamically

__all__ = ["AsyncModelBatchProcessor", "dynamically"]
