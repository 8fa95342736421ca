#!/usr/bin/python3
"""Proves that scripts/setup.sh installs everything the build and the Python scripts use.

Maps to the Debian package that owns it (dpkg -S):
  * every existing absolute path in each given build tree's CMakeCache.txt (compilers, libraries,
    headers, package config folders: what CMake found), and
  * every module that a Python file of the repository imports (resolved by /usr/bin/python3, the
    interpreter the tests and tools run under),
then fails, naming the package and what needed it, when that package is neither in setup.sh's list,
nor pulled in by it (Depends/Pre-Depends, recursively: `apt-cache depends --recurse --important`),
nor part of the base image (BASE below, their dependencies, and Debian's Essential packages).

Usage: check_setup.py [--setup scripts/setup.sh] [--verbose] BUILD_DIR...
Exit 0: every item maps to an allowed package. Exit 1: the report names what is missing.
"""
import argparse
import ast
import importlib.util
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What a fresh machine of the project's kind has before setup.sh runs. Keep it short and explicit:
# anything else the project needs must be in setup.sh.
BASE = ["build-essential", "cmake", "python3", "git"]

# Files that come from outside Debian's archive on purpose: the CUDA toolkit and cuDNN, which the
# machines that have them install under /usr/local/cuda* (docs/building.md).
OUTSIDE_APT_ALLOWED = ("/usr/local/cuda",)

# CMake cache entries that name where things go or come from in this tree, not what was found.
SKIPPED_KEY_PREFIXES = ("CMAKE_INSTALL_", "CMAKE_HOME_DIRECTORY", "CMAKE_CACHEFILE_DIR", "FETCHCONTENT_")
SKIPPED_KEY_SUFFIXES = ("_BINARY_DIR", "_SOURCE_DIR", "_IS_TOP_LEVEL")


def run(cmd):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def setup_packages(setup):
    """The words of setup.sh's `packages=( ... )` array (comments dropped)."""
    text = open(setup).read()
    start = text.find("packages=(")
    if start < 0:
        sys.exit(f"check_setup: {setup} has no packages=( ... ) list")
    names = []
    for line in text[start + len("packages=("):].splitlines():
        body = line.split("#", 1)[0]
        names += body.replace(")", " ").split()
        if ")" in body:
            break
    return names


def essential_packages():
    p = run(["dpkg-query", "-W", "-f", "${Package} ${Essential}\n"])
    return [line.split()[0] for line in p.stdout.splitlines() if line.endswith(" yes")]


def closure(packages):
    """The packages and everything they depend on (Depends and Pre-Depends, recursively)."""
    p = run(["apt-cache", "depends", "--recurse", "--important", "--no-recommends", "--no-suggests",
             "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances"] + packages)
    names = set(packages)
    for line in p.stdout.splitlines():
        if line and not line[0].isspace():
            names.add(strip_arch(line.strip().strip("<>")))
        elif "Depends:" in line:
            names.add(strip_arch(line.split(":", 1)[1].strip().strip("<>")))
    return names


def strip_arch(name):
    return name.split(":", 1)[0]


def dpkg_owner(path):
    """The packages owning path (trying the /usr-merged spellings and the resolved path), or []."""
    candidates = [path]
    for a, b in (("/usr/lib/", "/lib/"), ("/usr/bin/", "/bin/"), ("/usr/sbin/", "/sbin/")):
        if path.startswith(a):
            candidates.append(b + path[len(a):])
        elif path.startswith(b):
            candidates.append(a + path[len(b):])
    real = os.path.realpath(path)
    if real != path:
        candidates += [real] + [c for c in dpkg_alternates(real)]
    for c in candidates:
        p = run(["dpkg", "-S", c])
        if p.returncode == 0:
            owners = set()
            for line in p.stdout.splitlines():
                # "pkg1:amd64, pkg2: /path"; lines with "diversion" are not ownership.
                if line.startswith("diversion "):
                    continue
                head = line.rsplit(": ", 1)[0]
                owners.update(strip_arch(o.strip()) for o in head.split(","))
            if owners:
                return sorted(owners)
    return []


def dpkg_alternates(path):
    for a, b in (("/usr/lib/", "/lib/"), ("/usr/bin/", "/bin/")):
        if path.startswith(a):
            yield b + path[len(a):]


def cmake_cache_paths(build_dir):
    """(key, path) for each existing absolute path outside this repository named in CMakeCache.txt."""
    cache = os.path.join(build_dir, "CMakeCache.txt")
    if not os.path.exists(cache):
        sys.exit(f"check_setup: {cache} does not exist (configure the preset first)")
    found = []
    with open(cache) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith(("#", "//")) or "=" not in line or ":" not in line.split("=", 1)[0]:
                continue
            key_type, value = line.split("=", 1)
            key, _ = key_type.split(":", 1)
            if key.startswith(SKIPPED_KEY_PREFIXES) or key.endswith(SKIPPED_KEY_SUFFIXES):
                continue
            for item in value.split(";"):
                item = item.strip()
                # Flags like -I/usr/include are not paths CMake found; NOTFOUND values are no file.
                if not item.startswith("/") or not os.path.exists(item):
                    continue
                real = os.path.realpath(item)
                if real.startswith(ROOT + os.sep) or real == ROOT:
                    continue
                found.append((key, item))
    return found


def python_files():
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel = os.path.relpath(dirpath, ROOT)
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in ("build", "__pycache__")
                       and not (rel == "." and d in ("models",))]
        for f in filenames:
            if f.endswith(".py"):
                yield os.path.join(dirpath, f)


def optional_import(node, parents):
    """True for an import inside `try:` whose handler catches ImportError (an optional module)."""
    for p in parents:
        if isinstance(p, ast.Try) and any(node_in(node, s) for s in p.body):
            for h in p.handlers:
                names = []
                if h.type is None:
                    return True
                for t in (h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]):
                    if isinstance(t, ast.Name):
                        names.append(t.id)
                if {"ImportError", "ModuleNotFoundError", "Exception"} & set(names):
                    return True
    return False


def node_in(node, tree):
    return any(n is node for n in ast.walk(tree))


def python_imports():
    """{module: [files importing it]} for the third-party top-level modules the repository imports."""
    local = set()
    for path in python_files():
        local.add(os.path.splitext(os.path.basename(path))[0])
    for dirpath, dirnames, filenames in os.walk(ROOT):
        if "__init__.py" in filenames:
            local.add(os.path.basename(dirpath))
    stdlib = set(sys.stdlib_module_names)
    needed = {}
    for path in python_files():
        try:
            tree = ast.parse(open(path, encoding="utf-8").read(), path)
        except SyntaxError as e:
            sys.exit(f"check_setup: cannot parse {path}: {e}")
        parents = {}
        for parent in ast.walk(tree):
            for child in ast.iter_child_nodes(parent):
                parents[child] = parent
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            chain, p = [], parents.get(node)
            while p is not None:
                chain.append(p)
                p = parents.get(p)
            if optional_import(node, chain):
                continue
            for m in mods:
                top = m.split(".")[0]
                if top in stdlib or top in local or top == "__future__":
                    continue
                needed.setdefault(top, []).append(os.path.relpath(path, ROOT))
    return needed


def module_origin(name):
    spec = importlib.util.find_spec(name)
    if spec is None:
        return None
    if spec.origin and spec.origin not in ("built-in", "frozen", "namespace"):
        return spec.origin
    locations = list(spec.submodule_search_locations or [])
    return locations[0] if locations else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("build_dirs", nargs="*", help="configured build trees (default: every build/*/)")
    ap.add_argument("--setup", default=os.path.join(ROOT, "scripts", "setup.sh"),
                    help="the setup script whose package list is checked")
    ap.add_argument("--verbose", action="store_true", help="print every item and its package")
    a = ap.parse_args()

    if sys.executable != "/usr/bin/python3" and os.path.realpath(sys.executable) != os.path.realpath("/usr/bin/python3"):
        # Modules are resolved as the tests and tools import them: by Debian's interpreter.
        os.execv("/usr/bin/python3", ["/usr/bin/python3", os.path.abspath(__file__)] + sys.argv[1:])

    build_dirs = a.build_dirs or sorted(
        os.path.join(ROOT, "build", d) for d in os.listdir(os.path.join(ROOT, "build"))
        if os.path.exists(os.path.join(ROOT, "build", d, "CMakeCache.txt"))) if os.path.isdir(
        os.path.join(ROOT, "build")) else a.build_dirs
    listed = setup_packages(a.setup)
    allowed = closure(listed) | closure(BASE + essential_packages())
    problems = {}  # package -> [reasons]
    unowned = []
    checked = 0

    def account(what, path):
        nonlocal checked
        checked += 1
        if path.startswith(OUTSIDE_APT_ALLOWED):
            if a.verbose:
                print(f"  {what}: {path} -> outside apt (allowed: {', '.join(OUTSIDE_APT_ALLOWED)})")
            return
        owners = dpkg_owner(path)
        if not owners:
            if os.path.isdir(path):
                return  # a folder no package owns alone (e.g. /usr/local/include): not evidence
            unowned.append(f"{what}: {path}")
            return
        if len(owners) > 1 and os.path.isdir(path):
            return  # a folder shared by several packages (/usr/include): not evidence of any one
        if a.verbose:
            print(f"  {what}: {path} -> {', '.join(owners)}")
        if not any(o in allowed for o in owners):
            problems.setdefault(owners[0], []).append(f"{what}: {path}")

    for d in build_dirs:
        for key, path in cmake_cache_paths(d):
            account(f"{os.path.relpath(d, ROOT)}/CMakeCache.txt {key}", path)
    missing_modules = {}
    for mod, files in sorted(python_imports().items()):
        origin = module_origin(mod)
        if origin is None:
            missing_modules[mod] = files
            continue
        account(f"python module {mod} (imported by {', '.join(sorted(set(files)))})", origin)

    ok = not problems and not unowned and not missing_modules
    print(f"check_setup: {checked} items from {len(build_dirs)} CMake caches and the repository's Python "
          f"imports; setup.sh lists {len(listed)} packages ({len(allowed)} with base and dependencies)")
    for pkg, reasons in sorted(problems.items()):
        print(f"check_setup: package {pkg} is used but neither in {os.path.relpath(a.setup, ROOT)} nor pulled "
              f"in by it nor in the base image; add it to setup.sh. Used by:")
        for r in reasons[:5]:
            print(f"    {r}")
        if len(reasons) > 5:
            print(f"    ... and {len(reasons) - 5} more")
    for r in unowned:
        print(f"check_setup: not from any Debian package (installed by hand?): {r}")
    for mod, files in sorted(missing_modules.items()):
        print(f"check_setup: python module {mod} is not importable by /usr/bin/python3 (imported by "
              f"{', '.join(sorted(set(files)))}); add the package that provides it to setup.sh")
    print("check_setup: " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
