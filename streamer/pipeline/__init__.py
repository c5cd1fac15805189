"""The media pipeline of a session: the timeline, frames and their buses, catch-up. What
belongs to the avatar (compositing, idle motion) and to the voice (mel windows, decoding)
lives in :mod:`models`."""
