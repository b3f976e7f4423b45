"""The guest side: what a guest needs for a health spec, and applying it to a root.

distro  which distribution a root runs (os-release) and its agent RPC filter
plan    the guest plan derived from a HealthSpec
edits   the file edits (stdlib only; also shipped to guests by cloud-init)
system  commands, processes and units of a root directory (live or offline)
setup   `vmhealth guest setup` / `guest check` over the plan's steps
"""
