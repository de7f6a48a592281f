"""Batching for models: callers hand in features, the batch is padded natively."""

from batched.inference.model_batch_processor import ModelBatchProcessor, dynamically

__all__ = ["ModelBatchProcessor", "dynamically"]
