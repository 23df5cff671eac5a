"""The five gates, each a small object with one method, `check(call) -> Deny | None`.

identity -> scope -> allowlist -> shape -> egress, run in that order by `pipeline.Pipeline`.
The first gate that denies decides. A gate never imports aiohttp or h11 and never touches a
socket: what it needs from the outside (the token store, the audit log, the body's bytes) comes
through a narrow interface on the call.
"""
