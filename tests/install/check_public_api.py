#!/usr/bin/env python3
"""libnsbroker exports its public API and nothing else, and its installed
headers stand alone.

The dynamic symbols the built library defines must each belong to a scope
that is public: the nsbroker namespace itself or one of the classes below,
and be named in an installed header. Anything else (nlohmann, the standard
library's templates, nsbroker::proto's codec, the worker protocol, the
client's own Impl) fails. The installed headers (meson install into a
DESTDIR) may include only installed nsbroker headers and system headers, must
each compile alone with the flags pkg-config gives, and must refuse, with
their own message, a compiler not in C++20 mode.

    check_public_api.py BUILD_DIR SOURCE_DIR LIBNSBROKER
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

# Scopes whose symbols libnsbroker may export: the namespace of the client API
# and the error contract, and the classes of the installed headers that have
# out-of-line members, a vtable or a typeinfo.
PUBLIC_SCOPES = {
    "nsbroker",
    "nsbroker::Client",
    "nsbroker::Netns",
    "nsbroker::Error",
    "nsbroker::SystemError",
    "nsbroker::proto::NetnsRef",
}

# What an installed header may include besides installed nsbroker headers:
# the C++ standard library and the C library (<string>, <unistd.h>), and the
# kernel's and POSIX's headers in these directories.
SYSTEM_HEADER_DIRS = {"sys", "netinet", "arpa", "net", "linux"}

# "typeinfo for nsbroker::SystemError" names the class itself.
CLASS_DATA = re.compile(r"^(typeinfo name for|typeinfo for|vtable for|VTT for) (.*)$")


def run(*args, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, **kwargs)


def split_top_level(text, separator):
    """Splits text at separator where it is outside <>, () and []."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        c = text[i]
        if c in "<([":
            depth += 1
        elif c in ">)]":
            depth -= 1
        elif depth == 0 and text.startswith(separator, i):
            parts.append(text[start:i])
            i += len(separator)
            start = i
            continue
        i += 1
    parts.append(text[start:])
    return parts


def qualified_name(symbol):
    """The qualified name of a demangled symbol, without its return type,
    parameters, cv-qualifiers and ABI tags: "nsbroker::Client::hello"."""
    name = symbol
    # Parameters: from the first '(' outside template arguments; an operator's
    # own parentheses ("operator()") are part of its name.
    depth = 0
    for i, c in enumerate(name):
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif c == "(" and depth == 0 and not name[:i].endswith("operator"):
            name = name[:i]
            break
    # A template function's return type comes first, before a space.
    name = split_top_level(name, " ")[-1]
    return re.sub(r"\[abi:[^\]]*\]", "", name)


def check_symbols(library, header_words, check):
    listed = run("nm", "-D", "--defined-only", "-C", library)
    check(listed.returncode == 0, "nm -D --defined-only " + library + " " + listed.stderr.strip())
    symbols = []
    for line in listed.stdout.splitlines():
        fields = line.split(" ", 2)
        if len(fields) == 3:
            symbols.append(fields[2])
    print(f"{len(symbols)} defined dynamic symbols in {library}")
    check(len(symbols) > 0, "libnsbroker defines dynamic symbols")
    outside = []
    for symbol in symbols:
        data = CLASS_DATA.match(symbol)
        if data:
            scope = data.group(2)
            entity = split_top_level(scope, "::")[-1]
        else:
            parts = split_top_level(qualified_name(symbol), "::")
            scope, entity = "::".join(parts[:-1]), parts[-1]
        # "~Client", "operator=", "describe": the word a header must spell.
        word = re.sub(r"<.*", "", entity).lstrip("~")
        if word.startswith("operator"):
            word = "operator"
        if scope not in PUBLIC_SCOPES or word not in header_words:
            outside.append(symbol)
    for symbol in outside:
        print("  outside the public API: " + symbol)
    check(not outside, f"every exported symbol is public API ({len(outside)} are not)")


def included(header_text):
    return re.findall(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', header_text, re.MULTILINE)


def check_headers(build, source, check):
    destdir = tempfile.mkdtemp(prefix="nsbroker-api-")
    try:
        installed = run("meson", "install", "-C", build, "--destdir", destdir, "--no-rebuild",
                        "--quiet")
        check(installed.returncode == 0, "meson install --destdir " + installed.stderr.strip())
        pcs = [os.path.join(root, f) for root, _, files in os.walk(destdir) for f in files
               if f == "nsbroker.pc"]
        check(len(pcs) == 1, "one nsbroker.pc installed")
        if not pcs:
            return
        prefix = run("pkg-config", "--variable=prefix", pcs[0]).stdout.strip()
        flags = run("pkg-config", "--define-variable=prefix=" + destdir + prefix, "--cflags",
                    pcs[0])
        cflags = flags.stdout.split()
        check(flags.returncode == 0 and "-std=c++20" in cflags,
              "pkg-config --cflags nsbroker passes -std=c++20: " + flags.stdout.strip())
        include_dirs = [f[2:] for f in cflags if f.startswith("-I")]
        headers_dir = next((os.path.join(d, "nsbroker") for d in include_dirs
                            if os.path.isdir(os.path.join(d, "nsbroker"))), None)
        check(headers_dir is not None, "the headers are under pkg-config's include directory")
        if headers_dir is None:
            return
        headers = sorted(f for f in os.listdir(headers_dir) if f.endswith((".hpp", ".h")))
        print("installed headers: " + " ".join(headers))
        check("client.hpp" in headers, "nsbroker/client.hpp is installed")

        private = os.path.join(source, "proto", "internal", "nsbroker")
        leaked = sorted(set(headers) & set(os.listdir(private)))
        check(not leaked, "no private header is installed " + " ".join(leaked))

        words = set()
        for header in headers:
            with open(os.path.join(headers_dir, header)) as f:
                text = f.read()
            words.update(re.findall(r"\w+", text))
            foreign = []
            for kind, path in included(text):
                if kind == '"' or path.startswith("nsbroker/"):
                    ok = (path.startswith("nsbroker/") and "/" not in path[len("nsbroker/"):]
                          and path[len("nsbroker/"):] in headers)
                else:
                    ok = "/" not in path or path.split("/")[0] in SYSTEM_HEADER_DIRS
                if not ok:
                    foreign.append(path)
            check(not foreign, f"nsbroker/{header} includes only installed nsbroker headers and "
                  "system headers " + " ".join(foreign))

        compilers = [c for c in ("c++", "clang++") if shutil.which(c)]
        with tempfile.TemporaryDirectory() as scratch:
            for header in headers:
                source_file = os.path.join(scratch, "alone.cpp")
                with open(source_file, "w") as f:
                    f.write(f"#include <nsbroker/{header}>\n")
                for compiler in compilers:
                    alone = run(compiler, *cflags, "-Wall", "-Wextra", "-Werror",
                                "-fsyntax-only", source_file)
                    check(alone.returncode == 0, f"nsbroker/{header} compiles alone with "
                          f"{compiler} and pkg-config's flags " + alone.stderr.strip()[-500:])
                    older = [f for f in cflags if f != "-std=c++20"] + ["-std=c++17"]
                    refused = run(compiler, *older, "-fsyntax-only", source_file)
                    check(refused.returncode != 0 and "need C++20" in refused.stderr,
                          f"nsbroker/{header} refuses C++17 with {compiler}, saying why")
        return words
    finally:
        shutil.rmtree(destdir, ignore_errors=True)


def main():
    build, source, library = sys.argv[1:4]
    failures = []

    def check(ok, what):
        print(("ok     " if ok else "FAILED ") + what)
        if not ok:
            failures.append(what)

    header_words = check_headers(build, source, check) or set()
    check_symbols(library, header_words, check)

    if failures:
        print(f"{len(failures)} of the public API's checks failed", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
