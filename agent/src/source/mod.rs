//! Where cluster objects come from: a directory of manifests (and later the Kubernetes API).
