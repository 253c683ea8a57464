# syntax=docker/dockerfile:1
# The netfence agent image: a build stage with the toolchain of `cargo xtask setup`
# (see ../shared/TOOLCHAIN.md: rustup stable for the agent, Debian's rustc-web
# linked as `debian-web` with LLVM 22 and bpf-linker for the BPF object, which the
# agent's build.rs builds and embeds), and a distroless runtime stage.
#
#   docker build -t REGISTRY/netfence:TAG . && docker push REGISTRY/netfence:TAG
#   cd deploy && kustomize edit set image netfence=REGISTRY/netfence:TAG

# The official Rust image (rustup, stable 1.95) from the image registry: no installer
# is downloaded during the build.
FROM rust:1.95.0-bookworm AS build
ARG BPF_LINKER_VERSION=0.13.0
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
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p netfence -p netfence-cni \
 && cp target/release/netfence /netfence \
 && cp target/release/netfence-cni /netfence-cni

# glibc and libgcc_s only; runs as root inside the container because Kubernetes adds
# capabilities (BPF, NET_ADMIN, PERFMON in deploy/daemonset.yaml) to UID 0 only:
# a non-root process would not get them without ambient capabilities.
FROM gcr.io/distroless/cc-debian12
COPY --from=build /netfence /usr/local/bin/netfence
# The chained CNI plugin, beside the agent: `netfence cni-install` (the DaemonSet's
# init container) copies it to the host's /opt/cni/bin.
COPY --from=build /netfence-cni /usr/local/bin/netfence-cni
ENTRYPOINT ["/usr/local/bin/netfence"]
CMD ["run", "--bridge", "cni0"]
