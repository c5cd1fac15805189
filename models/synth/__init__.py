"""The teacher: talking training video of one face, made from speech with phoneme timings."""
