# Shared by scripts/start and scripts/test: install what is missing, build.

# Debian packages nsbroker needs to build, test and run.
NSBROKER_PACKAGES=(
    meson ninja-build pkg-config g++ python3
    libsystemd-dev libspdlog-dev nlohmann-json3-dev doctest-dev libseccomp-dev libcap-dev
    iproute2 util-linux mount clang-format python3-jsonschema
    systemd dbus-daemon python3-dbus
)

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "$(basename "$0"): run as root (sudo $0): nsbrokerd and its tests manage network namespaces" >&2
        exit 1
    fi
}

install_packages() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "==> installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# build DIR [meson options...]: configure once, then compile.
build() {
    local dir=$1
    shift
    if [ ! -f "$dir/build.ninja" ]; then
        meson setup "$dir" "$@" >/dev/null
    fi
    meson compile -C "$dir" >/dev/null
}
