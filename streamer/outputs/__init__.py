"""Outputs: everything that consumes a session's AV frames (WebRTC viewers, the mic uplink)."""
