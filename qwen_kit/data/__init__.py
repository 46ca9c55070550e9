"""Instruction data: reading, validating, rendering with the chat template, label masks, packing."""
