"""Text edits of the guest's configuration files: the qemu-ga RPC filter and the watchdog.

This module is the single source of every file edit the guest plan makes. `vmhealth
guest setup` calls these functions directly; `vmhealth cloudinit render` ships this very
file to the guest (cloud-init write_files) and runs it with the guest's python3, so a
guest prepared either way ends up with the same bytes. Hence: standard library only,
no imports from vmhealth, Python 3.6+ syntax at run time (RHEL 8's platform-python).

Every edit changes only the lines it must, keeps comments and unknown settings, and
returns the new text plus a list of what changed in words; an edit applied twice
changes nothing the second time.
"""

import os
import re
import sys
import tempfile

EXEC_RPCS = ("guest-exec", "guest-exec-status")

# Variables of /etc/sysconfig/qemu-ga (RHEL/Fedora) that the qemu-guest-agent unit
# passes on qemu-ga's command line. Lists: comma-separated RPC names. Args: options.
ENV_BLOCK_LISTS = ("BLACKLIST_RPC", "BLOCK_RPCS")  # RHEL 8 / RHEL 9.0-9.3
ENV_ARGS = ("FILTER_RPC_ARGS", "QEMU_GA_ARGS")  # RHEL 9.4+ and 10 / Fedora (QEMU >= 9.1)
BLOCK_OPTIONS = ("--block-rpcs", "--blacklist", "-b")
ALLOW_OPTIONS = ("--allow-rpcs", "-a")

_ASSIGNMENT = re.compile(r"^(?P<indent>\s*)(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)$")


def _split_quotes(value):
    """('"', 'inner', '"') for a quoted value, ('', value, '') otherwise."""
    stripped = value.strip()
    if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "\"'":
        return stripped[0], stripped[1:-1], stripped[0]
    return "", stripped, ""


def _rpc_list(text):
    return [item.strip() for item in text.split(",") if item.strip()]


def _without_exec(names):
    return [name for name in names if name not in EXEC_RPCS]


def _with_exec(names):
    return names + [rpc for rpc in EXEC_RPCS if rpc not in names]


def _edit_option_words(words, what):
    """Open guest-exec in a list of qemu-ga options (FILTER_RPC_ARGS, QEMU_GA_ARGS)."""
    out = []
    changes = []
    index = 0
    while index < len(words):
        word = words[index]
        option, sep, listed = word.partition("=")
        separate = not sep and option in BLOCK_OPTIONS + ALLOW_OPTIONS and index + 1 < len(words)
        if separate:  # "-b LIST" / "--allow-rpcs LIST"
            listed = words[index + 1]
        if option in BLOCK_OPTIONS + ALLOW_OPTIONS and (sep or separate):
            names = _rpc_list(listed)
            blocking = option in BLOCK_OPTIONS
            new = _without_exec(names) if blocking else _with_exec(names)
            if new != names:
                verb = "removed guest-exec from" if blocking else "added guest-exec to"
                changes.append(f"{what}: {verb} {option}")
            joined = ",".join(new)
            if separate:
                out.extend([option, joined])
                index += 2
                continue
            word = f"{option}={joined}"
        out.append(word)
        index += 1
    return out, changes


def open_exec_in_env(text, path="/etc/sysconfig/qemu-ga"):
    """Let guest-exec and guest-exec-status through every filter variable of the file."""
    lines = text.splitlines(keepends=True)
    changes = []
    for number, line in enumerate(lines):
        body = line.rstrip("\r\n")
        ending = line[len(body):]
        match = _ASSIGNMENT.match(body)
        if match is None:
            continue
        name = match.group("name")
        open_quote, inner, close_quote = _split_quotes(match.group("value"))
        what = f"{path} {name}"
        if name in ENV_BLOCK_LISTS:
            names = _rpc_list(inner)
            new_inner = ",".join(_without_exec(names))
            if new_inner != ",".join(names):
                changes.append(f"{what}: removed guest-exec, guest-exec-status from the "
                               "block list")
            else:
                continue
        elif name in ENV_ARGS:
            words, word_changes = _edit_option_words(inner.split(), what)
            if not word_changes:
                continue
            changes.extend(word_changes)
            new_inner = " ".join(words)
        else:
            continue
        lines[number] = (f"{match.group('indent')}{name}={open_quote}{new_inner}"
                         f"{close_quote}{ending}")
    return "".join(lines), changes


def exec_blocks_in_env(text, path="/etc/sysconfig/qemu-ga"):
    """Why this environment file keeps guest-exec closed (empty list: it does not)."""
    _new, changes = open_exec_in_env(text, path)
    return changes


_CONF_KEY = re.compile(r"^(?P<key>\s*(?P<name>block-rpcs|allow-rpcs|blacklist)\s*=\s*)"
                       r"(?P<value>.*?)(?P<trail>\s*)$")


def open_exec_in_conf(text, path="/etc/qemu/qemu-ga.conf"):
    """Open guest-exec in qemu-ga's own key file ([general] block-rpcs/allow-rpcs)."""
    lines = text.splitlines(keepends=True)
    changes = []
    group = ""
    for number, line in enumerate(lines):
        body = line.rstrip("\r\n")
        ending = line[len(body):]
        stripped = body.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            group = stripped[1:-1].strip()
            continue
        match = _CONF_KEY.match(body)
        if group != "general" or match is None:
            continue
        # GKeyFile lists are separated by ';' (a trailing one is customary).
        names = [item.strip() for item in match.group("value").split(";") if item.strip()]
        blocking = match.group("name") != "allow-rpcs"
        new = _without_exec(names) if blocking else _with_exec(names)
        if new == names:
            continue
        verb = "removed guest-exec from" if blocking else "added guest-exec to"
        changes.append(f"{path} [general] {match.group('name')}: {verb} the list")
        value = "".join(f"{name};" for name in new)
        lines[number] = f"{match.group('key')}{value}{match.group('trail')}{ending}"
    return "".join(lines), changes


def exec_blocks_in_conf(text, path="/etc/qemu/qemu-ga.conf"):
    _new, changes = open_exec_in_conf(text, path)
    return changes


def exec_blocks_in_args(argv):
    """Why a running qemu-ga's command line keeps guest-exec closed (empty: it does not)."""
    blocked = []
    allow = None
    index = 0
    while index < len(argv):
        option, sep, listed = argv[index].partition("=")
        if not sep and option in BLOCK_OPTIONS + ALLOW_OPTIONS and index + 1 < len(argv):
            listed = argv[index + 1]
            index += 1
        if option in BLOCK_OPTIONS:
            blocked += [rpc for rpc in _rpc_list(listed) if rpc in EXEC_RPCS]
        elif option in ALLOW_OPTIONS:
            allow = (allow or []) + _rpc_list(listed)
        index += 1
    reasons = [f"qemu-ga runs with {rpc} blocked (--block-rpcs)" for rpc in blocked]
    if allow is not None:
        reasons += [f"qemu-ga runs with an --allow-rpcs list without {rpc}"
                    for rpc in EXEC_RPCS if rpc not in allow]
    return reasons


# ---------------------------------------------------------------------------
# watchdog daemon
# ---------------------------------------------------------------------------

def _set_keyed_lines(text, wanted, separator, path, comment_prefix="#"):
    """Set `key<separator>value` lines: replace a live line, else uncomment the stock
    commented-out one in place, else append. Later duplicates of a key are commented."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    changes = []
    for key, value in wanted.items():
        pattern = re.compile(r"^(?P<hash>\s*" + re.escape(comment_prefix) + r"?\s*)"
                             + re.escape(key) + r"\s*" + re.escape(separator.strip()) +
                             r"\s*(?P<value>.*?)\s*$")
        desired = f"{key}{separator}{value}\n"
        matches = [(i, pattern.match(line)) for i, line in enumerate(lines)]
        commented = [i for i, match in matches if match]
        live = [i for i, match in matches if match and comment_prefix not in match.group("hash")]
        if live:
            first = live[0]
            old = pattern.match(lines[first]).group("value")
            if old != value:  # keep the stock file's own spacing when the value is right
                changes.append(f"{path}: {key} {old} -> {value}")
                lines[first] = desired
            for extra in live[1:]:
                lines[extra] = f"{comment_prefix} {lines[extra]}"
                changes.append(f"{path}: commented out a second {key} line")
        elif commented:
            lines[commented[0]] = desired
            changes.append(f"{path}: set {key} = {value} (was commented out)")
        else:
            lines.append(desired)
            changes.append(f"{path}: set {key} = {value}")
    return "".join(lines), changes


def edit_watchdog_conf(text, timeout, interval, device="/dev/watchdog",
                       path="/etc/watchdog.conf"):
    """Make the watchdog daemon feed `device` every `interval` s with a `timeout` s
    hardware timeout. The stock file leaves watchdog-device commented out, so the
    daemon feeds nothing until it is set."""
    wanted = {
        "watchdog-device": device,
        "watchdog-timeout": str(timeout),
        "interval": str(interval),
        # Feed from a locked, real-time process: a busy guest must not miss feeds.
        "realtime": "yes",
        "priority": "1",
    }
    return _set_keyed_lines(text, wanted, " = ", path)


def edit_debian_default(text, module, path="/etc/default/watchdog"):
    """Debian's watchdog unit starts only with run_watchdog=1 and loads watchdog_module.
    run_wd_keepalive=0: a clean stop of the daemon (which disarms the device) leaves
    the unit inactive instead of failed, so a failed unit means a crash."""
    wanted = {"run_watchdog": "1", "run_wd_keepalive": "0",
              "watchdog_module": f'"{module}"'}
    return _set_keyed_lines(text, wanted, "=", path)


# ---------------------------------------------------------------------------
# Applying to a root directory (used by cloud-init's runcmd via main())
# ---------------------------------------------------------------------------

def read_text(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def write_atomic(path, text, mode=0o644):
    """Replace `path` with `text` through a temp file in the same directory."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    try:
        stat = os.stat(path)
        mode, owner = stat.st_mode & 0o7777, (stat.st_uid, stat.st_gid)
    except FileNotFoundError:
        owner = None
    fd, temp = tempfile.mkstemp(dir=directory, prefix=".vmhealth-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temp, mode)
        if owner is not None:
            os.chown(temp, *owner)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


def in_root(root, path):
    return os.path.join(root, path.lstrip("/"))


def edit_file(root, path, editor, *, create=False):
    """Run `editor(text) -> (text, changes)` on root/path; write only on a change."""
    full = in_root(root, path)
    text = read_text(full)
    if text is None and not create:
        return []
    new, changes = editor(text or "")
    if new != (text or ""):
        write_atomic(full, new)
    return changes


def main(argv=None):
    """cloud-init's entry point (runcmd): apply the requested edits to a root and print
    each change. Options mirror the plan: --open-exec, --watchdog-timeout/-interval,
    --debian-module (Debian's /etc/default/watchdog)."""
    import argparse  # only the script form needs it

    parser = argparse.ArgumentParser(prog="vmhealth-guest-edits")
    parser.add_argument("--root", default="/")
    parser.add_argument("--open-exec", action="store_true")
    parser.add_argument("--watchdog-timeout", type=int)
    parser.add_argument("--watchdog-interval", type=int)
    parser.add_argument("--debian-module")
    args = parser.parse_args(argv)
    changes = []
    if args.open_exec:
        changes += edit_file(args.root, "/etc/sysconfig/qemu-ga", open_exec_in_env)
        changes += edit_file(args.root, "/etc/qemu/qemu-ga.conf", open_exec_in_conf)
    if args.watchdog_timeout:
        changes += edit_file(args.root, "/etc/watchdog.conf", lambda text: edit_watchdog_conf(
            text, args.watchdog_timeout, args.watchdog_interval or 1), create=True)
    if args.debian_module:
        changes += edit_file(args.root, "/etc/default/watchdog",
                             lambda text: edit_debian_default(text, args.debian_module),
                             create=True)
    for change in changes:
        print("vmhealth: " + change)
    if not changes:
        print("vmhealth: guest files already as required")
    return 0


if __name__ == "__main__":
    sys.exit(main())
