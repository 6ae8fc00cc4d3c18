"""Losses that need more than one micro-batch or process to compute, kept apart from the tasks that use them."""
