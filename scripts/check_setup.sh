#!/usr/bin/env bash
# Fails, naming the Debian package, when the build or a Python script of the repository uses
# something that scripts/setup.sh does not install (scripts/check_setup.py says how it decides).
#   bash scripts/check_setup.sh [--verbose] [--setup FILE] [BUILD_DIR...]   (default: every build/*/)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec /usr/bin/python3 scripts/check_setup.py "$@"
