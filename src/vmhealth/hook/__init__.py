"""The libvirt qemu hook: hand domains to the daemon, keep watchdog actions in line.

Modules, one job each:
  scan       a lean, safe reader of the few facts the hook needs from domain XML
  spool      the daemon hand-off directory (/run/vmhealth/domains), written atomically
  validate   prepare's spec check, with a cache so repeated starts stay cheap
  watchdog   the migrate/restore filter that aligns watchdog actions with the spec
  main       argv/stdin/stdout/stderr in, exit code out; the time limit
  launcher   the tiny executable libvirt runs (hooks/vmhealth)
  install    `vmhealth hook install|uninstall|status`: placing it and reloading libvirt

Everything imported on the hook's hot path is standard library only: libvirt waits
for the hook on every domain start and stop (see docs/hook.md for the figures).
"""
