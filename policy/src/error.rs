//! The problems a manifest source reports: unreadable files, YAML/JSON syntax errors,
//! objects that fail validation, duplicates, and watcher failures. Each names the file,
//! and where one is involved the object (`Kind ns/name`) and the field path.

use std::fmt;

/// Which Kubernetes kind an object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    NetworkPolicy,
    Service,
    EndpointSlice,
}

impl Kind {
    /// Every kind netfence reads, in declaration order (`kind as usize` indexes it).
    pub const ALL: [Kind; 5] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::NetworkPolicy,
        Kind::Service,
        Kind::EndpointSlice,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
        }
    }

    /// Namespaces are cluster-scoped; the others live in a namespace.
    pub const fn is_namespaced(self) -> bool {
        !matches!(self, Kind::Namespace)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What identifies an object across reloads: (kind, namespace, name). The namespace
/// is empty for a Namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    /// `Pod prod/web`, `Namespace prod`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind.is_namespaced() {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        } else {
            write!(f, "{} {}", self.kind, self.name)
        }
    }
}

/// A problem found while reading a manifest directory. `file` is the path as the
/// source saw it (directory joined with the file name).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The directory itself could not be listed; everything from the last load is kept.
    #[error("{dir}: cannot list the manifest directory: {source}")]
    Directory {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    /// A file could not be read; its objects from the last load are kept.
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not YAML (or JSON) at all; its objects from the last load are kept.
    /// `message` is the parser's, which carries the position too.
    #[error("{file}: {message}")]
    Syntax {
        file: String,
        /// 1-based; 0 when the parser gave no position.
        line: usize,
        column: usize,
        message: String,
    },
    /// An object (or document) that fails decoding or validation. `object` is
    /// `Kind ns/name`, or the document (and list item) when the name is missing.
    #[error("{file}: {object}: {field}: {message}")]
    Invalid {
        file: String,
        object: String,
        field: String,
        message: String,
    },
    /// The same (kind, namespace, name) seen a second time; the first one is kept.
    #[error("{file}: {object}: duplicate; the one in {first} is kept")]
    Duplicate {
        file: String,
        object: String,
        first: String,
    },
    /// The directory could not be watched.
    #[error("{path}: cannot watch: {source}")]
    Watch {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl SourceError {
    /// The file (or directory) the problem is in.
    pub fn file(&self) -> &str {
        match self {
            SourceError::Directory { dir, .. } => dir,
            SourceError::Watch { path, .. } => path,
            SourceError::Read { file, .. }
            | SourceError::Syntax { file, .. }
            | SourceError::Invalid { file, .. }
            | SourceError::Duplicate { file, .. } => file,
        }
    }
}
