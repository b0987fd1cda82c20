"""Cascade runtime: what training and inference share (objective, conditioning, seeding, checkpoints)."""
