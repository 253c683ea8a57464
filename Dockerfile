# syntax=docker/dockerfile:1
# The netfence agent image: a build stage with the toolchain of `cargo xtask setup`
# (see ../shared/TOOLCHAIN.md: rustup stable for the agent, Debian's rustc-web
# linked as `debian-web` with LLVM 22 and bpf-linker for the BPF object, which the
# agent's build.rs builds and embeds), and a distroless runtime stage.
#
#   docker build -t REGISTRY/netfence:TAG . && docker push REGISTRY/netfence:TAG
#   cd deploy && kustomize edit set image netfence=REGISTRY/netfence:TAG
#
# linux/arm64 (and a manifest list of both) with BuildKit; the build stage runs on the
# build machine's platform and cross-builds for arm64 as `cargo xtask build --target
# aarch64` does (Debian's libstd-rust-web-dev:arm64 for the debian-web toolchain, the
# cross gcc as linker, see .cargo/config.toml), so nothing runs under emulation:
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/netfence:TAG --push .
#
# Without Docker or a registry: `cargo xtask image` writes the same binaries, with the
# loader and libraries they load and no base image, as an OCI archive and loads it into
# podman (README, "The image"); that is the image deploy/kustomization.yaml names.
#
# An arm64 build machine builds linux/arm64 natively with the same file. Building
# linux/amd64 on an arm64 machine is not supported (the stage stops with a message).

# The official Rust image (rustup, stable 1.95) from the image registry: no installer
# is downloaded during the build.
FROM --platform=$BUILDPLATFORM rust:1.95.0-bookworm AS build
ARG BPF_LINKER_VERSION=0.13.0
ARG TARGETARCH
ENV DEBIAN_FRONTEND=noninteractive
# rustc-web/cargo-web/rust-web-src and llvm-22-dev come from bookworm-security.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      rustc-web cargo-web rust-web-src llvm-22-dev \
 && rm -rf /var/lib/apt/lists/*
# rustup's cargo stays first in PATH (the packages add /usr/bin/cargo 1.96).
RUN rustup toolchain link debian-web /usr \
 && LLVM_PREFIX=/usr/lib/llvm-22 cargo install "bpf-linker@$BPF_LINKER_VERSION" --locked \
      --no-default-features --features llvm-22
# Cross-building for arm64 on another platform: the arm64 std of debian-web (its
# version follows rustc-web: Multi-Arch: same), the cross gcc and glibc.
RUN if [ "$TARGETARCH" = arm64 ] && [ "$(dpkg --print-architecture)" != arm64 ]; then \
      dpkg --add-architecture arm64 && apt-get update \
      && apt-get install -y --no-install-recommends \
           libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
      && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -e; native="$(dpkg --print-architecture)"; \
    if [ -z "$TARGETARCH" ] || [ "$TARGETARCH" = "$native" ]; then \
      cargo build --release --locked -p netfence -p netfence-cni; out=target/release; \
    elif [ "$TARGETARCH" = arm64 ]; then \
      rustup run debian-web cargo build --release --locked \
        --target aarch64-unknown-linux-gnu -p netfence -p netfence-cni; \
      out=target/aarch64-unknown-linux-gnu/release; \
    else \
      echo "cannot build linux/$TARGETARCH on $native" >&2; exit 1; \
    fi; \
    cp "$out/netfence" /netfence && cp "$out/netfence-cni" /netfence-cni

# glibc and libgcc_s only; runs as root inside the container because Kubernetes adds
# capabilities (BPF, NET_ADMIN, PERFMON in deploy/daemonset.yaml) to UID 0 only:
# a non-root process would not get them without ambient capabilities.
# Resolved for the target platform (the image is a manifest list of amd64 and arm64).
FROM gcr.io/distroless/cc-debian12
COPY --from=build /netfence /usr/local/bin/netfence
# The chained CNI plugin, beside the agent: `netfence cni-install` (the DaemonSet's
# init container) copies it to the host's /opt/cni/bin.
COPY --from=build /netfence-cni /usr/local/bin/netfence-cni
ENTRYPOINT ["/usr/local/bin/netfence"]
CMD ["run", "--bridge", "cni0"]
