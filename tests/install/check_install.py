#!/usr/bin/env python3
"""meson install into a DESTDIR, and the tree a distribution expects there.

Checks the binaries, the library and its pkg-config file (a program compiles
against the installed headers), the systemd units (systemd-analyze verify
passes, and systemd-analyze security rates nsbrokerd.service at most 2.5),
the sysusers.d entry and the D-Bus files. Prints the exposure figure.

    check_install.py BUILD_DIR
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree

MAX_EXPOSURE = 2.5


def run(*args, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, **kwargs)


def main():
    build = sys.argv[1]
    options = {o["name"]: o["value"] for o in json.loads(
        run("meson", "introspect", "--buildoptions", build).stdout)}
    prefix = options["prefix"]
    unitdir = options["systemdsystemunitdir"] or run(
        "pkg-config", "--variable=systemdsystemunitdir", "systemd").stdout.strip()
    sysusersdir = run("pkg-config", "--variable=sysusersdir", "systemd").stdout.strip()

    def under_prefix(key, *rest):
        return os.path.join(prefix, options[key], *rest)

    failures = []

    def check(ok, what):
        print(("ok     " if ok else "FAILED ") + what)
        if not ok:
            failures.append(what)

    destdir = tempfile.mkdtemp(prefix="nsbroker-install-")
    try:
        installed = run("meson", "install", "-C", build, "--destdir", destdir, "--no-rebuild",
                        "--quiet")
        check(installed.returncode == 0, "meson install --destdir " + installed.stderr.strip())

        def tree(path):
            return destdir + path

        expected = {
            "nsbrokerd": under_prefix("sbindir", "nsbrokerd"),
            "nsbroker": under_prefix("bindir", "nsbroker"),
            "nsbroker-worker": under_prefix("libexecdir", "nsbroker", "nsbroker-worker"),
            "libnsbroker.so.0": under_prefix("libdir", "libnsbroker.so.0"),
            "libnsbroker.so": under_prefix("libdir", "libnsbroker.so"),
            "nsbroker.pc": under_prefix("libdir", "pkgconfig", "nsbroker.pc"),
            "client.hpp": under_prefix("includedir", "nsbroker", "client.hpp"),
            "nsbrokerd.service": os.path.join(unitdir, "nsbrokerd.service"),
            "nsbrokerd.socket": os.path.join(unitdir, "nsbrokerd.socket"),
            "sysusers.d/nsbroker.conf": os.path.join(sysusersdir, "nsbroker.conf"),
            "D-Bus policy": under_prefix("datadir", "dbus-1", "system.d",
                                         "org.nsbroker.Broker1.conf"),
            "D-Bus activation": under_prefix("datadir", "dbus-1", "system-services",
                                             "org.nsbroker.Broker1.service"),
            "D-Bus interface": under_prefix("datadir", "dbus-1", "interfaces",
                                            "org.nsbroker.Broker1.xml"),
        }
        for what, path in expected.items():
            check(os.path.exists(tree(path)), f"{what} at {path}")
        check(os.access(tree(expected["nsbrokerd"]), os.X_OK), "nsbrokerd is executable")
        check(os.access(tree(expected["nsbroker-worker"]), os.X_OK),
              "nsbroker-worker is executable")

        # The library as a user of pkg-config finds it.
        env = dict(os.environ, PKG_CONFIG_PATH=os.path.dirname(tree(expected["nsbroker.pc"])))
        flags = run("pkg-config", "--define-variable=prefix=" + tree(prefix), "--cflags", "--libs",
                    "nsbroker", env=env)
        check(flags.returncode == 0 and "-lnsbroker" in flags.stdout,
              "pkg-config nsbroker: " + flags.stdout.strip())
        with tempfile.TemporaryDirectory() as scratch:
            source = os.path.join(scratch, "use.cpp")
            with open(source, "w") as f:
                f.write("#include <nsbroker/client.hpp>\n"
                        "int main() { auto c = nsbroker::Client::connect(\"/nonexistent\");"
                        " return c ? 0 : 1; }\n")
            compiled = run("c++", "-std=c++20", source, "-o", os.path.join(scratch, "use"),
                           *flags.stdout.split())
            check(compiled.returncode == 0, "a program builds against the installed library "
                  + compiled.stderr.strip()[-500:])

        # The units reference the installed nsbrokerd; verify them with the
        # DESTDIR's copy in its place.
        with tempfile.TemporaryDirectory() as units:
            for name in ("nsbrokerd.service", "nsbrokerd.socket"):
                with open(tree(expected[name])) as f:
                    text = f.read()
                with open(os.path.join(units, name), "w") as f:
                    f.write(text.replace(expected["nsbrokerd"], tree(expected["nsbrokerd"])))
            with open(tree(expected["nsbrokerd.service"])) as f:
                check("ExecStart=" + expected["nsbrokerd"] + " " in f.read(),
                      "nsbrokerd.service starts " + expected["nsbrokerd"])
            verify = run("systemd-analyze", "verify",
                         os.path.join(units, "nsbrokerd.socket"),
                         os.path.join(units, "nsbrokerd.service"))
            check(verify.returncode == 0 and verify.stderr.strip() == "",
                  "systemd-analyze verify " + (verify.stdout + verify.stderr).strip())
            security = run("systemd-analyze", "security", "--offline=yes",
                           os.path.join(units, "nsbrokerd.service"))
            figure = re.search(r"Overall exposure level for nsbrokerd.service: ([0-9.]+)",
                               security.stdout)
            exposure = float(figure.group(1)) if figure else 10.0
            print(f"systemd-analyze security: nsbrokerd.service exposure {exposure} "
                  f"(at most {MAX_EXPOSURE})")
            check(exposure <= MAX_EXPOSURE, f"exposure {exposure} <= {MAX_EXPOSURE}")

        with open(tree(expected["nsbrokerd.socket"])) as f:
            check("ListenSequentialPacket=/run/nsbroker/nsbroker.sock" in f.read(),
                  "nsbrokerd.socket listens on /run/nsbroker/nsbroker.sock")
        with open(tree(expected["D-Bus activation"])) as f:
            activation = f.read()
        check("Name=org.nsbroker.Broker1" in activation
              and "SystemdService=nsbrokerd.service" in activation,
              "D-Bus activation names org.nsbroker.Broker1 and nsbrokerd.service")
        for what in ("D-Bus policy", "D-Bus interface"):
            try:
                ElementTree.parse(tree(expected[what]))
                check(True, what + " is well-formed XML")
            except ElementTree.ParseError as e:
                check(False, f"{what}: {e}")
    finally:
        shutil.rmtree(destdir, ignore_errors=True)

    if failures:
        print(f"{len(failures)} checks failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
